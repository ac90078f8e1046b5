"""Shared by the prompt-editing tests: small labelled files cut from the demo sentiment data, and command lines for the
stage on the demo config with fast settings."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from pipeline.metrics import read_metrics
from tests.conftest import REPO
from tests.ppo_testing import config_argv

CONFIG = REPO / "configs" / "demo" / "prompt_edit.yaml"
SENTIMENT = REPO / "data" / "demo_sentiment"
# A few seconds per run on one CPU thread; tests override what they are about.
FAST_OPTIONS = {
    "num_shots": 4,
    "exemplar_pool_size": 6,
    "max_edits": 3,
    "per_device_train_batch_size": 8,
    "num_mini_batches": 1,
    "num_ppo_epochs": 2,
    "total_episodes": 16,
    "dev_every": 1,
    "random_edit_draws": 2,
    "sample_queries": 4,
    "save_strategy": "no",
    "disable_tqdm": "true",
    "report_to": "none",
    "seed": 0,
}


def small_split(source: str, per_class: int, out: Path) -> Path:
    """The first ``per_class`` rows of each class of a demo sentiment file, written to ``out``, and the rows of the
    demo config's initial exemplars where the file holds them."""
    rows = [json.loads(line) for line in (SENTIMENT / source).read_text().splitlines()]
    exemplars = set(yaml.safe_load(CONFIG.read_text())["exemplars"])
    kept = [r for r in rows if r["text"] in exemplars]
    for label in ("negative", "positive"):
        kept += [r for r in rows if r["label"] == label and r["text"] not in exemplars][:per_class]
    out.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return out


def edit_argv(runs: Path, run: str, policy: Path, **options) -> list[str]:
    """Stage arguments: the demo config, FAST_OPTIONS, then ``options`` (None drops one, a list gives several)."""
    merged = {**FAST_OPTIONS, "runs_dir": runs, "run": run, "policy_model": policy, **options}
    return config_argv(CONFIG, merged)


def stage_records(runs: Path, run: str) -> tuple[dict, list[dict], list[dict]]:
    """A finished stage's summary, metrics and edit rows."""
    folder = Path(runs) / run / "prompt_edit"
    summary = json.loads((folder / "summary.json").read_text())
    return summary, read_metrics(folder / "metrics.jsonl"), read_metrics(folder / "edits.jsonl")
