"""Shared by the prompt-optimization tests: fast stage arguments on the demo sentiment data with the real
all-MiniLM-L6-v2 as task model, and a trainer that records what each process scored.

Run under ``accelerate launch -m tests.prompt_opt_testing <stage arguments>`` it runs the stage with that recording
trainer and writes one JSON record per process to ``$PROMPT_OPT_RECORD_DIR/rank-<i>.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import stages.prompt_opt.__main__ as prompt_opt_stage
from pipeline.errors import run_main
from stages.prompt_opt.trainer import PromptOptTrainer
from tests.conftest import REPO
from tests.ppo_testing import config_argv, digest, snapshot

CONFIG = REPO / "configs" / "demo" / "prompt_opt.yaml"
SENTIMENT = REPO / "data" / "demo_sentiment"
# Small and short: a few seconds per update on one thread (8 prompts x 8 train examples through MiniLM).
FAST = {
    "num_shots": 4,
    "per_device_train_batch_size": 8,
    "total_episodes": 16,
    "dev_every": 1,
    "random_prompts": 3,
    "top_prompts": 3,
    "sample_every": 0,
    "save_strategy": "no",
    "disable_tqdm": "true",
}


def small_test_split(folder: Path, rows: int = 24) -> Path:
    """The first ``rows`` rows of the demo's test split (balanced enough: the file is shuffled)."""
    out = folder / "test.jsonl"
    lines = (SENTIMENT / "test.jsonl").read_text().splitlines()[:rows]
    out.write_text("\n".join(lines) + "\n")
    return out


def prompt_opt_argv(runs_dir: Path, run: str, policy: Path, test_file: Path, **options) -> list[str]:
    """The demo config, FAST, then ``options`` (None drops one, a list gives several values)."""
    merged = {
        **FAST,
        "runs_dir": runs_dir,
        "run": run,
        "policy_model": policy,
        "eval_dataset_name": test_file,
        **options,
    }
    return config_argv(CONFIG, merged)


class RecordingPromptTrainer(PromptOptTrainer):
    """Keeps this process's raw and shaped scores per update and digests of the trained weights."""

    latest: RecordingPromptTrainer | None = None

    def train(self):
        RecordingPromptTrainer.latest = self
        self.steps: list[dict] = []
        self.before = snapshot(self.model)
        metrics = super().train()
        self.after = snapshot(self.accelerator.unwrap_model(self.model_wrapped))
        return metrics

    def collect(self, rows, timer):
        episodes, rewards, gold, scores = super().collect(rows, timer)
        self.steps.append({"raw": rewards.scores.tolist(), "shaped": scores.tolist()})
        return episodes, rewards, gold, scores

    def record(self) -> dict:
        trained = self.accelerator.unwrap_model(self.model_wrapped).trainable_names()
        return {
            "process_index": self.accelerator.process_index,
            "steps": self.steps,
            "trained_before": digest({n: t for n, t in self.before.items() if n in trained}),
            "trained_after": digest({n: t for n, t in self.after.items() if n in trained}),
        }


def main() -> None:
    prompt_opt_stage.PromptOptTrainer = RecordingPromptTrainer
    run_main(prompt_opt_stage.main)
    trainer = RecordingPromptTrainer.latest
    out = Path(os.environ["PROMPT_OPT_RECORD_DIR"]) / f"rank-{trainer.accelerator.process_index}.json"
    out.write_text(json.dumps(trainer.record(), indent=2))


if __name__ == "__main__":
    main()
