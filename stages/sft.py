"""SFT stage: supervised fine-tuning of the policy with TRL's SFTTrainer (full, LoRA or QLoRA).

Run: ``python -m pipeline.launch -m stages.sft --config configs/<preset>/sft.yaml [--field value ...]``.
"""

from __future__ import annotations

import math
import time

from trl import SFTConfig, SFTTrainer

from pipeline.config import DataArguments, ModelArguments, RunArguments, parse_config
from pipeline.datasets import load_sft_data
from pipeline.errors import run_main
from pipeline.metrics import JsonlMetricsCallback
from pipeline.models import (
    load_causal_lm,
    load_tokenizer,
    lora_config,
    match_saved_modules_dtype,
    resolve_model_source,
)
from pipeline.report import refresh_report
from pipeline.runs import StageDir, end_stage
from pipeline.training import open_training_stage, plot_stage_metrics, save_trained_model

PLOTS = {"loss": ["loss", "eval_loss"], "learning_rate": ["learning_rate"]}


def main(argv: list[str] | None = None) -> None:
    """Fine-tune the base model on demonstrations and write ``runs/<run>/sft/``."""
    run_args, data_args, args, model_args = parse_config((RunArguments, DataArguments, SFTConfig, ModelArguments), argv)
    started = time.time()
    stage = StageDir(run_args.runs_dir, run_args.run, "sft")
    source = resolve_model_source(model_args.model_name_or_path, "base model")
    train_rows, eval_rows = load_sft_data(data_args)
    tokenizer = load_tokenizer(source, model_args.tokenizer_pad_token)

    work = open_training_stage(stage, args, (run_args, data_args, model_args), source, started)
    trainer = SFTTrainer(
        model=load_causal_lm(source, model_args),
        args=args,
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        processing_class=tokenizer,
        peft_config=lora_config(model_args, "CAUSAL_LM"),
        callbacks=[JsonlMetricsCallback(work)],
    )
    match_saved_modules_dtype(trainer.model)
    initial = trainer.evaluate(metric_key_prefix="initial_eval")
    result = trainer.train()
    final = trainer.evaluate()
    model_folder = save_trained_model(trainer, work, source)
    plot_stage_metrics(work, PLOTS)
    summary = {
        "train_loss": result.training_loss,
        "eval_loss": final["eval_loss"],
        "initial_eval_loss": initial["initial_eval_loss"],
        "eval_perplexity": math.exp(min(final["eval_loss"], 50.0)),
        "train_rows": len(train_rows),
        "eval_rows": len(eval_rows),
        "model": model_folder,
        "lora": bool(model_args.use_peft),
    }
    end_stage(stage, summary, started)
    if trainer.accelerator.is_main_process:
        print(f"sft: eval loss {summary['initial_eval_loss']:.3f} -> {summary['eval_loss']:.3f}; wrote {stage.final}")
        refresh_report(run_args.runs_dir, run_args.run)


if __name__ == "__main__":
    run_main(main)
