"""RM stage: a pairwise (Bradley-Terry) reward model with TRL's RewardTrainer, initialized from the SFT model.

Run: ``accelerate launch -m stages.rm --config configs/<preset>/rm.yaml [--field value ...]``.
Without ``model_name_or_path`` it starts from this run's SFT model (as InstructGPT does); any sequence-classification
base works too, a decoder or an encoder (BERT, DeBERTa): the pairs are tokenized by ``reward_models.inputs``, as the
PPO stage's reward source re-tokenizes what it scores.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from accelerate import PartialState
from datasets import Dataset
from peft.utils.error import NoMatchingPeftModuleError
from transformers import PreTrainedTokenizerBase
from trl import RewardConfig, RewardTrainer

from pipeline.config import DataArguments, ModelArguments, RunArguments, parse_config
from pipeline.datasets import load_preference_data
from pipeline.errors import run_main
from pipeline.metrics import JsonlMetricsCallback, plot_histograms
from pipeline.models import (
    load_sequence_scorer,
    load_tokenizer,
    lora_config,
    match_saved_modules_dtype,
    no_lora_target_error,
    resolve_model_source,
)
from pipeline.runs import StageDir, end_stage, require_complete
from pipeline.training import open_training_stage, plot_stage_metrics, save_trained_model
from reward_models.inputs import RewardPairCollator, reward_model_ids
from reward_models.learned import LearnedReward

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
    train_rows, eval_rows = load_preference_data(data_args)
    tokenizer = load_tokenizer(source, model_args.tokenizer_pad_token)

    work = open_training_stage(stage, args, (run_args, data_args, model_args), source, started)
    model = load_sequence_scorer(source, model_args, tokenizer.pad_token_id)
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
        plot_histograms(
            {"chosen": chosen.tolist(), "rejected": rejected.tolist()},
            Path(work) / "plots" / "reward_distribution.png",
            title="Held-out reward: chosen vs rejected",
            xlabel="reward-model score",
        )
        summary = {
            "eval_accuracy": (chosen > rejected).float().mean().item(),
            "eval_margin": (chosen - rejected).mean().item(),
            "eval_reward_mean": torch.cat([chosen, rejected]).mean().item(),
            "eval_reward_std": torch.cat([chosen, rejected]).std().item(),
            "train_loss": result.training_loss,
            "train_rows": len(train_rows),
            "eval_rows": len(eval_rows),
            "model": model_folder,
            "lora": bool(model_args.use_peft),
        }
    plot_stage_metrics(work, PLOTS)
    end_stage(stage, summary, started)
    if PartialState().is_main_process:
        print(f"rm: held-out pairwise accuracy {summary['eval_accuracy']:.3f}; wrote {stage.final}")


if __name__ == "__main__":
    run_main(main)
