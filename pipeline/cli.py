"""One entry point: ``rlhf sft|rm|ppo|eval [--config ...]`` runs a stage in this process; ``rlhf launch [accelerate
launch options] -m stages.<name> ...`` launches one (``python -m pipeline.launch``); ``rlhf report``, ``rlhf export``
and ``rlhf results`` read runs.

Each stage also runs as ``python -m stages.<name>`` (that is what the launcher's ``-m`` uses).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from pipeline.errors import PipelineError, run_main
from pipeline.noise import silence_library_noise
from pipeline.runs import SUMMARY, StageDir, check_run_name, read_json

STAGES = ("sft", "rm", "ppo", "eval")
# Stages run in this process by `rlhf <stage>`, and the module that holds each one's main.
STAGE_MODULES = {"sft": "stages.sft", "rm": "stages.rm", "ppo": "stages.ppo.__main__", "eval": "stages.eval.__main__"}


def report(runs_dir: Path, run: str) -> str:
    """A short text table of the stages of ``run``: each complete one's headline figures."""
    from pipeline.report_content import HEADLINES, fmt, stage_names

    run_dir = Path(runs_dir) / run
    names = stage_names(run_dir) if run_dir.is_dir() else list(STAGES)
    lines = [f"run '{run}' in {runs_dir}"]
    for stage in names:
        folder = StageDir(runs_dir, run, stage)
        if not folder.is_complete():
            if stage in STAGES:
                lines.append(f"  {stage:4s} not complete (make {stage} RUN={run})")
            continue
        summary = read_json(folder.final / SUMMARY)
        keys = HEADLINES.get(stage) or [k for k, v in summary.items() if isinstance(v, (int, float))]
        figures = ", ".join(f"{key} {fmt(summary[key])}" for key in keys if summary.get(key) is not None)
        lines.append(f"  {stage:4s} {figures}")
    return "\n".join(lines)


def write_html_report(runs_dir: Path, run: str, screenshot: bool) -> str:
    """Write the run's report.html; with ``screenshot``, open it in headless Chromium, check that every image
    loaded, and keep a full-page screenshot beside it. Returns what to tell the user."""
    from pipeline.browser import INSTALL_HINT, find_chromium, open_page
    from pipeline.report import SCREENSHOT, write_report

    path = write_report(runs_dir, run)
    message = f"wrote {path}"
    if not screenshot:
        return message
    if find_chromium() is None:
        return f"{message}; no screenshot: {INSTALL_HINT}"
    page = open_page(path, Path(runs_dir) / run / SCREENSHOT)
    if page.broken_images:
        raise PipelineError(f"{path}: images that did not load in Chromium: {', '.join(page.broken_images)}")
    return f"{message}; Chromium showed all {len(page.images)} images; screenshot {page.screenshot}"


def main(argv: list[str] | None = None) -> None:
    """Run ``rlhf <command> ...`` (``argv``, default ``sys.argv[1:]``); bad input: one error line, exit code 2."""
    silence_library_noise()
    run_main(_dispatch, argv)


def _dispatch(argv: list[str] | None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in STAGE_MODULES:
        importlib.import_module(STAGE_MODULES[argv[0]]).main(argv[1:])
        return
    if argv and argv[0] == "launch":
        from pipeline import launch

        launch.main(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="rlhf", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    helps = {
        "report": "print the headline figures of a run and write its report.html",
        "export": "write a stage's model (LoRA merged, with a model card) or learned prompt for use elsewhere",
        "results": "write a Markdown results page of a run, with the commands that reproduce every figure",
    }
    for name, help_text in helps.items():
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--run", default="demo")
        command.add_argument("--runs_dir", type=Path, default=Path("runs"))
    commands.choices["report"].add_argument(
        "--screenshot", action="store_true", help="also open the report in headless Chromium and keep a screenshot"
    )
    commands.choices["export"].add_argument("--stage", default="ppo", help="ppo (default), sft, rm or prompt_opt")
    commands.choices["export"].add_argument("--out", type=Path, default=None)
    commands.choices["results"].add_argument("--out", type=Path, default=Path("docs/RESULTS.md"))
    args = parser.parse_args(argv)
    check_run_name(args.run)
    if args.command == "report":
        print(report(args.runs_dir, args.run))
        print(write_html_report(args.runs_dir, args.run, args.screenshot))
    elif args.command == "export":
        from pipeline.export import export

        print(f"exported {export(args.runs_dir, args.run, args.stage, args.out)}")
    else:
        from pipeline.results import write_results

        print(f"wrote {write_results(args.runs_dir, args.run, args.out)}")


if __name__ == "__main__":
    main()
