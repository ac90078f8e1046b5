"""Labelled classification data (pipeline/classification.py): labels as names, integers or ClassLabel features
mapped to the ordered class names; seeded few-shot train/dev sets of k per class; errors naming what to fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import ClassLabel, Dataset, Features, Value

from pipeline.classification import load_classification_data
from pipeline.config import DataArguments
from pipeline.errors import PipelineError

CLASSES = ["negative", "positive"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def rows(per_class: int, labels=CLASSES, prefix: str = "train") -> list[dict]:
    return [{"text": f"{prefix} {label} {i}", "label": label} for i in range(per_class) for label in labels]


@pytest.fixture
def folder(tmp_path) -> Path:
    write_jsonl(tmp_path / "data" / "train.jsonl", rows(20))
    write_jsonl(tmp_path / "data" / "test.jsonl", rows(7, prefix="test"))
    return tmp_path / "data"


def load(folder: Path, **options):
    mapping = options.pop("column_mapping", None)
    return load_classification_data(DataArguments(dataset_name=str(folder), column_mapping=mapping), CLASSES, **options)


def test_few_shot_train_and_dev_have_k_per_class_are_disjoint_and_seeded(folder):
    data = load(folder, shots=8, seed=3)
    assert data.class_names == CLASSES
    for split in (data.train, data.dev):
        assert len(split) == 16 and sorted(split.labels) == [0] * 8 + [1] * 8
        assert all(text.split()[1] == CLASSES[label] for text, label in zip(split.texts, split.labels, strict=True))
    assert not set(data.train.texts) & set(data.dev.texts)
    assert len(data.test) == 14 and all(text.startswith("test") for text in data.test.texts)
    assert load(folder, shots=8, seed=3) == data
    assert load(folder, shots=8, seed=4).train.texts != data.train.texts


def test_integer_labels_and_a_column_mapping(tmp_path):
    source = [{"sentence": row["text"], "y": CLASSES.index(row["label"])} for row in rows(4)]
    write_jsonl(tmp_path / "train.jsonl", source)
    data = load_classification_data(
        DataArguments(
            dataset_name=str(tmp_path / "train.jsonl"),
            eval_dataset_name=str(tmp_path / "train.jsonl"),
            column_mapping={"sentence": "text", "y": "label"},
        ),
        CLASSES,
        shots=2,
    )
    assert all(text.split()[1] == CLASSES[label] for text, label in zip(data.test.texts, data.test.labels, strict=True))


def test_a_class_label_column_is_read_by_its_names(tmp_path):
    features = Features({"text": Value("string"), "label": ClassLabel(names=["positive", "negative"])})
    source = rows(4)
    dataset = Dataset.from_dict(
        {
            "text": [row["text"] for row in source],
            "label": [["positive", "negative"].index(row["label"]) for row in source],
        },
        features=features,
    )
    (tmp_path / "data").mkdir()
    dataset.to_parquet(str(tmp_path / "data" / "train.parquet"))
    dataset.to_parquet(str(tmp_path / "data" / "test.parquet"))
    data = load(tmp_path / "data", shots=2)
    # stored 0 means "positive" here, which is class 1 of CLASSES
    assert all(text.split()[1] == CLASSES[label] for text, label in zip(data.test.texts, data.test.labels, strict=True))


@pytest.mark.parametrize(
    ("train", "options", "expected"),
    [
        (rows(40, ["positive"]), {}, r"has only one class \(positive\) among its labels"),
        (
            rows(40) + rows(5, ["negative"], "more"),
            {"shots": 25},
            "class 'negative' has 45, 'positive' has 40 examples",
        ),
        (rows(20), {"shots": 11}, "fewer than the 22 needed \\(11 for train and 11 for dev\\); lower shots"),
        (rows(20) + [{"text": "x", "label": "neutral"}], {}, "row 40: label 'neutral' has no verbalizer"),
        (rows(20) + [{"text": "x", "label": 2}], {}, "label 2 has no verbalizer: integer labels index the 2 classes"),
        (rows(20) + [{"text": " ", "label": "negative"}], {}, "row 40, column 'text' is empty"),
        ([{"sentence": "x", "label": "negative"}], {}, "has no column 'text' .* set text_column or rename"),
        ([{"text": "x", "stars": 1}], {}, "has no column 'label' .* set label_column"),
        (rows(20), {"shots": 0}, "shots must be at least 1"),
    ],
)
def test_bad_data_is_refused_with_what_to_do(tmp_path, train, options, expected):
    folder = tmp_path / "data"
    write_jsonl(folder / "train.jsonl", train)
    write_jsonl(folder / "test.jsonl", rows(2, prefix="test"))
    with pytest.raises(PipelineError, match=expected):
        load(folder, **options)


def test_the_class_names_need_two_distinct_classes(folder):
    for names in (["positive"], ["positive", "positive"]):
        with pytest.raises(PipelineError, match="at least two distinct classes"):
            load_classification_data(DataArguments(dataset_name=str(folder)), names)
