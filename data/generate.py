"""Generate the offline demo's data: short reviews written for a prompt, scored by a gold judge (VADER).

``python -m data.generate --out data/demo [--seed 0] [--label-noise 0.1] [--min-gap 0.1]`` writes
sft_{train,eval}.jsonl ({prompt, completion}), prefs_{train,eval}.jsonl ({prompt, chosen, rejected, gold_chosen,
gold_rejected}) and prompts_{train,eval}.jsonl ({prompt}). The demo's "human" prefers the completion with the
higher VADER compound and flips that label with probability ``label_noise``; gold_* keep the true scores.
Train and eval use disjoint sets of reviewed items, so no eval prompt appears in train.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean

from pipeline.errors import PipelineError, run_main
from reward_models.vader import vader_reward


def _words(text: str) -> tuple[str, ...]:
    """Comma-separated entries, so long word lists stay readable."""
    return tuple(part.strip() for part in text.split(","))


SIZES = {
    "sft_train": 4000,
    "sft_eval": 400,
    "prefs_train": 6000,
    "prefs_eval": 600,
    "prompts_train": 2000,
    "prompts_eval": 200,
}
EVAL_ITEM_FRACTION = 0.15
MIN_WORDS, MAX_WORDS = 8, 35

# Word banks. Sentiment words are checked against VADER's lexicon by the tests: positive words score > 0,
# negative < 0. UNSCORED_ADJECTIVES are opinion-like words VADER does not know (they read as praise or
# criticism but count as neutral for the gold judge), so a reward model cannot rely on "any adjective".
STRONG_POSITIVE = _words(
    "excellent, superb, wonderful, amazing, fantastic, outstanding, brilliant, perfect, delightful, "
    "magnificent, awesome, marvelous, gorgeous, lovely, charming, beautiful, great, terrific"
)
MILD_POSITIVE = _words(
    "good, nice, pleasant, fine, solid, comfortable, enjoyable, clean, fair, fun, sweet, fresh, warm, "
    "satisfying, generous, elegant, impressive, adequate, engaging, entertaining, relaxing, calm"
)
STRONG_NEGATIVE = _words(
    "terrible, awful, horrible, dreadful, disgusting, pathetic, useless, miserable, lousy, ugly, bad"
)
MILD_NEGATIVE = _words(
    "poor, weak, boring, dull, annoying, noisy, uncomfortable, unpleasant, dirty, broken, confusing, "
    "frustrating, messy, faulty, sluggish, disappointing, lame, painful"
)
PERSON_POSITIVE = _words("friendly, helpful, welcoming, kind")
PERSON_NEGATIVE = _words("rude, unfriendly")
UNSCORED_ADJECTIVES = _words(
    "average, standard, ordinary, typical, basic, plain, compact, heavy, light, small, large, simple, "
    "modest, long, short, loud, new, busy, crowded, spacious, quiet, quick, modern, traditional, bland, "
    "cramped, flimsy, overpriced, mediocre, predictable, forgettable, decent, reliable, sturdy, polished, "
    "cozy, tasty"
)
BOOSTERS = _words("absolutely, really, very, extremely, incredibly, remarkably, so, totally, utterly, thoroughly")
DAMPENERS = _words("somewhat, slightly, kind of, sort of, a little, marginally, fairly, rather")
POSITIVE_VERBS = _words("loved, enjoyed, liked, appreciated, admired, adored")
NEGATIVE_VERBS = _words("hated, disliked")
POSITIVE_FEELINGS = _words("pleased, delighted, impressed, thrilled, happy, satisfied")
NEGATIVE_FEELINGS = _words("disappointed, annoyed, frustrated, bored, unhappy, upset")
POSITIVE_ADVERBS = _words("perfectly, beautifully, nicely, brilliantly, wonderfully")
NEGATIVE_ADVERBS = _words("badly, terribly, horribly")
NEUTRAL_OPENERS = ["Overall,", "In short,", "All in all,", "To sum up,", "In the end,", "Frankly,", "On balance,"]
POSITIVE_OPENERS = ["Honestly,", "Luckily,", "Thankfully,", "Surprisingly,"]
NEGATIVE_OPENERS = ["Sadly,", "Unfortunately,"]
WHEN = _words("last week, in March, a few days ago, over the weekend, on a Tuesday, last summer, in the autumn")
DURATION = _words("two weeks, a month, three days, a few hours, six months, a weekend, about a year")
COMPANY = _words("my partner, my sister, a colleague, my parents, two coworkers, my brother, my kids")
PROMPT_TEMPLATES = [
    "Write a review of the {item}:",
    "Review of the {item}:",
    "Write a short review of the {item}.",
    "What did you think of the {item}?",
    "Describe your experience with the {item}:",
    "Customer review of the {item}:",
    "Give your opinion of the {item}:",
    "A quick review of the {item}:",
    "Post a review of the {item}:",
    "How was the {item}?",
    "Your thoughts on the {item}:",
    "Rate the {item} and say why:",
]
PLURAL = frozenset(
    _words(
        "headphones, earbuds, speakers, staff, waiters, prices, bathrooms, hours, characters, visuals, lyrics, "
        "controls, instructions, materials, buttons, portions, beds, graphics, effects"
    )
)
PEOPLE = frozenset(_words("staff, host, waiters, guide, narrator, cast, customer service, owner"))


@dataclass(frozen=True)
class Domain:
    """A kind of reviewed item: nouns x qualifiers make the items; aspects are what a review talks about."""

    nouns: tuple[str, ...]
    qualifiers: tuple[str, ...]
    item_format: str
    aspects: tuple[str, ...]
    context: tuple[str, ...]  # neutral sentences about the circumstances, with {when}/{duration}/{company}
    again: tuple[str, ...]
    past: bool


DOMAINS = (
    Domain(
        nouns=_words(
            "headphones, earbuds, laptop, tablet, phone, smartwatch, camera, speakers, e-reader, keyboard, "
            "monitor, drone, printer, projector"
        ),
        qualifiers=_words(
            "wireless, budget, premium, refurbished, compact, entry-level, high-end, second-hand, lightweight, "
            "mid-range"
        ),
        item_format="{qualifier} {noun}",
        aspects=_words(
            "battery, battery life, screen, sound, build quality, price, design, software, setup, charger, "
            "buttons, app, manual, packaging, customer service, controls, weight, display"
        ),
        context=(
            "I bought it {when}",
            "It arrived {when}",
            "I have had it for {duration}",
            "I ordered it online {when}",
            "It replaced an older model",
            "I use it most days",
            "I picked it up in a shop {when}",
            "I have been using it for {duration}",
        ),
        again=("buy it again", "order another one", "buy from this brand again"),
        past=False,
    ),
    Domain(
        nouns=_words(
            "blender, kettle, coffee maker, toaster, air fryer, rice cooker, vacuum, desk lamp, office "
            "chair, mattress, backpack, suitcase, frying pan, standing desk"
        ),
        qualifiers=_words(
            "budget, premium, compact, family-size, travel, cordless, second-hand, imported, large, minimalist"
        ),
        item_format="{qualifier} {noun}",
        aspects=_words(
            "price, build quality, design, noise, cleaning, instructions, size, materials, warranty, delivery, "
            "handle, finish, assembly, packaging, weight"
        ),
        context=(
            "I bought it {when}",
            "It arrived {when}",
            "We have had it for {duration}",
            "I ordered it for my kitchen {when}",
            "It replaced an older one",
            "My parents use one too",
            "I use it every morning",
            "It took {duration} to arrive",
        ),
        again=("buy it again", "order another one", "buy from this shop again"),
        past=False,
    ),
    Domain(
        nouns=_words(
            "hotel, restaurant, cafe, bakery, museum, hostel, gym, bookshop, pizzeria, bar, food market, "
            "campsite, cinema, noodle shop"
        ),
        qualifiers=_words(
            "Lisbon, Porto, Berlin, Kyoto, Oslo, Lima, Denver, Dublin, Austin, Prague, Seville, Hanoi, Tallinn, "
            "Quebec, Bergen, Valencia"
        ),
        item_format="{noun} in {qualifier}",
        aspects=_words(
            "staff, service, location, prices, atmosphere, decor, wait, music, parking, opening hours, bathrooms, "
            "view, booking process, host, owner, waiters, portions, beds"
        ),
        context=(
            "We went there {when}",
            "I visited {when} with {company}",
            "We were there for {duration}",
            "We booked it {when}",
            "I went there with {company}",
            "It is near the station",
            "We walked there from the old town",
            "I dropped in on my way home",
        ),
        again=("go back", "visit again", "return"),
        past=True,
    ),
    Domain(
        nouns=_words(
            "movie, book, album, podcast, video game, TV series, documentary, comic, audiobook, musical, short "
            "film, memoir"
        ),
        qualifiers=_words(
            "sci-fi, indie, historical, animated, detective, debut, new, French, Korean, experimental, cult, family"
        ),
        item_format="{qualifier} {noun}",
        aspects=_words(
            "plot, acting, soundtrack, pacing, characters, ending, dialogue, visuals, writing, narration, "
            "opening, cast, story, length, lyrics, graphics, effects, narrator"
        ),
        context=(
            "I finished it {when}",
            "I got to it {when}",
            "It took me {duration} to get through it",
            "I went in knowing nothing about it",
            "{company} told me about it",
            "I started it {when}",
            "I came across it {when}",
        ),
        again=("give it another go", "see what they make next", "revisit it"),
        past=True,
    ),
)


Item = tuple[Domain, str, str]  # (domain, noun, item phrase as it appears in prompts)


def _is_plural(phrase: str) -> bool:
    return phrase.split()[-1] in PLURAL


def _article(phrase: str) -> str:
    if _is_plural(phrase):
        return phrase
    vowel_sound = phrase[0].lower() in "aeiou" and not phrase.lower().startswith(("use", "uni", "eu"))
    return ("an " if vowel_sound else "a ") + phrase


class ReviewWriter:
    """Writes reviews of one item. Each sentence kind is a method taking ``sign`` (-1, 0 or 1) and ``strong``
    (stronger words); opinion kinds carry the sign, neutral kinds score 0 for VADER."""

    OPINION_KINDS = {
        "aspect": 30,
        "contrast": 12,
        "verdict": 14,
        "verb": 12,
        "recommendation": 10,
        "feeling": 8,
        "comparison": 8,
        "adverb": 6,
    }
    NEUTRAL_KINDS = {"circumstance": 6, "aspect": 3, "recommendation": 1}

    def __init__(self, rng: random.Random, domain: Domain, noun: str) -> None:
        self.rng, self.domain, self.noun = rng, domain, noun

    def be(self, subject: str, negated: bool = False) -> str:
        verb = ("were" if self.domain.past else "are") if _is_plural(subject) else ("was" if self.domain.past else "is")
        if negated:
            return self.rng.choice([verb + " not", verb + "n't"])
        return verb

    def pick(self, options: list[str] | tuple[str, ...]) -> str:
        return self.rng.choice(options)

    def adjective(self, sign: int, strong: bool, aspect: str = "") -> tuple[bool, str]:
        """(negated, phrase): a plain or modified sentiment word, or the opposite word to use after a negation."""
        if sign == 0:
            return False, self.pick(UNSCORED_ADJECTIVES)
        people = aspect in PEOPLE
        if strong:
            pool = (
                STRONG_POSITIVE + PERSON_POSITIVE * people if sign > 0 else STRONG_NEGATIVE + PERSON_NEGATIVE * people
            )
            word = self.pick(pool)
            return False, f"{self.pick(BOOSTERS)} {word}" if self.rng.random() < 0.4 else word
        pool = MILD_POSITIVE + PERSON_POSITIVE * people if sign > 0 else MILD_NEGATIVE + PERSON_NEGATIVE * people
        roll = self.rng.random()
        if roll < 0.25:
            return False, f"{self.pick(DAMPENERS)} {self.pick(pool)}"
        if roll < 0.45:  # "not bad" is mildly positive, "not great" mildly negative
            return True, self.pick(STRONG_NEGATIVE if sign > 0 else STRONG_POSITIVE + MILD_POSITIVE)
        return False, self.pick(pool)

    def aspect_clause(self, sign: int, strong: bool, aspect: str | None = None) -> str:
        aspect = aspect or self.pick(self.domain.aspects)
        negated, adjective = self.adjective(sign, strong, aspect)
        return f"the {aspect} {self.be(aspect, negated)} {adjective}"

    def aspect(self, sign: int, strong: bool) -> str:
        clause = self.aspect_clause(sign, strong)
        if self.rng.random() < 0.3:
            openers = NEUTRAL_OPENERS + (POSITIVE_OPENERS if sign > 0 else NEGATIVE_OPENERS if sign < 0 else [])
            return f"{self.pick(openers)} {clause}."
        return clause + "."

    def contrast(self, sign: int, strong: bool) -> str:
        first_aspect, second_aspect = self.rng.sample(self.domain.aspects, 2)
        first = self.aspect_clause(-sign if self.rng.random() < 0.7 else 0, False, first_aspect)
        second = self.aspect_clause(sign, strong, second_aspect)
        pattern = self.pick(["{a}, but {b}.", "Although {a}, {b}.", "{a}; however, {b}.", "While {a}, {b}."])
        return pattern.format(a=first, b=second)

    def verb(self, sign: int, strong: bool) -> str:
        aspect = self.pick(self.domain.aspects)
        if sign > 0:
            options = [
                f"I {self.pick(POSITIVE_VERBS)} the {aspect}.",
                f"We {self.pick(POSITIVE_VERBS)} the {aspect}.",
                f"I {self.pick(['really', 'truly', 'absolutely'])} {self.pick(POSITIVE_VERBS)} the {aspect}.",
                f"The {aspect} impressed me.",
            ]
        else:
            options = [
                f"I {self.pick(NEGATIVE_VERBS)} the {aspect}.",
                f"We {self.pick(NEGATIVE_VERBS)} the {aspect}.",
                f"The {aspect} disappointed me.",
                f"The {aspect} annoyed me.",
            ]
        return self.pick(options)

    def feeling(self, sign: int, strong: bool) -> str:
        feelings = POSITIVE_FEELINGS if sign > 0 else NEGATIVE_FEELINGS
        boost = f"{self.pick(BOOSTERS)} " if strong else ""
        target = self.pick([f"the {self.pick(self.domain.aspects)}", f"this {self.noun}", "it"])
        return f"I was {boost}{self.pick(feelings)} with {target}."

    def adverb(self, sign: int, strong: bool) -> str:
        adverb = self.pick(POSITIVE_ADVERBS if sign > 0 else NEGATIVE_ADVERBS)
        aspect = self.pick([aspect for aspect in self.domain.aspects if aspect not in PEOPLE])
        return self.pick([f"The {aspect} {self.be(aspect)} {adverb} done.", f"It all came together {adverb}."])

    def verdict(self, sign: int, strong: bool) -> str:
        negated, adjective = self.adjective(sign, strong)
        if negated:
            return f"The {self.noun} {self.be(self.noun, True)} {adjective}."
        options = [
            f"{self.pick(NEUTRAL_OPENERS)} {_article(f'{adjective} {self.noun}')}.",
            f"The {self.noun} {self.be(self.noun)} {adjective} overall.",
            f"What {_article(f'{adjective} {self.noun}')}!",
        ]
        return self.pick(options)

    def recommendation(self, sign: int, strong: bool) -> str:
        again = self.pick(self.domain.again)
        if sign > 0:
            options = [
                "I would recommend it to anyone.",
                "Highly recommended.",
                "Worth every penny.",
                f"I would happily {again}.",
                f"I will definitely {again}.",
            ]
        elif sign < 0:
            options = [
                "I would not recommend it.",
                "Avoid it.",
                "A waste of money.",
                "What a waste of time.",
                f"I regret choosing this {self.noun}.",
            ]
        else:  # read as a verdict by a person, but VADER scores them 0
            options = [f"I might {again}.", f"I would never {again}.", f"Maybe I will {again} someday.", "Never again."]
        return self.pick(options)

    def comparison(self, sign: int, strong: bool) -> str:
        if sign > 0:
            options = [
                "Better than I expected.",
                f"The best {self.noun} I have come across.",
                "Far better than the last one.",
            ]
        else:
            options = [
                "Worse than I expected.",
                f"The worst {self.noun} I have come across.",
                "Much worse than the last one.",
            ]
        return self.pick(options)

    def circumstance(self, sign: int, strong: bool) -> str:
        template = self.pick(self.domain.context)
        text = template.format(when=self.pick(WHEN), duration=self.pick(DURATION), company=self.pick(COMPANY))
        return text[0].upper() + text[1:] + "."

    def sentence(self, target: float) -> str:
        """One sentence whose sentiment is drawn around ``target`` in [-1, 1]."""
        rng = self.rng
        if rng.random() < 0.1 + 0.3 * (1 - abs(target)):
            sign, strong, kinds = 0, False, self.NEUTRAL_KINDS
        else:
            sign = 1 if rng.random() < (1 + target) / 2 else -1
            strong, kinds = rng.random() < abs(target), self.OPINION_KINDS
        kind = rng.choices(list(kinds), weights=list(kinds.values()))[0]
        text = getattr(self, kind)(sign, strong)
        text = text[0].upper() + text[1:]
        if strong and text.endswith(".") and rng.random() < 0.25:
            text = text[:-1] + "!"
        return text

    def completion(self, target: float) -> str:
        """A 1-3 sentence review of MIN_WORDS..MAX_WORDS words, starting with a space (it follows the prompt)."""
        while True:
            count = self.rng.choices((1, 2, 3), weights=(3, 4, 3))[0]
            text = " " + " ".join(self.sentence(target) for _ in range(count))
            if MIN_WORDS <= len(text.split()) <= MAX_WORDS:
                return text


def all_items() -> list[Item]:
    """Every (domain, noun, item phrase) the generator can review."""
    return [
        (domain, noun, domain.item_format.format(qualifier=qualifier, noun=noun))
        for domain in DOMAINS
        for noun in domain.nouns
        for qualifier in domain.qualifiers
    ]


def split_items(seed: int) -> dict[str, list[Item]]:
    """Disjoint train / eval item lists."""
    items = all_items()
    random.Random(f"{seed}-items").shuffle(items)
    cut = round(len(items) * EVAL_ITEM_FRACTION)
    return {"eval": items[:cut], "train": items[cut:]}


def _prompt_and_writer(rng: random.Random, items: list[Item]) -> tuple[str, ReviewWriter]:
    domain, noun, item = rng.choice(items)
    return rng.choice(PROMPT_TEMPLATES).format(item=item), ReviewWriter(rng, domain, noun)


def sft_rows(rng: random.Random, items: list[Item], count: int) -> list[dict]:
    """Demonstrations whose sentiment spans the whole range."""
    rows = []
    for _ in range(count):
        prompt, writer = _prompt_and_writer(rng, items)
        rows.append({"prompt": prompt, "completion": writer.completion(rng.uniform(-1, 1))})
    return rows


def preference_rows(
    rng: random.Random, items: list[Item], count: int, label_noise: float, min_gap: float
) -> list[dict]:
    """Pairs labelled by VADER (higher compound preferred), each label flipped with probability ``label_noise``."""
    rows = []
    while len(rows) < count:
        prompt, writer = _prompt_and_writer(rng, items)
        first, second = writer.completion(rng.uniform(-1, 1)), writer.completion(rng.uniform(-1, 1))
        gold_first, gold_second = vader_reward([prompt, prompt], [first, second])
        if abs(gold_first - gold_second) < min_gap:
            continue
        if gold_first < gold_second:
            first, second, gold_first, gold_second = second, first, gold_second, gold_first
        if rng.random() < label_noise:
            first, second, gold_first, gold_second = second, first, gold_second, gold_first
        rows.append(
            {
                "prompt": prompt,
                "chosen": first,
                "rejected": second,
                "gold_chosen": gold_first,
                "gold_rejected": gold_second,
            }
        )
    return rows


def prompt_rows(rng: random.Random, items: list[Item], count: int) -> list[dict]:
    """Prompts alone, for PPO rollouts."""
    return [{"prompt": _prompt_and_writer(rng, items)[0]} for _ in range(count)]


def write_jsonl_atomic(path: Path, rows: Iterable[dict]) -> None:
    """Write one JSON object per line through a temporary file and a rename."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(temporary, path)


def generate_demo_data(
    out_dir: Path, seed: int = 0, label_noise: float = 0.1, min_gap: float = 0.1, sizes: dict[str, int] | None = None
) -> dict:
    """Write the demo jsonl files into ``out_dir``; returns a summary (counts, mean SFT gold, flipped fraction)."""
    if not 0 <= label_noise <= 1:
        raise PipelineError(f"--label-noise must be in [0, 1], got {label_noise}")
    if not 0 <= min_gap < 2:
        raise PipelineError(f"--min-gap must be in [0, 2), got {min_gap}")
    sizes = {**SIZES, **(sizes or {})}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = split_items(seed)
    summary: dict = {"counts": {}}
    for split in ("train", "eval"):
        # one generator per file, so changing one file's size leaves the others as they were
        def rng(kind: str, split: str = split) -> random.Random:
            return random.Random(f"{seed}-{kind}-{split}")

        sft = sft_rows(rng("sft"), items[split], sizes[f"sft_{split}"])
        prefs = preference_rows(rng("prefs"), items[split], sizes[f"prefs_{split}"], label_noise, min_gap)
        prompts = prompt_rows(rng("prompts"), items[split], sizes[f"prompts_{split}"])
        for kind, rows in (("sft", sft), ("prefs", prefs), ("prompts", prompts)):
            write_jsonl_atomic(out_dir / f"{kind}_{split}.jsonl", rows)
            summary["counts"][f"{kind}_{split}"] = len(rows)
        gold = vader_reward([row["prompt"] for row in sft], [row["completion"] for row in sft])
        summary[f"sft_{split}_mean_gold"] = round(fmean(gold), 4) if gold else None
        flipped = sum(row["gold_chosen"] < row["gold_rejected"] for row in prefs)
        summary[f"prefs_{split}_flipped_fraction"] = round(flipped / len(prefs), 4) if prefs else None
    summary["bytes"] = sum(path.stat().st_size for path in out_dir.glob("*.jsonl"))
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the jsonl files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label-noise", type=float, default=0.1, help="probability of flipping a preference label")
    parser.add_argument("--min-gap", type=float, default=0.1, help="skip pairs whose gold scores differ by less")
    args = parser.parse_args(argv)
    summary = generate_demo_data(args.out, seed=args.seed, label_noise=args.label_noise, min_gap=args.min_gap)
    for name, count in summary["counts"].items():
        print(f"{name:14s} {count:6d} rows")
    for split in ("train", "eval"):
        print(
            f"{split:5s}: mean gold of SFT completions {summary[f'sft_{split}_mean_gold']:+.3f}, "
            f"flipped preference labels {summary[f'prefs_{split}_flipped_fraction']:.3f}"
        )
    print(f"total {summary['bytes'] / 1e6:.2f} MB in {args.out}")


if __name__ == "__main__":
    run_main(main)
