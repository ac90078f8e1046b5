"""``rlhf export`` / ``make export``: a stage's result as something usable outside this project.

- A policy (``ppo``, ``sft``) or reward model (``rm``): its LoRA adapter merged into a full-precision copy of its
  base, saved as a plain transformers model with its tokenizer, a model card (README.md) and, for PPO, the value
  head beside it in ``value/``; it loads with ``from_pretrained`` alone.
- A learned prompt (``prompt_opt``): ``prompt.json`` (the prompt and the other candidates, the template, the
  verbalizers, the classes and the task model) and a card.

Everything is written to ``<target>.partial`` and renamed into place.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.metrics import read_metrics
from pipeline.model_card import model_card, prompt_card
from pipeline.runs import SUMMARY, StageDir, read_json, write_json_atomic

EXPORTABLE = ("ppo", "sft", "rm", "prompt_opt")
CARD = "README.md"
PROMPT_FILE = "prompt.json"


def export(runs_dir: Path, run: str, stage: str, out: Path | None) -> Path:
    """Export ``stage`` of ``run`` to ``out`` (default ``runs/<run>/export/<stage>``); returns the folder."""
    folder = StageDir(Path(runs_dir), run, stage)
    if stage not in EXPORTABLE:
        raise PipelineError(f"stage '{stage}' cannot be exported; choose one of {', '.join(EXPORTABLE)}")
    if not folder.is_complete():
        raise PipelineError(f"stage '{stage}' of run '{run}' is not complete: run `make {stage} RUN={run}` first")
    target = Path(out) if out else folder.run_dir / "export" / stage
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    if stage == "prompt_opt":
        export_prompt(folder.final, partial)
    else:
        export_model(folder.final, partial, stage)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def export_model(stage_dir: Path, out: Path, stage: str) -> None:
    """The stage's model as a plain transformers model in ``out`` (LoRA merged into a full-precision base), its
    tokenizer, PPO's value head in ``value/``, and the card."""
    from pipeline.models import adapter_base, merge_adapter

    adapter = stage_dir / "adapter"
    if (adapter / "adapter_config.json").is_file():
        merge_adapter(adapter_base(adapter), adapter, out, scorer=stage == "rm")
    else:
        shutil.copytree(stage_dir / "model", out)
    value = None
    if stage == "ppo" and (stage_dir / "value").is_dir():
        shutil.copytree(stage_dir / "value", out / "value")
        value = "value"
    (out / CARD).write_text(model_card(stage_dir.parent, stage, value))


def export_prompt(stage_dir: Path, out: Path) -> None:
    """The learned prompt and how to apply it (``prompt.json``), and the card."""
    summary = read_json(stage_dir / SUMMARY)
    if "selected_prompt" not in summary or "task" not in summary:
        raise PipelineError(
            f"{stage_dir / SUMMARY} has no selected_prompt or task: it was not written by the prompt-optimization "
            "stage of this version; run the stage again"
        )
    task = summary["task"]
    payload = {
        "prompt": summary["selected_prompt"]["text"],
        "token_ids": summary["selected_prompt"].get("token_ids"),
        "template": task.get("template"),
        "verbalizers": task.get("verbalizers"),
        "classes": task.get("classes"),
        "task_model": task.get("task_model"),
        "task_model_path": task.get("task_model_path"),
        "task_model_kind": task.get("kind"),
        "test_accuracy": summary.get("test_accuracy"),
        "dev_accuracy": summary["selected_prompt"].get("dev_accuracy"),
        "baselines": summary.get("baselines"),
        "candidates": read_metrics(stage_dir / "prompts.jsonl"),
    }
    out.mkdir(parents=True)
    write_json_atomic(out / PROMPT_FILE, payload)
    (out / CARD).write_text(prompt_card(stage_dir.parent, summary))
