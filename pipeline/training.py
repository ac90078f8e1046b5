"""What the TRL-trainer stages (SFT, RM) share: output locations, saving, plots."""

from __future__ import annotations

import shutil
from pathlib import Path

from accelerate import PartialState
from transformers import Trainer, TrainingArguments

from pipeline.metrics import plot_curves, read_metrics
from pipeline.models import merge_adapter
from pipeline.runs import METRICS, StageDir, begin_stage


def open_training_stage(
    stage: StageDir, args: TrainingArguments, configs: tuple, base_source: str, started: float
) -> Path:
    """Start a TRL-trainer stage: create its work folder, send the trainer's outputs there, write the manifest.

    ``configs`` is (run, data, model) arguments; the trainer's own arguments are ``args``.
    """
    run_args, data_args, model_args = configs
    work = begin_stage(stage)
    args.output_dir = str(work / "checkpoints")
    args.logging_dir = str(work / "logs")
    if PartialState().is_main_process:
        stage.write_manifest(
            {"run": run_args, "data": data_args, "training": args, "model": model_args},
            {
                "base_model": base_source,
                "dataset": data_args.dataset_name,
                "eval_dataset": data_args.eval_dataset_name,
            },
            started,
        )
    return work


def save_trained_model(trainer: Trainer, work: Path, base_source: str, scorer: bool = False) -> str:
    """Save a full model to ``model/``; a LoRA run saves ``adapter/`` and the merged plain model to ``model/``.

    The trainer's checkpoints are deleted (they are not part of the final stage). Returns the name of the folder
    later stages load with ``from_pretrained``.
    """
    is_lora = hasattr(trainer.model, "peft_config") or hasattr(
        trainer.accelerator.unwrap_model(trainer.model), "peft_config"
    )
    target = work / ("adapter" if is_lora else "model")
    trainer.save_model(str(target))
    if PartialState().is_main_process:
        trainer.processing_class.save_pretrained(target)
        if is_lora:
            merge_adapter(base_source, target, work / "model", scorer=scorer)
        shutil.rmtree(trainer.args.output_dir, ignore_errors=True)
    PartialState().wait_for_everyone()
    return "model"


def plot_stage_metrics(work: Path, panels: dict[str, list[str]]) -> None:
    """Draw the stage's curves from its ``metrics.jsonl`` into ``plots/`` (main process only)."""
    if PartialState().is_main_process:
        plot_curves(read_metrics(work / METRICS), work / "plots", panels)
