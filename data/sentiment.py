"""Generate the offline prompt-optimization demo's classification data: short reviews of places (hotels,
restaurants, cafes, museums, ...) written in bad weather, labelled negative or positive by VADER.

``python -m data.sentiment --out data/demo_sentiment [--seed 0]`` writes train.jsonl (the pool that few-shot train
and dev sets are sampled from) and test.jsonl, rows ``{"text", "label"}`` with label "negative" or "positive",
balanced. Reviews come from the demo generator's writer (data/generate.py), on disjoint train and test places; only
reviews whose VADER compound has the intended sign and a magnitude of at least MIN_COMPOUND are kept, so labels are
clear to the gold judge.

Every review also mentions the weather (one of WEATHER, before or after the review). VADER scores those sentences 0
and they say nothing about the place, but rain, fog and mud pull all-MiniLM-L6-v2's embedding of the whole review
towards " terrible": with the empty prompt it calls most positive reviews " terrible", while the sentiment is still
there to be read. That leaves room for a prompt to win back. Measured with ``python -m data.sentiment_measure``
(16-shot split seed 0, 200 random 5-token prompts, verbalizers " terrible" / " great"), test accuracy: empty prompt
0.665, "Sentiment of this review:" 0.643, random prompts 0.664 +- 0.066 (best 0.81), the best random prompt on dev
0.80; dev accuracy and the training gap reward predict test accuracy with r = 0.84 and 0.96.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from data.generate import DOMAINS, Item, ReviewWriter, split_items, write_jsonl_atomic
from pipeline.errors import run_main
from reward_models.vader import vader_reward

CLASSES = ("negative", "positive")
SIZES = {"train": 256, "test": 400}
MIN_COMPOUND = 0.5
PLACES = next(domain for domain in DOMAINS if "hotel" in domain.nouns)
WEATHER = (
    "It rained the whole time we were there.",
    "There was fog all week.",
    "It was raining when we arrived.",
    "There was mud everywhere after the rain.",
    "A storm came in on the second day.",
    "It rained all weekend.",
    "The fog never lifted.",
    "It drizzled all afternoon.",
)


def labelled_reviews(rng: random.Random, items: list[Item], count: int) -> list[dict]:
    """``count`` reviews, half negative and half positive, shuffled."""
    rows: list[dict] = []
    while len(rows) < count:
        sign = 1 if len(rows) % 2 else -1
        domain, noun, _ = rng.choice(items)
        review = ReviewWriter(rng, domain, noun).completion(sign * rng.uniform(0.3, 1.0)).strip()
        weather = rng.choice(WEATHER)
        text = f"{weather} {review}" if rng.random() < 0.5 else f"{review} {weather}"
        compound = vader_reward([""], [text])[0]
        if abs(compound) >= MIN_COMPOUND and (compound > 0) == (sign > 0):
            rows.append({"text": text, "label": CLASSES[sign > 0]})
    rng.shuffle(rows)
    return rows


def generate_sentiment_data(out_dir: Path, seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, int]:
    """Write train.jsonl and test.jsonl into ``out_dir``; returns the row counts."""
    sizes = {**SIZES, **(sizes or {})}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = split_items(seed)
    places = {split: [item for item in items[split] if item[0] is PLACES] for split in ("train", "eval")}
    counts = {}
    for split, item_split in (("train", "train"), ("test", "eval")):
        rows = labelled_reviews(random.Random(f"{seed}-sentiment-{split}"), places[item_split], sizes[split])
        write_jsonl_atomic(out_dir / f"{split}.jsonl", rows)
        counts[split] = len(rows)
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/demo_sentiment"), help="folder for the jsonl files")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for split, count in generate_sentiment_data(args.out, seed=args.seed).items():
        print(f"{split:5s} {count:4d} rows -> {args.out / f'{split}.jsonl'}")


if __name__ == "__main__":
    run_main(main)
