"""Command lines and read-backs shared by the SFT / RM stage tests: small, fast runs on the demo data."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import DEMO_DATA, REPO

# One short epoch, no progress bars, frequent logging so that even a few steps leave curves.
FAST = ["--num_train_epochs", "1", "--disable_tqdm", "true", "--report_to", "none", "--logging_steps", "4"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def sft_args(runs: Path, run: str, base: Path, *extra: str, train_rows: int = 256, eval_rows: int = 64) -> list[str]:
    """``stages.sft`` arguments: the demo config on the first rows of the demo data, starting from ``base``."""
    return [
        *("--config", str(REPO / "configs" / "demo" / "sft.yaml")),
        *("--runs_dir", str(runs), "--run", run, "--model_name_or_path", str(base)),
        *("--dataset_name", str(DEMO_DATA / "sft_train.jsonl")),
        *("--eval_dataset_name", str(DEMO_DATA / "sft_eval.jsonl")),
        *("--max_train_samples", str(train_rows), "--max_eval_samples", str(eval_rows)),
        *("--per_device_train_batch_size", "16"),
        *FAST,
        *extra,
    ]


def rm_args(runs: Path, run: str, *extra: str, train_rows: int = 256, eval_rows: int = 64) -> list[str]:
    """``stages.rm`` arguments: the demo config on the first demo pairs (the base model comes from ``extra`` or,
    without ``--model_name_or_path``, from the run's SFT stage)."""
    return [
        *("--config", str(REPO / "configs" / "demo" / "rm.yaml")),
        *("--runs_dir", str(runs), "--run", run),
        *("--dataset_name", str(DEMO_DATA / "prefs_train.jsonl")),
        *("--eval_dataset_name", str(DEMO_DATA / "prefs_eval.jsonl")),
        *("--max_train_samples", str(train_rows), "--max_eval_samples", str(eval_rows)),
        *("--per_device_train_batch_size", "16"),
        *FAST,
        *extra,
    ]


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def read_metrics(stage_dir: Path) -> list[dict]:
    """Every line of a stage's ``metrics.jsonl``."""
    return [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]


def complete_stages(runs: Path) -> list[Path]:
    """Every folder under ``runs`` that holds a ``summary.json`` (i.e. looks like a complete stage)."""
    return sorted(path.parent for path in Path(runs).rglob("summary.json"))
