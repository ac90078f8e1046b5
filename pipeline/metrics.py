"""Metrics on disk: ``metrics.jsonl`` (one JSON object per logged step) and the plots a person looks at."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from transformers import TrainerCallback

from pipeline.runs import METRICS


class JsonlMetricsCallback(TrainerCallback):
    """Append every ``Trainer.log`` call to ``<folder>/metrics.jsonl`` (main process only)."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / METRICS

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: D102 (TrainerCallback hook)
        if state.is_world_process_zero and logs:
            append_metrics(self.path, {"step": state.global_step, "epoch": state.epoch, **logs})


def append_metrics(path: Path, record: Mapping[str, object]) -> None:
    """Append one record as a JSON line."""
    with open(path, "a") as handle:
        handle.write(json.dumps(record, default=float) + "\n")


def read_metrics(path: Path) -> list[dict]:
    """All records of a ``metrics.jsonl`` file (empty list when it does not exist)."""
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _series(records: Iterable[dict], key: str, x_key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for record in records:
        value = record.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value) and x_key in record:
            xs.append(record[x_key])
            ys.append(value)
    return xs, ys


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: Path) -> Path:
    """Lay out ``figure``, save it as ``path`` (folders created) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot().close(figure)
    return path


def plot_curves(
    records: Sequence[dict], out_dir: Path, panels: Mapping[str, Sequence[str]], x_key: str = "step"
) -> list[Path]:
    """One PNG per panel (``{file stem: [metric keys]}``) with each key's curve against ``x_key``.

    Panels whose keys never appear are skipped; returns the files written.
    """
    plt = pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, keys in panels.items():
        curves = {key: _series(records, key, x_key) for key in keys}
        curves = {key: xy for key, xy in curves.items() if xy[0]}
        if not curves:
            continue
        figure, axis = plt.subplots(figsize=(6, 4))
        for key, (xs, ys) in curves.items():
            axis.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=key)
        axis.set_xlabel(x_key)
        axis.set_title(stem.replace("_", " "))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        written.append(save_figure(figure, out_dir / f"{stem}.png"))
    return written


def plot_histograms(samples: Mapping[str, Sequence[float]], path: Path, title: str, xlabel: str) -> Path:
    """Overlaid histograms of named samples (e.g. rewards of chosen vs rejected completions)."""
    figure, axis = pyplot().subplots(figsize=(6, 4))
    for name, values in samples.items():
        axis.hist(list(values), bins=40, alpha=0.5, label=name)
    axis.set_xlabel(xlabel)
    axis.set_ylabel("count")
    axis.set_title(title)
    axis.legend()
    return save_figure(figure, path)


def plot_reliability(bins: Sequence[Mapping], path: Path, title: str) -> Path:
    """A reliability diagram: each bin's accuracy against its mean confidence, labelled with its count; a
    calibrated model lies on the diagonal."""
    figure, axis = pyplot().subplots(figsize=(5, 5))
    axis.plot([0.5, 1], [0.5, 1], color="grey", linestyle="--", label="calibrated")
    xs, ys = [row["mean_confidence"] for row in bins], [row["accuracy"] for row in bins]
    axis.plot(xs, ys, marker="o", label="reward model")
    for x, y, row in zip(xs, ys, bins, strict=True):
        axis.annotate(str(row["count"]), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    axis.set_xlabel("confidence in the favoured completion")
    axis.set_ylabel("fraction where it is the labelled winner")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return save_figure(figure, path)


def plot_bucket_accuracy(panels: Mapping[str, Sequence[Mapping]], path: Path, overall: float) -> Path:
    """Accuracy per bucket, one panel per bucketing (``{title: [{low, high, count, accuracy}]}``); each bar is
    labelled with its bucket's range and count, the dashed line is the overall accuracy."""
    figure, axes = pyplot().subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for axis, (title, buckets) in zip(axes[0], panels.items(), strict=True):
        labels = [f"{row['low']:.2g}..{row['high']:.2g}\nn={row['count']}" for row in buckets]
        axis.bar(range(len(buckets)), [row["accuracy"] for row in buckets])
        axis.axhline(overall, color="grey", linestyle="--", label=f"overall {overall:.3f}")
        axis.set_xticks(range(len(buckets)), labels, fontsize=7)
        axis.set_ylim(0, 1)
        axis.set_ylabel("pairwise accuracy")
        axis.set_title(title, fontsize=9)
        axis.legend(fontsize=8)
    return save_figure(figure, path)


def plot_scatter(
    samples: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: Path, title: str, xlabel: str, ylabel: str
) -> Path:
    """Named point clouds ``{name: (xs, ys)}`` on one plot."""
    figure, axis = pyplot().subplots(figsize=(6, 4))
    for name, (xs, ys) in samples.items():
        axis.scatter(list(xs), list(ys), s=6, alpha=0.4, label=name)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.legend()
    return save_figure(figure, path)
