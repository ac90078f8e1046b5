"""VADER sentiment as a gold judge: the demo's stand-in for human preference (``vaderSentiment`` on PyPI)."""

from __future__ import annotations

from functools import lru_cache

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from reward_models.base import completion_text


@lru_cache(maxsize=1)
def _analyzer() -> SentimentIntensityAnalyzer:
    # Loading the lexicon takes a noticeable moment, so one analyzer serves every call.
    return SentimentIntensityAnalyzer()


def vader_reward(prompts: list, completions: list, **columns) -> list[float]:
    """VADER compound sentiment of each completion (text or an assistant message), in [-1, 1]; ``prompts`` and
    extra columns are ignored."""
    analyzer = _analyzer()
    return [float(analyzer.polarity_scores(completion_text(c))["compound"]) for c in completions]
