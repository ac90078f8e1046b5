"""Shared by the PPO stage tests: a tiny SFT policy, a tiny reward model, fast stage arguments, and a trainer that
records what it trained.

Run under ``accelerate launch -m tests.ppo_testing <stage arguments>`` it runs the PPO stage with that recording
trainer and writes one JSON record per process to ``$PPO_RECORD_DIR/rank-<i>.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

import stages.ppo.__main__ as ppo_stage
from pipeline.errors import run_main
from pipeline.metrics import read_metrics
from stages.ppo.trainer import PPOTrainer
from tests.conftest import DEMO_DATA, REPO

PPO_CONFIG = REPO / "configs" / "demo" / "ppo.yaml"
# Small and short: a few seconds per run on one CPU thread. Overridden per test where it matters. The optimization
# settings are pinned here, so the tests' thresholds do not move when the demo preset is retuned.
FAST_OPTIONS = {
    "learning_rate": 5e-4,
    "lr_scheduler_type": "linear",
    "max_grad_norm": 1.0,
    "kl_coef": 0.05,
    "kl_estimator": "k1",
    "kl_control": "fixed",
    "temperature": 0.7,
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_target_modules": "all-linear",
    "seed": 0,
    "reward": "tests.rewards_for_tests:count_i",
    "gold_reward": "vader",
    "response_length": 10,
    "per_device_train_batch_size": 4,
    "num_mini_batches": 2,
    "num_ppo_epochs": 2,
    "total_episodes": 24,
    "missing_eos_penalty": 0.0,
    "eval_prompts": 8,
    "sample_every": 0,
    "save_strategy": "no",
    "disable_tqdm": "true",
    "report_to": "none",
}


def tiny_sft_model(base: Path, cache_root: Path) -> Path:
    """The tiny random base fine-tuned for 100 steps on the demo demonstrations (built once per ``cache_root``).

    A random tiny model is nearly uniform over its vocabulary and cannot be steered by LoRA alone in a few
    updates; after ~6 s of plain next-token training it writes review-like sentences that PPO can shape.
    """
    out = Path(cache_root) / "ppo-tiny-sft"
    if (out / "config.json").is_file():
        return out
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    rows = [json.loads(line) for line in (DEMO_DATA / "sft_train.jsonl").read_text().splitlines()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    batch_size = 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for step in range(100):
            batch = [rows[(step * batch_size + i) % len(rows)] for i in range(batch_size)]
            texts = [row["prompt"] + row["completion"] + tokenizer.eos_token for row in batch]
            encoded = tokenizer(texts, return_tensors="pt", padding=True)
            labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
            model(**encoded, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    work = Path(tempfile.mkdtemp(dir=cache_root))
    model.save_pretrained(work)
    tokenizer.save_pretrained(work)
    os.replace(work, out)
    return out


def tiny_reward_model(base: Path, out: Path, seed: int = 0) -> Path:
    """A sequence-classification model (one output, random score head) on ``base``, saved like the RM stage's."""
    tokenizer = AutoTokenizer.from_pretrained(base)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def randomize_lora(model: torch.nn.Module, std: float = 0.3) -> None:
    """LoRA starts as a no-op (B = 0, or A = 0 on embeddings); random weights make an adapter change what it
    touches."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name or "lora_embedding" in name:
                parameter.normal_(std=std)


# As the demo RM config: every linear layer of the body and the token embeddings.
REWARD_LORA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens"]


def tiny_reward_adapter(base: Path, out: Path, seed: int = 0) -> Path:
    """A reward model as the RM stage trains it with LoRA: an adapter on ``base`` (random, not a no-op) with a
    random score head, saved with the tokenizer."""
    torch.manual_seed(seed)
    scorer = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(base)
    scorer.config.pad_token_id = tokenizer.pad_token_id
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=REWARD_LORA_MODULES, task_type="SEQ_CLS", modules_to_save=["score"]
    )
    model = get_peft_model(scorer, config)
    randomize_lora(model)
    with torch.no_grad():
        model.base_model.model.score.modules_to_save["default"].weight.normal_(std=0.5)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def config_argv(config: Path, options: dict) -> list[str]:
    """``--config config`` then ``--name value`` for each option (None drops one, a list gives several values)."""
    argv = ["--config", str(config)]
    for name, value in options.items():
        if isinstance(value, list):
            argv += [f"--{name}", *map(str, value)]
        elif value is not None:
            argv += [f"--{name}", str(value)]
    return argv


def ppo_argv(runs_dir: Path, run: str, sft_model: Path | None, **options) -> list[str]:
    """Command-line arguments for the PPO stage: the demo config, FAST_OPTIONS, then ``options`` (None drops one, a
    list gives several values)."""
    merged = {**FAST_OPTIONS, "runs_dir": runs_dir, "run": run, "sft_model_path": sft_model, **options}
    return config_argv(PPO_CONFIG, merged)


def run_ppo(argv: list[str]) -> list[dict]:
    """Run the PPO stage in this process; returns its metrics.jsonl records."""
    ppo_stage.main(argv)
    runs_dir, run = argv[argv.index("--runs_dir") + 1], argv[argv.index("--run") + 1]
    return read_metrics(Path(runs_dir) / run / "ppo" / "metrics.jsonl")


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of every parameter, by name."""
    return {name: p.detach().cpu().clone() for name, p in module.named_parameters()}


def digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names and float32 values, in name order."""
    hasher = hashlib.sha256()
    for name in sorted(tensors):
        hasher.update(name.encode())
        hasher.update(tensors[name].float().numpy().tobytes())
    return hasher.hexdigest()


class RecordingTrainer(PPOTrainer):
    """A PPOTrainer that keeps parameter snapshots from before and after ``train`` (and of a frozen reference
    copy), this process's own per-update rollout figures, before any averaging across processes, and its episodes
    with their scores."""

    latest: RecordingTrainer | None = None

    def train(self) -> dict[str, float]:
        RecordingTrainer.latest = self
        self.local_rollouts: list[dict[str, float]] = []
        self.rollouts: list[dict[str, torch.Tensor]] = []  # this process's episodes and their reward scores
        self.before = snapshot(self.model)
        reference = self.model.frozen_reference
        self.reference_before = snapshot(reference) if reference is not None else None
        metrics = super().train()
        self.after = snapshot(self.accelerator.unwrap_model(self.model_wrapped))
        # Taken now: saving merges the policy adapter into the base in place, which renames the parameters.
        self.trainable_names = self.accelerator.unwrap_model(self.model_wrapped).trainable_names()
        self.reference_after = snapshot(reference) if reference is not None else None
        return metrics

    def rollout_metrics(self, rollout, rewards):
        self.rollouts.append(
            {
                "input_ids": rollout.input_ids.cpu(),
                "attention_mask": rollout.attention_mask.cpu(),
                "response_lengths": rollout.response_mask.sum(1).long().cpu(),
                "raw_scores": rollout.raw_scores.cpu(),
            }
        )
        self.local_rollouts.append(
            {
                "episodes": len(rollout),
                "scores": rollout.scores.mean().item(),
                "num_eos": rollout.ended.sum().item(),
            }
        )
        return super().rollout_metrics(rollout, rewards)

    def trainable(self, which: str) -> dict[str, torch.Tensor]:
        """``before`` or ``after`` restricted to the parameters PPO trains."""
        return {name: tensor for name, tensor in getattr(self, which).items() if name in self.trainable_names}

    def record(self) -> dict:
        """What a distributed test compares across processes."""
        return {
            "process_index": self.accelerator.process_index,
            "num_processes": self.accelerator.num_processes,
            "wrapped": type(self.model_wrapped).__name__,
            "trainable_before": digest(self.trainable("before")),
            "trainable_after": digest(self.trainable("after")),
            "local_rollouts": self.local_rollouts,
        }


def main() -> None:
    """The PPO stage with the recording trainer; each process writes its record to ``$PPO_RECORD_DIR``."""
    ppo_stage.PPOTrainer = RecordingTrainer
    run_main(ppo_stage.main)
    trainer = RecordingTrainer.latest
    out = Path(os.environ["PPO_RECORD_DIR"]) / f"rank-{trainer.accelerator.process_index}.json"
    out.write_text(json.dumps(trainer.record(), indent=2))


if __name__ == "__main__":
    main()
