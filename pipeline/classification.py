"""Labelled text-classification data for prompt optimization: load a dataset, map its labels to an ordered list of
class names, and sample RLPrompt's few-shot train and dev sets (k examples per class, seeded) from the training split.

The test set is the dataset's evaluation split as :func:`pipeline.datasets.load_raw` picks it (``eval_dataset_name``,
else the ``dataset_test_split``, else a held-out fraction of the training rows).
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence
from dataclasses import dataclass

from datasets import ClassLabel, Dataset

from pipeline.config import DataArguments
from pipeline.datasets import load_raw, load_rows
from pipeline.errors import PipelineError


@dataclass
class LabelledTexts:
    """Texts with their class indices (into the class names they were loaded with)."""

    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class ClassificationData:
    """The class names (in verbalizer order) and the few-shot train, few-shot dev and test sets."""

    class_names: list[str]
    train: LabelledTexts
    dev: LabelledTexts
    test: LabelledTexts


def load_classification_data(
    args: DataArguments,
    class_names: Sequence[str],
    shots: int = 16,
    seed: int = 0,
    text_column: str = "text",
    label_column: str = "label",
) -> ClassificationData:
    """Load ``args``' dataset (``column_mapping`` applied first) and sample ``shots`` examples per class for train
    and another ``shots`` per class for dev from its training split; the whole evaluation split is the test set.

    Labels may be class names or integer indices into ``class_names`` (a ``ClassLabel`` column's integers are read
    as its names).
    """
    class_names = list(class_names)
    if len(class_names) < 2 or len(set(class_names)) != len(class_names):
        raise PipelineError(f"class names {class_names!r}: give at least two distinct classes, one per verbalizer")
    if shots < 1:
        raise PipelineError(f"shots must be at least 1 example per class, got {shots}")
    train_rows, test_rows = load_raw(args)
    pool = labelled_texts(train_rows, class_names, text_column, label_column, f"{args.dataset_name} (training split)")
    test_source = args.eval_dataset_name or f"{args.dataset_name} (evaluation split)"
    test = labelled_texts(test_rows, class_names, text_column, label_column, test_source)
    train, dev = few_shot_split(pool, class_names, shots, seed, f"{args.dataset_name} (training split)")
    return ClassificationData(class_names, train, dev, test)


def labelled_texts(
    rows: Dataset, class_names: Sequence[str], text_column: str, label_column: str, source: str
) -> LabelledTexts:
    """The texts and class indices of ``rows``; errors name ``source``, the row (0-based) and the column."""
    for column, option in ((text_column, "text_column"), (label_column, "label_column")):
        if column not in rows.column_names:
            raise PipelineError(
                f"{source} has no column '{column}' (its columns: {', '.join(rows.column_names)}); set {option} or "
                'rename a column with column_mapping, e.g. \'{"sentence": "text"}\''
            )
    feature = rows.features[label_column]
    names = feature.names if isinstance(feature, ClassLabel) else None
    texts, labels = [], []
    for number, (text, label) in enumerate(zip(rows[text_column], rows[label_column], strict=True)):
        if not isinstance(text, str) or not text.strip():
            raise PipelineError(f"{source}, row {number}, column '{text_column}' is empty or not text")
        texts.append(text)
        if names and isinstance(label, int) and 0 <= label < len(names):
            label = names[label]
        labels.append(_class_index(label, class_names, f"{source}, row {number}"))
    return LabelledTexts(texts, labels)


def _class_index(label: object, class_names: Sequence[str], where: str) -> int:
    if isinstance(label, str):
        if label not in class_names:
            raise PipelineError(
                f"{where}: label '{label}' has no verbalizer (classes: {', '.join(class_names)}); add a verbalizer "
                "for it, or drop those rows"
            )
        return class_names.index(label)
    if isinstance(label, int) and not isinstance(label, bool):
        if not 0 <= label < len(class_names):
            raise PipelineError(
                f"{where}: label {label} has no verbalizer: integer labels index the {len(class_names)} classes "
                f"({', '.join(class_names)}), 0..{len(class_names) - 1}"
            )
        return label
    raise PipelineError(f"{where}: label {label!r} should be a class name or an integer class index")


def few_shot_split(
    pool: LabelledTexts, class_names: Sequence[str], shots: int, seed: int, source: str
) -> tuple[LabelledTexts, LabelledTexts]:
    """Disjoint train and dev sets of ``shots`` examples per class drawn from ``pool`` with ``seed``."""
    by_class: dict[int, list[int]] = {index: [] for index in range(len(class_names))}
    for row, label in enumerate(pool.labels):
        by_class[label].append(row)
    present = [class_names[index] for index, rows in by_class.items() if rows]
    if len(present) < 2:
        raise PipelineError(
            f"{source} has only one class ({', '.join(present)}) among its labels; a classifier needs examples of at "
            "least two classes"
        )
    short = [f"'{class_names[index]}' has {len(rows)}" for index, rows in by_class.items() if len(rows) < 2 * shots]
    if short:
        raise PipelineError(
            f"{source}: class {', '.join(short)} examples, fewer than the {2 * shots} needed ({shots} for train and "
            f"{shots} for dev); lower shots or add examples"
        )
    rng = random.Random(seed)
    train_rows, dev_rows = [], []
    for rows in by_class.values():
        chosen = rng.sample(rows, 2 * shots)
        train_rows += chosen[:shots]
        dev_rows += chosen[shots:]
    rng.shuffle(train_rows)
    rng.shuffle(dev_rows)
    return _select(pool, train_rows), _select(pool, dev_rows)


def _select(pool: LabelledTexts, rows: list[int]) -> LabelledTexts:
    return LabelledTexts([pool.texts[row] for row in rows], [pool.labels[row] for row in rows])


def file_command_parser(prog: str, description: str, output_help: str) -> argparse.ArgumentParser:
    """The arguments of a prompt stage's file-in, predictions-out command (the run, the input file and its
    columns, the output); the command adds its own."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--run", default="demo")
    parser.add_argument("--runs_dir", default="runs")
    parser.add_argument("--input", required=True, help="a .jsonl/.json/.csv/.parquet file or a hub dataset id")
    parser.add_argument("--text_column", default=None, help="default: the run's text column")
    parser.add_argument("--label_column", default="label", help="used for accuracy when the file has it")
    parser.add_argument("--output", default=None, help=output_help)
    return parser


def read_queries(
    path: str, text_column: str, label_column: str, class_names: Sequence[str]
) -> tuple[list[str], list[int] | None]:
    """The texts of a file to classify, and their class indices when the file has ``label_column``."""
    rows = load_rows(path)
    if text_column not in rows.column_names:
        raise PipelineError(f"{path} has no column '{text_column}' (columns: {rows.column_names}); set --text_column")
    labels = None
    if label_column in rows.column_names:
        labels = labelled_texts(rows, class_names, text_column, label_column, path).labels
    return list(rows[text_column]), labels


def accuracy_note(predictions: Sequence[str], labels: list[int] | None, class_names: Sequence[str]) -> str:
    """'; accuracy A (hits/n)' for predicted class names against class indices, or '' without labels."""
    if labels is None:
        return ""
    hits = sum(class_names[label] == prediction for label, prediction in zip(labels, predictions, strict=True))
    return f"; accuracy {hits / len(labels):.3f} ({hits}/{len(labels)})"
