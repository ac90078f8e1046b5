"""Statistics for comparing policies: pure functions on per-prompt numbers, seeded, no models.

- Win rate of a policy against a reference on the same prompts: each prompt is a duel between the two completions
  under one scorer, won (1), tied (1/2) or lost (0); the win rate is the mean outcome (AlpacaFarm's convention).
- Percentile bootstrap confidence interval of a mean: resample the per-prompt values with replacement, take the
  statistic of each resample, read the interval off their quantiles. Seeded, so a report repeats exactly.
- Mean and spread (standard deviation, standard error) of a sample.
- KL(pi || pi_ref) per response from samples of pi: the mean over samples of ``log pi(y) - log pi_ref(y)``, where
  each is the sum of the response's token log-probabilities; unbiased, and exactly 0 when the two policies agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

DEFAULT_RESAMPLES = 2000


def duel_outcomes(scores: Sequence[float], reference_scores: Sequence[float]) -> np.ndarray:
    """Per prompt: 1 where ``scores`` beats ``reference_scores``, 0.5 on a tie, 0 where it loses."""
    mine, theirs = np.asarray(scores, dtype=float), np.asarray(reference_scores, dtype=float)
    if mine.shape != theirs.shape or mine.ndim != 1:
        raise ValueError(f"scores must be two equal-length lists, one per prompt; got {mine.shape} and {theirs.shape}")
    return np.where(mine > theirs, 1.0, np.where(mine == theirs, 0.5, 0.0))


def bootstrap_interval(
    values: Sequence[float], confidence: float = 0.95, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (``resamples`` resamples, seeded)."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def win_rate(
    scores: Sequence[float],
    reference_scores: Sequence[float],
    confidence: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict:
    """The win rate of ``scores`` against ``reference_scores`` (paired by prompt; ties count half) with its
    bootstrap interval and the counts of wins, ties and losses."""
    outcomes = duel_outcomes(scores, reference_scores)
    low, high = bootstrap_interval(outcomes, confidence, resamples, seed)
    return {
        "win_rate": float(outcomes.mean()) if outcomes.size else math.nan,
        "ci": [low, high],
        "confidence": confidence,
        "wins": int((outcomes == 1).sum()),
        "ties": int((outcomes == 0.5).sum()),
        "losses": int((outcomes == 0).sum()),
        "n": int(outcomes.size),
    }


def describe(values: Sequence[float]) -> dict:
    """Mean, standard deviation (n - 1), standard error of the mean and count; NaN where undefined."""
    values = np.asarray(values, dtype=float)
    n = int(values.size)
    std = float(values.std(ddof=1)) if n > 1 else math.nan
    return {
        "mean": float(values.mean()) if n else math.nan,
        "std": std,
        "stderr": std / math.sqrt(n) if n > 1 else math.nan,
        "n": n,
    }


def sampled_kl(logprobs: Sequence[float], reference_logprobs: Sequence[float]) -> dict:
    """KL(pi || pi_ref) per response estimated from responses sampled from pi: ``describe`` of the per-response
    ``log pi(y) - log pi_ref(y)`` (each a sum over the response's tokens)."""
    mine, theirs = np.asarray(logprobs, dtype=float), np.asarray(reference_logprobs, dtype=float)
    if mine.shape != theirs.shape:
        raise ValueError(f"one log-probability per response on both sides; got {mine.shape} and {theirs.shape}")
    return describe(mine - theirs)
