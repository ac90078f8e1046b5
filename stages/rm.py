"""RM stage: a pairwise (Bradley-Terry) reward model with TRL's RewardTrainer, initialized from the SFT model.

Run: ``accelerate launch -m stages.rm --config configs/<preset>/rm.yaml [--field value ...]`` (or through
``python -m pipeline.launch``, which ends a failed run with its own message).
Without ``model_name_or_path`` it starts from this run's SFT model (as InstructGPT does); any sequence-classification
base works too, a decoder or an encoder (BERT, DeBERTa): the pairs are tokenized by ``reward_models.inputs``, as the
PPO stage's reward source re-tokenizes what it scores.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from accelerate import PartialState
from datasets import Dataset
from peft.utils.error import NoMatchingPeftModuleError
from transformers import PreTrainedTokenizerBase, set_seed
from trl import RewardConfig, RewardTrainer

from pipeline.config import DataArguments, ModelArguments, RunArguments, parse_config
from pipeline.datasets import load_preference_data
from pipeline.errors import PipelineError, run_main
from pipeline.metrics import (
    JsonlMetricsCallback,
    plot_bucket_accuracy,
    plot_histograms,
    plot_reliability,
    plot_scatter,
)
from pipeline.models import (
    load_sequence_scorer,
    load_tokenizer,
    lora_config,
    match_saved_modules_dtype,
    no_lora_target_error,
    resolve_model_source,
)
from pipeline.report import refresh_report
from pipeline.runs import StageDir, end_stage, require_complete
from pipeline.training import open_training_stage, plot_stage_metrics, save_trained_model
from reward_models.diagnostics import diagnose
from reward_models.inputs import RewardPairCollator, reward_model_ids
from reward_models.learned import LearnedReward

# Per-completion scores of a gold judge, where the preference data has them (the demo's: VADER, which labelled it).
GOLD_COLUMNS = ("gold_chosen", "gold_rejected")
PLOTS = {"loss": ["loss", "eval_loss"], "accuracy": ["accuracy", "eval_accuracy"], "margin": ["margin", "eval_margin"]}


class PairRewardTrainer(RewardTrainer):
    """TRL's RewardTrainer on the ids of ``reward_models.inputs`` (those the reward source scores), made once TRL has
    set up the tokenizer (``eos_token``, ``pad_token``, ``chat_template_path``); TRL then skips its own EOS and
    tokenization, which assume a decoder, and still drops pairs longer than ``max_length``."""

    def _prepare_dataset(
        self, dataset: Dataset, processing_class: PreTrainedTokenizerBase, args: RewardConfig, dataset_name: str
    ) -> Dataset:
        def tokenize(rows: dict) -> dict:
            return {
                "chosen_ids": reward_model_ids(processing_class, rows["prompt"], rows["chosen"]),
                "rejected_ids": reward_model_ids(processing_class, rows["prompt"], rows["rejected"]),
            }

        text_columns = [column for column in dataset.column_names if column != "margin"]
        tokenized = dataset.map(
            tokenize, batched=True, remove_columns=text_columns, desc=f"Tokenizing {dataset_name} pairs"
        )
        return super()._prepare_dataset(tokenized, processing_class, args, dataset_name)


def held_out_scores(reward: LearnedReward, rows: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Reward-model scores of the chosen and the rejected completion of every held-out pair."""
    return reward(rows["prompt"], rows["chosen"]), reward(rows["prompt"], rows["rejected"])


def true_margins(rows: Dataset, source: str) -> list[float] | None:
    """Each pair's true margin, for the diagnostics: ``gold_chosen - gold_rejected`` where the rows carry a gold
    judge's scores (the demo's do), else their ``margin`` column; None with neither."""
    if not all(column in rows.column_names for column in GOLD_COLUMNS):
        return rows["margin"] if "margin" in rows.column_names else None
    for column in GOLD_COLUMNS:
        for index, value in enumerate(rows[column]):
            if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
                raise PipelineError(
                    f"{source}, held-out row {index}, column '{column}' should be a number (a gold judge's score of "
                    f"the completion), found {value!r}: fix the row, or rename the gold columns to leave them out"
                )
    return [good - bad for good, bad in zip(rows["gold_chosen"], rows["gold_rejected"], strict=True)]


def text_length(completion: str | list[dict]) -> int:
    """A completion's length in characters (a conversation's: its messages' contents)."""
    return len(completion) if isinstance(completion, str) else sum(len(message["content"]) for message in completion)


def write_diagnostics(
    chosen: torch.Tensor, rejected: torch.Tensor, rows: Dataset, margins: list[float] | None, plots: Path
) -> dict:
    """The held-out diagnostics (``reward_models.diagnostics``) and their plots in ``plots``."""
    chosen_lengths = [text_length(completion) for completion in rows["chosen"]]
    rejected_lengths = [text_length(completion) for completion in rows["rejected"]]
    report = diagnose(chosen.tolist(), rejected.tolist(), chosen_lengths, rejected_lengths, margins)
    plot_histograms(
        {"chosen": chosen.tolist(), "rejected": rejected.tolist()},
        plots / "reward_distribution.png",
        title="Held-out reward: chosen vs rejected",
        xlabel="reward-model score",
    )
    plot_reliability(report["calibration"]["bins"], plots / "calibration.png", "Held-out calibration")
    panels = {"by predicted margin |r_chosen - r_rejected|": report["accuracy_by_predicted_margin"]}
    if "accuracy_by_true_margin" in report:
        panels["by true margin"] = report["accuracy_by_true_margin"]
    plot_bucket_accuracy(panels, plots / "accuracy_by_margin.png", report["accuracy"])
    plot_scatter(
        {"chosen": (chosen_lengths, chosen.tolist()), "rejected": (rejected_lengths, rejected.tolist())},
        plots / "reward_vs_length.png",
        title="Held-out reward against completion length",
        xlabel="completion length (characters)",
        ylabel="reward-model score",
    )
    return report


def main(argv: list[str] | None = None) -> None:
    """Train the reward model on preference pairs and write ``runs/<run>/rm/``."""
    run_args, data_args, args, model_args = parse_config(
        (RunArguments, DataArguments, RewardConfig, ModelArguments), argv
    )
    started = time.time()
    stage = StageDir(run_args.runs_dir, run_args.run, "rm")
    if model_args.model_name_or_path:
        source = resolve_model_source(model_args.model_name_or_path, "reward model base")
    else:
        source = str(require_complete(run_args.runs_dir, run_args.run, "sft") / "model")
    train_rows, eval_rows = load_preference_data(data_args, keep_columns=GOLD_COLUMNS)
    margins = true_margins(eval_rows, data_args.eval_dataset_name or data_args.dataset_name)
    tokenizer = load_tokenizer(source, model_args.tokenizer_pad_token)

    work = open_training_stage(stage, args, (run_args, data_args, model_args), source, started)
    set_seed(args.seed)  # the score head is drawn when the model loads, before TRL seeds
    model = load_sequence_scorer(source, model_args, tokenizer.pad_token_id, new_head=True)
    try:
        trainer = PairRewardTrainer(
            model=model,
            args=args,
            data_collator=RewardPairCollator(tokenizer, args.pad_to_multiple_of),
            train_dataset=train_rows,
            eval_dataset=eval_rows,
            processing_class=tokenizer,
            peft_config=lora_config(model_args, "SEQ_CLS"),
            callbacks=[JsonlMetricsCallback(work)],
        )
    except NoMatchingPeftModuleError as error:
        raise no_lora_target_error(model, model_args.lora_target_modules, source) from error
    match_saved_modules_dtype(trainer.model)
    result = trainer.train()
    model_folder = save_trained_model(trainer, work, source, scorer=True)

    summary: dict = {}
    if PartialState().is_main_process:
        reward = LearnedReward(trainer.accelerator.unwrap_model(trainer.model), tokenizer, max_length=args.max_length)
        chosen, rejected = held_out_scores(reward, eval_rows)
        diagnostics = write_diagnostics(chosen, rejected, eval_rows, margins, Path(work) / "plots")
        warnings = diagnostics.pop("warnings")
        summary = {
            "eval_accuracy": diagnostics["accuracy"],
            "eval_accuracy_ci95": diagnostics["accuracy_ci95"],
            "eval_margin": (chosen - rejected).mean().item(),
            "eval_reward_mean": torch.cat([chosen, rejected]).mean().item(),
            "eval_reward_std": torch.cat([chosen, rejected]).std().item(),
            "eval_calibration_error": diagnostics["calibration"]["ece"],
            "train_loss": result.training_loss,
            "train_rows": len(train_rows),
            "eval_rows": len(eval_rows),
            "model": model_folder,
            "lora": bool(model_args.use_peft),
            "diagnostics": diagnostics,
            "warnings": warnings,
        }
    plot_stage_metrics(work, PLOTS)
    end_stage(stage, summary, started)
    if PartialState().is_main_process:
        low, high = summary["eval_accuracy_ci95"]
        for warning in summary["warnings"]:
            print(f"rm: warning: {warning}")
        print(
            f"rm: held-out pairwise accuracy {summary['eval_accuracy']:.3f} (95% CI {low:.3f}-{high:.3f}), "
            f"calibration error {summary['eval_calibration_error']:.3f}; wrote {stage.final}"
        )
        refresh_report(run_args.runs_dir, run_args.run)


if __name__ == "__main__":
    run_main(main)
