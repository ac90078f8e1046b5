"""Model cards for exported models: what the model is, how to load it, where it came from (base model, data, every
stage's configuration) and the headline figures, all read from the run folder."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipeline.models import looks_like_path
from pipeline.report_content import fmt, stage_command
from pipeline.runs import MANIFEST, SUMMARY, read_json

LINEAGE = ("sft", "rm", "ppo")
# The settings shown in a stage's table (every field is in the folded JSON below it).
KEY_SETTINGS = (
    "model_name_or_path",
    "dataset_name",
    "eval_dataset_name",
    "use_peft",
    "lora_r",
    "lora_alpha",
    "lora_target_modules",
    "learning_rate",
    "num_train_epochs",
    "per_device_train_batch_size",
    "max_length",
    "total_episodes",
    "kl_coef",
    "kl_estimator",
    "temperature",
    "response_length",
    "reward",
    "gold_reward",
    "value_model",
    "value_adapter_layers",
    "snapshot_every",
    "seed",
)


def stage_record(run_dir: Path, stage: str) -> tuple[dict, dict] | None:
    """(manifest, summary) of a complete stage of the run, or None."""
    folder = run_dir / stage
    if not (folder / SUMMARY).is_file():
        return None
    manifest = read_json(folder / MANIFEST) if (folder / MANIFEST).is_file() else {}
    return manifest, read_json(folder / SUMMARY)


def _flat_config(manifest: dict) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for config in manifest.get("config", {}).values():
        flat.update(config)
    return flat


def _input(manifest: dict, name: str) -> str | None:
    return manifest.get("inputs", {}).get(name, {}).get("path")


def headline_lines(run_dir: Path) -> list[str]:
    """One line per stage with its headline figures (SFT loss, RM accuracy, PPO scores and KL, eval win rates)."""
    lines = []
    if record := stage_record(run_dir, "sft"):
        summary = record[1]
        lines.append(f"- SFT: held-out loss {summary['initial_eval_loss']:.3f} -> {summary['eval_loss']:.3f}")
    if record := stage_record(run_dir, "rm"):
        summary = record[1]
        low, high = summary.get("eval_accuracy_ci95", [float("nan")] * 2)
        lines.append(
            f"- Reward model: held-out pairwise accuracy {summary['eval_accuracy']:.3f} (95% CI {low:.3f}-{high:.3f}) "
            f"on {summary.get('eval_rows')} pairs"
        )
    if record := stage_record(run_dir, "ppo"):
        summary = record[1]
        text = f"- PPO: reward-model score {summary['reference_score']:.3f} (SFT) -> {summary['score']:.3f}"
        if summary.get("gold_score") is not None:
            text += f", gold score {summary['reference_gold_score']:.3f} -> {summary['gold_score']:.3f}"
        text += f", KL to SFT {summary['kl']:.2f} nats per response ({summary['updates']} updates)"
        lines.append(text)
    if record := stage_record(run_dir, "eval"):
        summary = record[1]
        level = round(summary["confidence"] * 100)
        for decoding, section in summary["decodings"].items():
            for name, figures in section["policies"].items():
                for scorer, duel in figures.get("win_rate", {}).items():
                    low, high = duel["ci"]
                    lines.append(
                        f"- Win rate of {name} against {summary['reference']} ({decoding} decoding, "
                        f"{summary['num_prompts']} held-out prompts) under {scorer} ({summary['scorers'][scorer]}): "
                        f"{duel['win_rate']:.3f} ({level}% bootstrap CI {low:.3f}-{high:.3f})"
                    )
    return lines


def _hub_id(name: str) -> bool:
    """Whether ``name`` reads as a hub id: not a local file or folder, nor shaped like a path."""
    return not looks_like_path(name) and not os.path.exists(name)


def _front_matter(base: str | None, datasets: list[str], tags: list[str], pipeline_tag: str | None) -> str:
    """The card's YAML metadata; hub ids only (a local path is no valid hub reference)."""
    lines = ["---", "library_name: transformers" if pipeline_tag else "library_name: rlhf-pipeline"]
    if base and _hub_id(base):
        lines.append(f"base_model: {base}")
    hub_datasets = [d for d in datasets if _hub_id(d)]
    if hub_datasets:
        lines += ["datasets:", *[f"- {d}" for d in hub_datasets]]
    lines += ["tags:", *[f"- {t}" for t in tags]]
    if pipeline_tag:
        lines.append(f"pipeline_tag: {pipeline_tag}")
    return "\n".join([*lines, "---", ""])


def configuration_section(run_dir: Path, stages: tuple[str, ...]) -> str:
    """Per stage: the command, the inputs, the key settings and every setting folded away."""
    parts = ["## Training configuration", ""]
    for stage in stages:
        record = stage_record(run_dir, stage)
        if record is None:
            continue
        manifest, _ = record
        flat = _flat_config(manifest)
        parts += [f"### {stage}", ""]
        if manifest.get("command"):
            parts += [f"Command: `{stage_command(manifest['command'])}`", ""]
        inputs = manifest.get("inputs", {})
        if inputs:
            parts += ["| input | path | sha256 |", "|---|---|---|"]
            parts += [f"| {k} | `{v.get('path')}` | `{(v.get('sha256') or '')[:16]}` |" for k, v in inputs.items()]
            parts.append("")
        rows = [(key, flat[key]) for key in KEY_SETTINGS if flat.get(key) is not None]
        if rows:
            parts += ["| setting | value |", "|---|---|", *[f"| {k} | `{fmt(v)}` |" for k, v in rows], ""]
        parts += [
            f"Git revision {manifest.get('git_revision')}; versions "
            + ", ".join(f"{k} {v}" for k, v in manifest.get("versions", {}).items()),
            "",
            "<details><summary>Every setting (manifest.json)</summary>",
            "",
            "```json",
            json.dumps(manifest.get("config", {}), indent=1, default=str),
            "```",
            "",
            "</details>",
            "",
        ]
    return "\n".join(parts)


def model_card(run_dir: Path, stage: str, value_folder: str | None) -> str:
    """The card of an exported model: a policy (merged into a plain causal LM) or the reward model (a sequence
    classifier with one output)."""
    sft = stage_record(run_dir, "sft")
    ppo = stage_record(run_dir, "ppo")
    base = _input(sft[0], "base_model") if sft else None
    lineage = LINEAGE[: LINEAGE.index(stage) + 1]
    records = [record for record in (stage_record(run_dir, name) for name in lineage) if record]
    inputs = [_input(manifest, name) for manifest, _ in records for name in ("dataset", "eval_dataset")]
    datasets = list(dict.fromkeys(path for path in inputs if path))
    scorer = stage == "rm"
    auto_class = "AutoModelForSequenceClassification" if scorer else "AutoModelForCausalLM"
    use = (
        [
            'inputs = tokenizer("Write a review of the hotel in Lisbon:", " Lovely rooms.", return_tensors="pt")',
            "print(model(**inputs).logits[0, 0])  # the reward",
        ]
        if scorer
        else [
            'inputs = tokenizer("Write a review of the hotel in Lisbon:", return_tensors="pt")',
            "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=32)[0], skip_special_tokens=True))",
        ]
    )
    title = {"ppo": "PPO policy", "sft": "SFT policy", "rm": "reward model"}[stage]
    tag = "text-classification" if scorer else "text-generation"
    lines = [
        _front_matter(base, datasets, ["rlhf", stage, "trl", "rlhf-pipeline"], tag),
        f"# {run_dir.name}: {title}",
        "",
        f"The {title} of run `{run_dir.name}` of rlhf-pipeline (SFT -> reward model -> PPO on TRL), with its LoRA "
        "adapter merged: a plain transformers model.",
        "",
        "## Use",
        "",
        "```python",
        f"from transformers import {auto_class}, AutoTokenizer",
        "",
        'tokenizer = AutoTokenizer.from_pretrained("<this folder>")',
        f'model = {auto_class}.from_pretrained("<this folder>")',
        *use,
        "```",
        "",
        "## Lineage",
        "",
        f"- Base model: `{base or 'unknown (no SFT stage in this run)'}`",
    ]
    if stage == "ppo" and ppo and _input(ppo[0], "sft_model"):
        lines.append(
            f"- PPO started from (and was held near, by its KL penalty) the SFT policy `{_input(ppo[0], 'sft_model')}`"
        )
    lines += [f"- Data: `{path}`" for path in datasets]
    lines += ["", "## Headline figures", "", *(headline_lines(run_dir) or ["(none recorded)"]), ""]
    if value_folder:
        lines += [
            "## Value head",
            "",
            f"`{value_folder}/` holds PPO's critic, which `from_pretrained` of this folder ignores. "
            + _value_description(ppo[1] if ppo else {}),
            "",
        ]
    lines.append(configuration_section(run_dir, lineage))
    return "\n".join(lines)


def _value_description(summary: dict) -> str:
    if summary.get("value_model") == "separate":
        return "It is a sequence-classification model (its score head is the value head), or a LoRA adapter on one."
    layers = summary.get("value_adapter_layers")
    where = f"the top {layers} decoder layers" if layers else "every decoder layer"
    return (
        f"It is a LoRA adapter on {where} of the SFT model (`adapter_config.json` names it) and a linear value head "
        "(`value_head.safetensors`: `summary.weight` [1, hidden], `summary.bias` [1]) read at every position of the "
        "last hidden state."
    )


def prompt_card(run_dir: Path, summary: dict) -> str:
    """The card of an exported prompt (the prompt-optimization stage): the prompt, how to apply it, its figures."""
    task = summary.get("task", {})
    selected = summary["selected_prompt"]
    lines = [
        _front_matter(task.get("task_model"), [], ["prompt-optimization", "rlprompt", "rlhf-pipeline"], None),
        f"# {run_dir.name}: learned prompt",
        "",
        f"The prompt `{selected['text']!r}`, learned by `{summary.get('algorithm')}` for the frozen task model "
        f"`{task.get('task_model')}` ({task.get('kind')}); `prompt.json` holds it with the template, verbalizers and "
        "the other candidates.",
        "",
        "## Use",
        "",
        f"Fill the template `{task.get('template')}`: `{{prompt}}` with the prompt and `{{input}}` with the text to "
        f"classify; the class is the verbalizer the task model scores highest: "
        + ", ".join(
            f"`{v!r}` -> {c}" for v, c in zip(task.get("verbalizers", []), task.get("classes", []), strict=False)
        )
        + ".",
        "",
        "## Headline figures",
        "",
        f"- Test accuracy {fmt(summary.get('test_accuracy'))} (dev accuracy {fmt(selected.get('dev_accuracy'))})",
    ]
    for name, baseline in summary.get("baselines", {}).items():
        value = baseline.get("test_accuracy", baseline.get("test_accuracy_mean"))
        lines.append(f"- Baseline {name.replace('_', ' ')}: test accuracy {fmt(value)}")
    lines += ["", configuration_section(run_dir, ("prompt_opt",))]
    return "\n".join(lines)
