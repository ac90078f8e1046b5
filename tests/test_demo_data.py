"""The demo data generator (data/generate.py) and its gold judge (reward_models/vader.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from data import generate
from pipeline.errors import PipelineError
from reward_models.vader import vader_reward

SHIPPED = Path(__file__).resolve().parent.parent / "data" / "demo"
COLUMNS = {
    "sft": {"prompt", "completion"},
    "prefs": {"prompt", "chosen", "rejected", "gold_chosen", "gold_rejected"},
    "prompts": {"prompt"},
}
SMALL = {"sft_train": 60, "sft_eval": 20, "prefs_train": 80, "prefs_eval": 20, "prompts_train": 30, "prompts_eval": 10}


def read_rows(folder: Path, name: str) -> list[dict]:
    with open(folder / f"{name}.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    """A generation with the default arguments, as `python -m data.generate` makes it."""
    out = tmp_path_factory.mktemp("demo")
    generate.main(["--out", str(out)])
    return out


def test_vader_scores_positive_above_negative():
    scores = vader_reward(
        ["Review:"] * 3,
        [" The staff were wonderful and the room was lovely.", " It arrived on Tuesday.", " A terrible, dirty hotel."],
    )
    assert len(scores) == 3 and all(isinstance(score, float) for score in scores)
    assert scores[0] > 0.5 and scores[1] == 0.0 and scores[2] < -0.5


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        generate.generate_demo_data(tmp_path / name, seed=seed, sizes=SMALL)
    files = sorted(path.name for path in (tmp_path / "a").iterdir())
    assert files == sorted(f"{kind}_{split}.jsonl" for kind in COLUMNS for split in ("train", "eval"))
    for file in files:
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file
    assert (tmp_path / "a" / "sft_train.jsonl").read_bytes() != (tmp_path / "c" / "sft_train.jsonl").read_bytes()


def test_shipped_demo_data_equals_a_fresh_generation(fresh):
    shipped = sorted(path.name for path in SHIPPED.iterdir())
    assert shipped == sorted(path.name for path in fresh.iterdir()), "no temporary or extra files in data/demo"
    for name in shipped:
        assert (SHIPPED / name).read_bytes() == (fresh / name).read_bytes(), (
            f"data/demo/{name} differs from `python -m data.generate --out data/demo`: regenerate it, do not edit it"
        )
    assert sum(path.stat().st_size for path in SHIPPED.iterdir()) < 3.2e6


@pytest.mark.parametrize("name", list(generate.SIZES))
def test_columns_and_sizes(fresh, name):
    rows = read_rows(fresh, name)
    assert len(rows) == generate.SIZES[name]
    assert all(set(row) == COLUMNS[name.split("_")[0]] for row in rows)
    assert all(row["prompt"] and isinstance(row["prompt"], str) for row in rows)


def test_completions_are_spaced_plain_short_and_varied(fresh):
    sft = read_rows(fresh, "sft_train")
    prefs = read_rows(fresh, "prefs_train")
    texts = [row["completion"] for row in sft] + [row[side] for row in prefs for side in ("chosen", "rejected")]
    assert all(text.startswith(" ") and not text.startswith("  ") for text in texts)
    assert all(generate.MIN_WORDS <= len(text.split()) <= generate.MAX_WORDS for text in texts)
    assert not any("</s>" in text or "\n" in text for text in texts)
    words = {word.strip(".,;!?").lower() for text in texts for word in text.split()}
    assert len(words) > 400
    assert len(set(texts)) > 0.95 * len(texts)
    assert len({row["prompt"] for row in sft}) > 1000


def test_sft_sentiment_spans_the_range(fresh):
    rows = read_rows(fresh, "sft_train")
    scores = vader_reward([row["prompt"] for row in rows], [row["completion"] for row in rows])
    for low, high in ((-1.0, -0.6), (-0.6, -0.2), (-0.2, 0.2), (0.2, 0.6), (0.6, 1.0)):
        share = sum(low <= score <= high for score in scores) / len(scores)
        assert share > 0.08, f"only {share:.1%} of SFT completions score in [{low}, {high}]"


def test_preference_labels_follow_vader_with_the_configured_noise(fresh):
    rows = read_rows(fresh, "prefs_train")
    gold = vader_reward(
        [row["prompt"] for row in rows] * 2, [row["chosen"] for row in rows] + [row["rejected"] for row in rows]
    )
    assert gold == [row["gold_chosen"] for row in rows] + [row["gold_rejected"] for row in rows]
    assert all(abs(row["gold_chosen"] - row["gold_rejected"]) >= 0.1 for row in rows)
    flipped = [row["gold_chosen"] < row["gold_rejected"] for row in rows]
    assert abs(sum(flipped) / len(rows) - 0.1) < 0.04
    assert all(row["gold_chosen"] > row["gold_rejected"] for row, flip in zip(rows, flipped, strict=True) if not flip)


def test_label_noise_and_min_gap_options(tmp_path):
    generate.generate_demo_data(tmp_path, seed=3, label_noise=0.0, min_gap=0.5, sizes=SMALL)
    rows = read_rows(tmp_path, "prefs_train")
    assert len(rows) == SMALL["prefs_train"]
    assert all(row["gold_chosen"] - row["gold_rejected"] >= 0.5 for row in rows)
    generate.generate_demo_data(tmp_path, label_noise=1.0, sizes=SMALL)
    assert all(row["gold_chosen"] < row["gold_rejected"] for row in read_rows(tmp_path, "prefs_train"))
    with pytest.raises(PipelineError, match="label-noise"):
        generate.generate_demo_data(tmp_path, label_noise=1.5, sizes=SMALL)


@pytest.mark.parametrize("kind", list(COLUMNS))
def test_eval_is_held_out(fresh, kind):
    train, held_out = read_rows(fresh, f"{kind}_train"), read_rows(fresh, f"{kind}_eval")
    train_rows = {json.dumps(row, sort_keys=True) for row in train}
    assert not any(json.dumps(row, sort_keys=True) in train_rows for row in held_out)
    assert not {row["prompt"] for row in train} & {row["prompt"] for row in held_out}


def test_word_banks_agree_with_the_vader_lexicon():
    lexicon = SentimentIntensityAnalyzer().lexicon
    positive = generate.STRONG_POSITIVE + generate.MILD_POSITIVE + generate.PERSON_POSITIVE
    negative = generate.STRONG_NEGATIVE + generate.MILD_NEGATIVE + generate.PERSON_NEGATIVE
    positive += generate.POSITIVE_VERBS + generate.POSITIVE_FEELINGS + generate.POSITIVE_ADVERBS
    negative += generate.NEGATIVE_VERBS + generate.NEGATIVE_FEELINGS + generate.NEGATIVE_ADVERBS
    assert [word for word in positive if lexicon.get(word, 0) <= 0] == []
    assert [word for word in negative if lexicon.get(word, 0) >= 0] == []
    assert [word for word in generate.UNSCORED_ADJECTIVES if word in lexicon] == []


def test_prompts_and_items_are_neutral_to_the_judge():
    texts = sorted(
        {template.format(item=item) for _, _, item in generate.all_items() for template in generate.PROMPT_TEMPLATES}
    )
    assert [text for text, score in zip(texts, vader_reward(texts, texts), strict=True) if score != 0] == []


@pytest.mark.parametrize("sign", [1, -1, 0])
def test_each_sentence_kind_has_the_sentiment_it_is_written_for(sign):
    rng = random.Random(sign)
    kinds = generate.ReviewWriter.NEUTRAL_KINDS if sign == 0 else generate.ReviewWriter.OPINION_KINDS
    wrong = []
    # "Although"/"while"/"however" contrasts are mixed on purpose: VADER weighs only clauses after "but"
    for kind in sorted(set(kinds) - {"contrast"}):
        for domain in generate.DOMAINS:
            writer = generate.ReviewWriter(rng, domain, rng.choice(domain.nouns))
            texts = [getattr(writer, kind)(sign, strong) for strong in (False, True) for _ in range(40)]
            scores = vader_reward(texts, texts)
            wrong += [
                (text, score) for text, score in zip(texts, scores, strict=True) if (score > 0) - (score < 0) != sign
            ]
    assert wrong == []
