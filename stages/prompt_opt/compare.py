"""Prompt-optimization runs side by side: each run's selected prompt and its test accuracy against the baselines.

``python -m stages.prompt_opt.compare --runs demo demo-sql [--runs_dir runs] [--out table.md]`` prints a table (and
writes it with ``--out``); ``make prompt-opt`` shows PPO and soft Q-learning this way, ``make prompt-opt-seeds``
both algorithms over several seeds.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from pipeline.errors import PipelineError, run_main
from pipeline.runs import SUMMARY, StageDir, read_json, write_text_atomic

STAGE = "prompt_opt"
# What the learned prompt is held against, and how each figure is read from the baselines.
BASELINES = {
    "empty": lambda b: b["empty_prompt"]["test_accuracy"],
    "manual": lambda b: b["manual_prompt"]["test_accuracy"],
    "random mean": lambda b: b["random_prompts"]["test_accuracy_mean"],
    "best random on dev": lambda b: b["best_random_on_dev"]["test_accuracy"],
}


def rows(runs_dir: Path, runs: list[str]) -> list[dict]:
    """Each run's figures (test accuracies), from its prompt_opt summary."""
    found = []
    for run in runs:
        stage = StageDir(runs_dir, run, STAGE)
        if not stage.is_complete():
            raise PipelineError(f"stage '{STAGE}' of run '{run}' is not complete ({stage.final / SUMMARY} is missing)")
        summary = read_json(stage.final / SUMMARY)
        manifest = read_json(stage.final / "manifest.json")
        found.append(
            {
                "run": run,
                "algorithm": summary["algorithm"],
                "seed": manifest["config"]["prompt_opt"]["seed"],
                "prompt": summary["selected_prompt"]["text"],
                "learned": summary["test_accuracy"],
                **{name: read(summary["baselines"]) for name, read in BASELINES.items()},
            }
        )
    return found


def table(found: list[dict]) -> str:
    """A markdown table of the runs, then per algorithm the mean of each column and how many runs beat each
    baseline."""
    columns = ["learned", *BASELINES]
    lines = [
        "| run | algorithm | seed | selected prompt | " + " | ".join(f"test acc., {c}" for c in columns) + " |",
        "|---" * (4 + len(columns)) + "|",
    ]
    for row in found:
        figures = " | ".join(f"{row[c]:.3f}" for c in columns)
        lines.append(f"| {row['run']} | {row['algorithm']} | {row['seed']} | `{row['prompt']!r}` | {figures} |")
    for algorithm in sorted({row["algorithm"] for row in found}):
        mine = [row for row in found if row["algorithm"] == algorithm]
        means = " | ".join(f"{statistics.fmean(row[c] for row in mine):.3f}" for c in columns)
        lines.append(f"| mean | {algorithm} | {len(mine)} runs | | {means} |")
        wins = ", ".join(f"{sum(row['learned'] > row[c] for row in mine)}/{len(mine)} above {c}" for c in BASELINES)
        lines.append(f"\n{algorithm}: the learned prompt is {wins}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.prompt_opt.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", required=True)
    parser.add_argument("--runs_dir", type=Path, default=Path("runs"))
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    text = table(rows(args.runs_dir, args.runs))
    if args.out:
        write_text_atomic(args.out, text)
    print(text, end="")


if __name__ == "__main__":
    run_main(main)
