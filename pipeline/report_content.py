"""What a run's report shows, independent of how it is rendered: one section per stage folder that holds a
``summary.json`` (the known stages in pipeline order, any other after them), each with its headline figures, the
tables specific to its stage, every plot in its ``plots/`` and its configuration from ``manifest.json``.

Stage folders are read as the run-folder contract describes them; a stage that is absent or incomplete gets a line
saying how to produce it, and a file that cannot be read becomes a note in its section instead of an error.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.metrics import read_metrics
from pipeline.runs import MANIFEST, SUMMARY, read_json

# The pipeline's stages in the order a person reads them, with what each answers; others follow alphabetically.
STAGES = {
    "sft": "Supervised fine-tuning of the policy on demonstrations (TRL SFTTrainer).",
    "rm": "A pairwise (Bradley-Terry) reward model on preference pairs. Is the reward model any good? Its held-out "
    "accuracy, calibration and what its score follows.",
    "ppo": "PPO against the reward sources with a KL penalty to the SFT policy; a gold scorer, where configured, is "
    "logged but never optimized.",
    "eval": "The policies compared on held-out prompts under the proxy and gold scorers. Is PPO improving the model "
    "or hacking the reward?",
    "prompt_opt": "Prompt optimization (RLPrompt): a short discrete prompt learned for a frozen task model.",
    "prompt_edit": "Test-time prompt editing (TEMPERA): a policy edits the prompt for each query.",
}
# The headline figures of each stage's summary.json, in the order a person reads them; other stages show every
# top-level number of their summary.
HEADLINES = {
    "sft": ("initial_eval_loss", "eval_loss", "eval_perplexity", "train_loss"),
    "rm": ("eval_accuracy", "eval_accuracy_ci95", "eval_calibration_error", "eval_margin", "train_loss"),
    "ppo": ("reference_score", "score", "reference_gold_score", "gold_score", "kl", "updates", "episodes_per_second"),
    "eval": (
        "compared_policy",
        "reference_policy",
        "headline_decoding",
        "gold_win_rate",
        "gold_win_rate_ci",
        "proxy_win_rate",
        "proxy_win_rate_ci",
        "kl",
    ),
    "prompt_opt": ("algorithm", "test_accuracy", "updates"),
    "prompt_edit": ("test_accuracy", "mean_edits", "updates"),
}
SAMPLE_ROWS = 8
MAKE_TARGETS = ("sft", "rm", "ppo", "eval")


@dataclass
class Table:
    """A table of already formatted cells."""

    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""


@dataclass
class Figure:
    """A PNG file and its caption."""

    path: Path
    caption: str


@dataclass
class Section:
    """One stage of the run."""

    name: str
    description: str
    complete: bool
    blocks: list[Table | Figure | str] = field(default_factory=list)  # a str is a paragraph
    config: dict[str, Any] = field(default_factory=dict)  # the manifest, for the configuration part
    hint: str = ""  # how to produce an absent stage


def fmt(value: Any) -> str:
    """A value as a person reads it: 4 significant digits, lists in brackets, nothing for None."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def mean_pm(figures: dict | None, digits: int = 3) -> str:
    """``mean ± std`` of a ``pipeline.stats.describe`` result."""
    if not figures:
        return ""
    spread = figures.get("std")
    if spread is None or (isinstance(spread, float) and math.isnan(spread)):
        return f"{figures['mean']:.{digits}f}"
    return f"{figures['mean']:.{digits}f} ± {spread:.{digits}f}"


def interval(low: float, high: float, digits: int = 3) -> str:
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def text_of(value: Any) -> str:
    """A prompt or completion as text: a chat conversation's messages as 'role: content' lines."""
    if isinstance(value, list):
        return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in value if isinstance(m, dict))
    return str(value)


def stage_command(argv: list[str]) -> str:
    """The command line a stage ran with, as ``python -m stages.<name> ...`` (its manifest records ``sys.argv``,
    whose first item is the path of the module's file)."""
    if not argv:
        return ""
    path = Path(argv[0])
    parts = path.with_suffix("").parts
    if "stages" in parts:
        module = ".".join(parts[parts.index("stages") :]).removesuffix(".__main__")
        return shlex.join(["python", "-m", module, *argv[1:]])
    return shlex.join(argv)


# ----- the sections -----------------------------------------------------------------------------------------------


def stage_names(run_dir: Path) -> list[str]:
    """The known stages, then every other folder of the run that holds a summary.json, alphabetically."""
    others = sorted(
        path.name
        for path in run_dir.iterdir()
        if path.is_dir() and not path.name.startswith(".") and path.name not in STAGES and (path / SUMMARY).is_file()
    )
    return [*STAGES, *others]


def run_sections(runs_dir: Path, run: str) -> list[Section]:
    """Every stage of the run, complete or not (unknown stages only when complete)."""
    run_dir = Path(runs_dir) / run
    if not run_dir.is_dir():
        raise PipelineError(f"run '{run}' does not exist in {runs_dir}: run a stage first (e.g. `make sft RUN={run}`)")
    return [stage_section(run_dir, name) for name in stage_names(run_dir)]


def stage_section(run_dir: Path, name: str) -> Section:
    """The section of stage ``name``; one whose files cannot be read says so instead of failing the report."""
    folder = run_dir / name
    section = Section(name, STAGES.get(name, ""), (folder / SUMMARY).is_file())
    if not section.complete:
        partial = (run_dir / f".{name}.partial").exists()
        how = f"`make {name} RUN={run_dir.name}`" if name in MAKE_TARGETS else f"`python -m stages.{name}`"
        section.hint = ("running, or stopped before it finished: " if partial else "not run: ") + how
        return section
    try:
        summary = read_json(folder / SUMMARY)
        if (folder / MANIFEST).is_file():
            section.config = read_json(folder / MANIFEST)
        section.blocks.append(headline_table(name, summary))
        section.blocks.extend(SPECIFIC.get(name, lambda folder, summary: [])(folder, summary))
    except (OSError, ValueError, KeyError, TypeError, IndexError, PipelineError) as error:
        section.blocks.append(f"Part of this stage's files could not be read ({type(error).__name__}: {error}).")
    section.blocks.extend(Figure(png, png.stem.replace("_", " ")) for png in sorted((folder / "plots").glob("*.png")))
    return section


def headline_table(name: str, summary: dict) -> Table:
    """The stage's headline figures (its known keys, or every top-level number or text of an unknown stage)."""
    keys = HEADLINES.get(name) or [
        key for key, value in summary.items() if isinstance(value, (int, float, str, bool)) and value is not None
    ]
    rows = [[key, fmt(summary[key])] for key in keys if summary.get(key) is not None]
    return Table("Headline figures", ["figure", "value"], rows)


def rm_tables(folder: Path, summary: dict) -> list[Table | str]:
    """Held-out diagnostics: calibration bins, accuracy by margin, length correlation, warnings."""
    diagnostics = summary.get("diagnostics")
    if not diagnostics:
        return []
    blocks: list[Table | str] = []
    low, high = diagnostics["accuracy_ci95"]
    text = (
        f"Pairwise accuracy on {diagnostics['pairs']} held-out pairs: {diagnostics['accuracy']:.3f} (95% Wilson "
        f"interval {low:.3f}-{high:.3f})"
    )
    if "true_order_accuracy" in diagnostics:
        text += f"; against the true order of the pairs (the gold judge's): {diagnostics['true_order_accuracy']:.3f}"
    blocks.append(text + ".")
    calibration = diagnostics["calibration"]
    blocks.append(
        Table(
            "Calibration: confidence in the favoured completion against how often it is the labelled winner",
            ["confidence bin", "pairs", "mean confidence", "accuracy"],
            [
                [
                    interval(b["low"], b["high"], 2),
                    str(b["count"]),
                    f"{b['mean_confidence']:.3f}",
                    f"{b['accuracy']:.3f}",
                ]
                for b in calibration["bins"]
            ],
            note=f"expected calibration error {calibration['ece']:.3f}",
        )
    )
    for key, title in (
        ("accuracy_by_predicted_margin", "Accuracy by predicted margin |r_chosen - r_rejected|"),
        ("accuracy_by_true_margin", "Accuracy by true margin"),
    ):
        if key in diagnostics:
            rows = [[interval(b["low"], b["high"]), str(b["count"]), f"{b['accuracy']:.3f}"] for b in diagnostics[key]]
            blocks.append(Table(title, ["margin", "pairs", "accuracy"], rows))
    length = diagnostics.get("length_correlation", {})
    if length.get("pearson") is not None:
        blocks.append(
            f"Score against completion length ({length['unit']}): Pearson {length['pearson']:+.3f}, Spearman "
            f"{length['spearman']:+.3f}."
        )
    blocks.extend(f"Warning: {warning}" for warning in summary.get("warnings", []))
    return blocks


def ppo_tables(folder: Path, summary: dict) -> list[Table | str]:
    """The held-out comparison the stage made, its layout, and the last sampled completions."""
    blocks: list[Table | str] = []
    evaluation = summary.get("evaluation")
    if evaluation:
        rows = []
        for key in ("score", "gold_score", "kl", "response_length", "eos_rate"):
            cells = []
            for side in ("reference", "policy"):
                figures = evaluation.get(side, {})
                cells.append(
                    f"{figures[key]:.3f} ± {figures[f'{key}_stderr']:.3f}" if figures.get(key) is not None else ""
                )
            if any(cells):
                rows.append([key, *cells])
        blocks.append(
            Table(
                f"Held-out comparison on {evaluation['num_prompts']} prompts (mean ± standard error)",
                ["", "reference (SFT)", "policy (PPO)"],
                rows,
            )
        )
    layout = [
        "lora",
        "value_model",
        "value_adapter_layers",
        "reward_on_policy_base",
        "critic_from_reward_model",
        "reward_not_on_policy_base",
        "peak_memory_mb",
    ]
    blocks.append(Table("Layout", ["setting", "value"], [[key, fmt(summary[key])] for key in layout if key in summary]))
    samples = read_metrics(folder / "samples.jsonl")
    if samples:
        last = max(row["update"] for row in samples)
        shown = [row for row in samples if row["update"] == last][:SAMPLE_ROWS]
        gold = any("gold_score" in row for row in shown)
        blocks.append(
            Table(
                f"Sampled completions at update {last}",
                ["prompt", "completion", "score", *(["gold score"] if gold else [])],
                [
                    [text_of(r["prompt"]), r["completion"], f"{r['score']:+.3f}"]
                    + ([fmt(r.get("gold_score"))] if gold else [])
                    for r in shown
                ],
            )
        )
    snapshots = sorted((folder / "snapshots").glob("update-*"), key=lambda p: int(p.name.split("-")[1]))
    if snapshots:
        updates = ", ".join(p.name.split("-")[1] for p in snapshots)
        blocks.append(f"Policy snapshots kept for the over-optimization curve (`make eval`): updates {updates}.")
    return blocks


def eval_tables(folder: Path, summary: dict) -> list[Table | str]:
    """Per decoding: each policy's scores, win rates with intervals, KL, length and EOS rate; the over-optimization
    curve's points; sample completions side by side."""
    blocks: list[Table | str] = []
    roles, reference = summary["scorers"], summary["reference"]
    level = f"{round(summary['confidence'] * 100)}%"
    sampling = summary.get("sampling", {})
    blocks.append(
        f"{summary['num_prompts']} held-out prompts; sampled at temperature {fmt(sampling.get('temperature'))} "
        f"(no top-k / top-p), up to {fmt(sampling.get('response_length'))} tokens; reference policy: {reference}. "
        f"Win rate: the share of prompts where the policy's response scores above the reference's, ties counting "
        f"half, with a {level} bootstrap interval over prompts. KL: log pi(y) - log pi_ref(y) per response, "
        "averaged over the policy's sampled responses."
    )
    for decoding, section in summary["decodings"].items():
        scorer_columns = [f"{scorer} ({role})" for scorer, role in roles.items()]
        header = ["policy", *scorer_columns, *[f"win rate: {s}" for s in roles], "KL", "length", "EOS rate"]
        rows = []
        for name, figures in section["policies"].items():
            duels = figures.get("win_rate", {})
            rows.append(
                [
                    name + (" (reference)" if name == reference else ""),
                    *[mean_pm(figures["scores"].get(scorer)) for scorer in roles],
                    *[f"{duels[s]['win_rate']:.3f} {interval(*duels[s]['ci'])}" if s in duels else "" for s in roles],
                    mean_pm(figures.get("kl"), 2),
                    mean_pm(figures["length"], 1),
                    f"{figures['eos_rate']:.3f}",
                ]
            )
        blocks.append(Table(f"{decoding.capitalize()} decoding (mean ± standard deviation)", header, rows))
    curve = summary.get("overoptimization")
    if curve:
        blocks.extend(overoptimization_blocks(curve))
    samples = read_metrics(folder / "samples.jsonl")
    if samples:
        decoding = samples[0]["decoding"]
        shown = [row for row in samples if row["decoding"] == decoding][:SAMPLE_ROWS]
        policies = list(shown[0]["completions"])
        blocks.append(
            Table(
                f"Sample completions ({decoding} decoding; scores: {', '.join(roles)})",
                ["prompt", *policies],
                [
                    [text_of(row["prompt"])]
                    + [
                        f"{text_of(row['completions'][p])}\n["
                        + ", ".join(f"{row['scores'][p][s]:+.3f}" for s in roles)
                        + "]"
                        for p in policies
                    ]
                    for row in shown
                ],
                note="every prompt and decoding is in samples.jsonl",
            )
        )
    return blocks


def overoptimization_blocks(curve: dict) -> list[Table | str]:
    """The over-optimization points and what they show."""
    gold = curve.get("gold")
    header = ["update", "KL", "sqrt(KL)", f"proxy: {curve['proxy']}", *([f"gold: {gold}"] if gold else [])]
    rows = []
    if "start" in curve:
        start = curve["start"]
        rows.append(
            [f"0 ({curve.get('kl_to', 'reference')})", "0", "0", f"{start['proxy']:.3f}"]
            + ([f"{start['gold']:.3f}"] if gold else [])
        )
    for point in curve["points"]:
        rows.append(
            [
                str(point["update"]),
                f"{point['kl']:.2f}",
                f"{point['sqrt_kl']:.2f}",
                f"{point['proxy']:.3f} ± {point['proxy_stderr']:.3f}",
                *([f"{point['gold']:.3f} ± {point['gold_stderr']:.3f}"] if gold else []),
            ]
        )
    blocks: list[Table | str] = [
        Table(
            f"Over-optimization: one point per PPO snapshot, {curve.get('prompts', '')} prompts each "
            "(mean ± standard error)",
            header,
            rows,
        )
    ]
    if gold and "best_gold_update" in curve:
        finding = (
            f"The gold score peaked at update {curve['best_gold_update']} (sqrt KL {curve['best_gold_sqrt_kl']:.2f}, "
            f"gold {curve['best_gold']:.3f}) and "
        )
        if curve["gold_turned_down"]:
            finding += f"turned down after it, by {curve['gold_drop_after_peak']:.3f} at the last snapshot"
            finding += ", while the proxy still rose." if curve["proxy_rose_after_gold_peak"] else "."
        else:
            finding += "did not turn down after it (no drop beyond two standard errors by the last snapshot)."
        blocks.append(finding)
    return blocks


def prompt_opt_tables(folder: Path, summary: dict) -> list[Table | str]:
    """The prompt found, its test accuracy against the baselines, the task, the candidate prompts."""
    selected = summary["selected_prompt"]
    baselines = summary.get("baselines", {})
    blocks: list[Table | str] = [
        Table(
            "Selected prompt (chosen on dev)",
            ["prompt", "train reward", "dev accuracy", "test accuracy"],
            [
                [
                    repr(selected["text"]),
                    fmt(selected.get("train_reward")),
                    fmt(selected.get("dev_accuracy")),
                    fmt(selected.get("test_accuracy")),
                ]
            ],
        )
    ]
    rows = [["learned prompt", repr(selected["text"]), fmt(summary.get("test_accuracy"))]]
    rows.extend(baseline_rows(baselines))
    blocks.append(Table("Test accuracy against the baselines", ["prompt", "text", "test accuracy"], rows))
    task = summary.get("task", {})
    if task:
        shown = ("task_model", "kind", "template", "verbalizers", "classes")
        blocks.append(Table("Task", ["setting", "value"], [[key, fmt(task.get(key))] for key in shown if key in task]))
    candidates = read_metrics(folder / "prompts.jsonl")
    if candidates:
        blocks.append(
            Table(
                "Candidate prompts",
                ["prompt", "train reward", "times sampled", "dev accuracy"],
                [
                    [
                        repr(c.get("text")),
                        fmt(c.get("train_reward")),
                        fmt(c.get("times_sampled")),
                        fmt(c.get("dev_accuracy")),
                    ]
                    for c in candidates[: 2 * SAMPLE_ROWS]
                ],
            )
        )
    return blocks


def baseline_rows(baselines: dict) -> list[list[str]]:
    """[name, prompt, test accuracy] of each baseline of a prompt stage's summary: a baseline with a mean over
    draws shows its ``description`` (or its count of random prompts), one that could not be measured says why."""
    rows = []
    for name, baseline in baselines.items():
        if "absent" in baseline:
            text, value = f"absent: {baseline['absent']}", ""
        elif "test_accuracy_mean" in baseline:
            text = baseline.get("description") or f"{baseline.get('count', '')} random prompts"
            value = f"{baseline['test_accuracy_mean']:.4g} ± {baseline.get('test_accuracy_std', 0):.2g}"
        else:
            text, value = repr(baseline.get("prompt", "")), fmt(baseline.get("test_accuracy"))
        rows.append([name.replace("_", " "), text, value])
    return rows


def prompt_edit_tables(folder: Path, summary: dict) -> list[Table | str]:
    """Test accuracy against the baselines, and the edits made for the first test queries."""
    blocks: list[Table | str] = []
    edits = f"{fmt(summary.get('mean_edits'))} edits per query" if "mean_edits" in summary else ""
    rows = [
        ["edited per query", edits, fmt(summary.get("test_accuracy"))],
        *baseline_rows(summary.get("baselines", {})),
    ]
    blocks.append(Table("Test accuracy against the baselines", ["prompt", "text", "test accuracy"], rows))
    kinds = summary.get("edit_kinds")
    if kinds:
        shares = {**kinds, **summary.get("edit_operations", {})}
        table = [[name, fmt(share)] for name, share in shares.items()]
        blocks.append(Table("Edits the policy chose (share of all edits)", ["edit", "share"], table))
    sequences = summary.get("sequences")
    if sequences:
        blocks.append(
            f"{sequences.get('distinct')} distinct edit sequences over the test queries; the most common, on "
            f"{fmt(sequences.get('most_common_share'))} of them: {fmt(sequences.get('most_common'))}"
        )
    edit_rows = read_metrics(folder / "edits.jsonl")
    if edit_rows:
        blocks.append(
            Table(
                "Sample edits of test queries",
                ["query", "initial prompt", "edits (action -> score after)", "final prompt", "prediction / label"],
                [
                    [
                        str(e.get("query", "")),
                        str(e.get("initial_prompt", "")),
                        "\n".join(
                            f"{a.get('action')}{' (no change)' if a.get('changed') is False else ''} -> "
                            f"{fmt(a.get('score_after'))}"
                            for a in e.get("edits", [])
                        ),
                        str(e.get("final_prompt", "")),
                        f"{e.get('prediction')} / {e.get('label')}",
                    ]
                    for e in edit_rows[:SAMPLE_ROWS]
                ],
            )
        )
    return blocks


SPECIFIC: dict[str, Callable[[Path, dict], list[Table | str]]] = {
    "rm": rm_tables,
    "ppo": ppo_tables,
    "eval": eval_tables,
    "prompt_opt": prompt_opt_tables,
    "prompt_edit": prompt_edit_tables,
}
