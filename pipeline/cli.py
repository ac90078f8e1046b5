"""One entry point: ``rlhf sft|rm|ppo [--config ...]`` runs a stage in this process; ``rlhf launch [accelerate
launch options] -m stages.<name> ...`` launches one (``python -m pipeline.launch``); ``rlhf report`` and
``rlhf export`` read runs.

Each stage also runs as ``python -m stages.<name>`` (that is what the launcher's ``-m`` uses).
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
from pathlib import Path

from pipeline.errors import PipelineError, run_main
from pipeline.noise import silence_library_noise
from pipeline.runs import SUMMARY, StageDir, check_run_name, read_json

STAGES = ("sft", "rm", "ppo")
# The headline figures of each stage's summary.json, in the order a person reads them.
HEADLINES = {
    "sft": ("initial_eval_loss", "eval_loss", "eval_perplexity"),
    "rm": ("eval_accuracy", "eval_margin", "train_loss"),
    "ppo": ("reference_score", "score", "reference_gold_score", "gold_score", "kl", "updates", "episodes_per_second"),
}


def report(runs_dir: Path, run: str) -> str:
    """A short text table of the completed stages of ``run``."""
    lines = [f"run '{run}' in {runs_dir}"]
    for stage in STAGES:
        folder = StageDir(runs_dir, run, stage)
        if not folder.is_complete():
            lines.append(f"  {stage:4s} not complete (make {stage} RUN={run})")
            continue
        summary = read_json(folder.final / SUMMARY)
        figures = ", ".join(
            f"{key} {summary[key]:.4g}" if isinstance(summary.get(key), float) else f"{key} {summary.get(key)}"
            for key in HEADLINES[stage]
            if summary.get(key) is not None
        )
        lines.append(f"  {stage:4s} {figures}")
    return "\n".join(lines)


def export(runs_dir: Path, run: str, stage: str, out: Path | None) -> Path:
    """Write a plain model (LoRA merged) of ``stage`` to ``out`` (default ``runs/<run>/export/<stage>``)."""
    from pipeline.models import merge_adapter

    folder = StageDir(runs_dir, run, stage)
    if not folder.is_complete():
        raise PipelineError(f"stage '{stage}' of run '{run}' is not complete: run `make {stage} RUN={run}` first")
    target = out or folder.run_dir / "export" / stage
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    adapter = folder.final / "adapter"
    if adapter.is_dir():
        base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
        merge_adapter(base, adapter, partial, scorer=stage == "rm")
    else:
        shutil.copytree(folder.final / "model", partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def main(argv: list[str] | None = None) -> None:
    """Run ``rlhf <command> ...`` (``argv``, default ``sys.argv[1:]``); bad input: one error line, exit code 2."""
    silence_library_noise()
    run_main(_dispatch, argv)


def _dispatch(argv: list[str] | None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in STAGES:
        importlib.import_module(f"stages.{argv[0]}" if argv[0] != "ppo" else "stages.ppo.__main__").main(argv[1:])
        return
    if argv and argv[0] == "launch":
        from pipeline import launch

        launch.main(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="rlhf", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("report", "print the headline figures of a run"), ("export", "write a merged model")):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--run", default="demo")
        command.add_argument("--runs_dir", type=Path, default=Path("runs"))
    commands.choices["export"].add_argument("--stage", choices=STAGES, default="ppo")
    commands.choices["export"].add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    check_run_name(args.run)
    if args.command == "report":
        print(report(args.runs_dir, args.run))
    else:
        print(f"exported {export(args.runs_dir, args.run, args.stage, args.out)}")


if __name__ == "__main__":
    main()
