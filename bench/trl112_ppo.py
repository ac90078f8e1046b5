"""Run trl 1.12.0's PPOTrainer once and write what it measured (runs INSIDE .bench-venv-trl112, see setup script).

``.bench-venv-trl112/bin/python -m bench.trl112_ppo --policy P --reward R --prompts prompts.jsonl --out result.json``

The policy folder is also the reference (SFT) model; with ``--lora`` the policy is wrapped in LoRA by trl and the
reference is the same base with the adapter disabled. trl 1.12 needs policy and reward to share one tokenizer.
Imports nothing from the product: only trl 1.12.0 and its dependencies.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    TrainerCallback,
)
from trl.experimental.ppo import PPOConfig, PPOTrainer

from bench.metrics import own_peak_rss_mb, steady_episodes_per_second

REFERENCE_TRL = "1.12.0"
LORA_R = 16
LORA_ALPHA = 32
# Numbers worth keeping from trl's per-update log (the rest is bookkeeping such as lr or epoch).
LOGGED_KEYS = (
    "episode",
    "eps",
    "objective/scores",
    "objective/kl",
    "objective/rlhf_reward",
    "objective/non_score_reward",
    "objective/entropy",
    "policy/approxkl_avg",
    "policy/clipfrac_avg",
    "policy/entropy_avg",
    "loss/policy_avg",
    "loss/value_avg",
    "val/clipfrac_avg",
    "val/ratio",
    "val/num_eos_tokens",
)


class UpdateRecorder(TrainerCallback):
    """Keeps one record per PPO update from the trainer's logs, stamped with seconds since training began."""

    def __init__(self) -> None:
        self.records: list[dict[str, float]] = []
        self.start: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "episode" not in logs:
            return
        record = {key: logs[key] for key in LOGGED_KEYS if key in logs}
        record["elapsed_s"] = time.perf_counter() - self.start
        self.records.append(record)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", required=True, help="causal LM folder: the policy and the reference (SFT) model")
    parser.add_argument("--reward", required=True, help="sequence-classification folder with one label")
    parser.add_argument("--value", help="value model folder (sequence classification, one label); default: --reward")
    parser.add_argument("--prompts", required=True, type=Path, help="JSON lines with a 'prompt' column")
    parser.add_argument("--out", required=True, type=Path, help="result JSON to write")
    parser.add_argument("--lora", action="store_true", help=f"train a LoRA adapter (r={LORA_R}, alpha={LORA_ALPHA})")
    parser.add_argument(
        "--lora_target_modules",
        default="all-linear",
        help="PEFT target modules: 'all-linear' or comma-separated module names",
    )
    parser.add_argument("--per_device_train_batch_size", type=int, default=8)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--num_mini_batches", type=int, default=1)
    parser.add_argument("--num_ppo_epochs", type=int, default=4)
    parser.add_argument("--response_length", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--kl_coef", type=float, default=0.05)
    parser.add_argument("--kl_estimator", choices=("k1", "k3"), default="k1")
    parser.add_argument("--learning_rate", type=float, default=3e-6)
    parser.add_argument("--total_episodes", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--missing_eos_penalty", type=float, default=None)
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="dtype every model is loaded in (LoRA adapters stay float32, PEFT's default)",
    )
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (trl's bf16 option)")
    return parser.parse_args(argv)


def check_versions() -> dict[str, str]:
    """Versions of the packages that matter; refuses to run under any trl other than the reference one."""
    versions = {name: metadata.version(name) for name in ("trl", "transformers", "torch", "accelerate", "peft")}
    if versions["trl"] != REFERENCE_TRL:
        sys.exit(
            f"error: this script measures trl {REFERENCE_TRL}, found trl {versions['trl']}: run it with "
            ".bench-venv-trl112/bin/python (bash bench/setup_reference_env.sh creates it)"
        )
    return versions


def lora_targets(option: str) -> str | list[str]:
    """PEFT's ``target_modules`` from the command line: the 'all-linear' shorthand or a list of names."""
    return option if option == "all-linear" else [name.strip() for name in option.split(",") if name.strip()]


def load_prompts(path: Path, tokenizer, needed: int) -> Dataset:
    """Tokenized prompts (``input_ids`` only: trl's collator left-pads them) from a JSON-lines file."""
    prompts = []
    with open(path) as handle:
        for line_number, line in enumerate(handle, start=1):
            if line.strip():
                row = json.loads(line)
                if not isinstance(row.get("prompt"), str):
                    sys.exit(f"error: {path} line {line_number} has no string 'prompt' field")
                prompts.append(row["prompt"])
    if len(prompts) < needed:
        # trl's dataloader drops incomplete batches, so fewer prompts than one batch would never yield one.
        sys.exit(f"error: {path} has {len(prompts)} prompts; one PPO batch needs at least {needed}")
    return Dataset.from_dict({"input_ids": [tokenizer(prompt)["input_ids"] for prompt in prompts]})


def build_config(args: argparse.Namespace, output_dir: str, use_cuda: bool) -> PPOConfig:
    """trl 1.12's PPOConfig for this run: no eval, saving, sample generations or reporting."""
    return PPOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        num_mini_batches=args.num_mini_batches,
        num_ppo_epochs=args.num_ppo_epochs,
        response_length=args.response_length,
        temperature=args.temperature,
        kl_coef=args.kl_coef,
        kl_estimator=args.kl_estimator,
        learning_rate=args.learning_rate,
        total_episodes=args.total_episodes,
        seed=args.seed,
        missing_eos_penalty=args.missing_eos_penalty,
        stop_token="eos",
        sft_model_path=args.policy,
        reward_model_path=args.reward,
        bf16=args.bf16,
        fp16=False,
        use_cpu=not use_cuda,
        gradient_checkpointing=False,
        num_sample_generations=0,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
    )


def run(args: argparse.Namespace) -> dict:
    """Train once with trl 1.12.0's PPOTrainer and return the measurements."""
    versions = check_versions()
    use_cuda = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(args.policy, padding_side="left")
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        sys.exit(f"error: the tokenizer of {args.policy} needs a pad token different from EOS")
    local_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps
    dataset = load_prompts(args.prompts, tokenizer, local_batch)

    torch.manual_seed(args.seed)
    dtype = getattr(torch, args.dtype)
    policy = AutoModelForCausalLM.from_pretrained(args.policy, dtype=dtype)
    reward = AutoModelForSequenceClassification.from_pretrained(args.reward, num_labels=1, dtype=dtype)
    value = AutoModelForSequenceClassification.from_pretrained(args.value or args.reward, num_labels=1, dtype=dtype)
    ref_policy = None if args.lora else AutoModelForCausalLM.from_pretrained(args.policy, dtype=dtype)
    peft_config = None
    if args.lora:  # LoRA dropout needs no setting: trl turns every dropout in the policy off
        targets = lora_targets(args.lora_target_modules)
        peft_config = LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, target_modules=targets, task_type="CAUSAL_LM")
    recorder = UpdateRecorder()
    with tempfile.TemporaryDirectory(prefix="trl112-ppo-") as output_dir:
        config = build_config(args, output_dir, use_cuda)
        trainer = PPOTrainer(
            args=config,
            processing_class=tokenizer,
            model=policy,
            ref_model=ref_policy,
            reward_model=reward,
            value_model=value,
            train_dataset=dataset,
            callbacks=[recorder],
            peft_config=peft_config,
        )
        started = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - started
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)

    return {
        "implementation": f"trl {versions['trl']} PPOTrainer",
        "versions": versions,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name() if use_cuda else f"cpu ({os.cpu_count()} cores)",
        "threads": torch.get_num_threads(),
        "config": {
            **{key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()},
            "lora_r": LORA_R if args.lora else None,
            "lora_alpha": LORA_ALPHA if args.lora else None,
            "lora_target_modules": args.lora_target_modules if args.lora else None,
            "episodes_per_update": config.batch_size,
            "updates": config.num_total_batches,
            "stop_token": config.stop_token,
        },
        "trainable_parameters": trainable,
        "records": recorder.records,
        "total_episodes": trainer.state.episode,
        "train_seconds": train_seconds,
        "episodes_per_second": steady_episodes_per_second(recorder.records),
        "peak_rss_mb": own_peak_rss_mb(),
        "cuda_peak_allocated_mb": torch.cuda.max_memory_allocated() / 2**20 if use_cuda else None,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    rate = result["episodes_per_second"]
    print(
        f"trl {REFERENCE_TRL}: {result['total_episodes']} episodes in {result['train_seconds']:.1f}s, "
        f"{rate if rate is None else round(rate, 3)} episodes/s after warm-up, peak RSS {result['peak_rss_mb']:.0f} MiB"
        f" -> {args.out}"
    )


if __name__ == "__main__":
    main()
