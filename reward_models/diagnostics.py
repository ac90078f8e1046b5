"""Is a reward model any good? Pure computations on its scores of held-out preference pairs (the RM stage's summary).

- Pairwise accuracy (chosen scored above rejected; a tie counts as wrong, as in TRL) with a 95% Wilson score
  interval: closed form, and sound for small samples and accuracies near 0 or 1, where the normal approximation
  is not.
- Accuracy by margin bucket: quantile buckets of the predicted margin ``|r_chosen - r_rejected|`` and, where the
  data has one, of its true margin (e.g. a gold judge's score difference, negative on pairs whose label is wrong).
- Calibration of ``sigmoid(r_chosen - r_rejected)`` as the probability that chosen wins. Every pair is read from
  the side the model favours: confidence ``max(p, 1 - p)`` against whether that side is the labelled winner (the
  same as scoring both orderings of each pair). Reliability bins of equal width on [0.5, 1]; expected calibration
  error ECE = sum over bins of (count / pairs) * |accuracy - mean confidence|.
- Correlation of the score with completion length, chosen and rejected pooled (Pearson and Spearman), with a
  warning when either |r| exceeds :data:`LENGTH_WARNING_R`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats

# |r| above 0.5: length alone accounts for more than a quarter of the variance of the score (Pearson), or of its
# ranks (Spearman), a common sign that the reward model learned "longer is better" rather than the preference.
LENGTH_WARNING_R = 0.5
Z_95 = 1.959964


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default); (0, 1) when ``n`` is 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_by_bucket(correct: Sequence[bool], values: Sequence[float], buckets: int = 4) -> list[dict]:
    """Accuracy of the pairs in each quantile bucket of ``values``: ``low <= value < high`` (the last bucket includes
    its ``high``). Tied quantiles merge buckets, so there may be fewer than ``buckets``."""
    correct, values = np.asarray(correct, dtype=bool), np.asarray(values, dtype=float)
    edges = np.unique(np.quantile(values, np.linspace(0, 1, buckets + 1)))
    which = np.searchsorted(edges[1:-1], values, side="right")
    return [
        {
            "low": float(edges[i]),
            "high": float(edges[min(i + 1, len(edges) - 1)]),
            "count": int((which == i).sum()),
            "accuracy": float(correct[which == i].mean()),
        }
        for i in range(max(len(edges) - 1, 1))
    ]


def calibration(chosen: Sequence[float], rejected: Sequence[float], bins: int = 10) -> dict:
    """Reliability bins (non-empty ones, with counts) and the expected calibration error of the model's confidence
    ``sigmoid(|r_chosen - r_rejected|)`` in the side it favours (see the module's docstring)."""
    margin = np.asarray(chosen, dtype=float) - np.asarray(rejected, dtype=float)
    confidence = 1 / (1 + np.exp(-np.abs(margin)))
    correct = margin > 0
    width = 0.5 / bins
    which = np.minimum(((confidence - 0.5) // width).astype(int), bins - 1)
    table = []
    for i in range(bins):
        members = which == i
        if members.any():
            table.append(
                {
                    "low": 0.5 + i * width,
                    "high": 0.5 + (i + 1) * width,
                    "count": int(members.sum()),
                    "mean_confidence": float(confidence[members].mean()),
                    "accuracy": float(correct[members].mean()),
                }
            )
    ece = sum(row["count"] * abs(row["accuracy"] - row["mean_confidence"]) for row in table) / len(margin)
    return {"bins": table, "ece": float(ece), "mean_confidence": float(confidence.mean())}


def length_correlation(scores: Sequence[float], lengths: Sequence[float], unit: str = "characters") -> dict:
    """Pearson and Spearman correlation between scores and lengths, and a warning (None if not) when either |r|
    exceeds :data:`LENGTH_WARNING_R`. Correlations are None when scores or lengths are all equal."""
    scores, lengths = np.asarray(scores, dtype=float), np.asarray(lengths, dtype=float)
    result: dict = {"pearson": None, "spearman": None, "unit": unit, "warning_above": LENGTH_WARNING_R, "warning": None}
    if len(scores) < 3 or np.ptp(scores) == 0 or np.ptp(lengths) == 0:
        return result
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)  # checked above
        result["pearson"] = float(stats.pearsonr(scores, lengths).statistic)
        result["spearman"] = float(stats.spearmanr(scores, lengths).statistic)
    if max(abs(result["pearson"]), abs(result["spearman"])) > LENGTH_WARNING_R:
        result["warning"] = (
            f"the reward-model score follows completion length (Pearson {result['pearson']:+.2f}, Spearman "
            f"{result['spearman']:+.2f} with length in {unit}; warned above |r| {LENGTH_WARNING_R}): length alone "
            "explains much of the score. Check whether the preference data favours longer (or shorter) completions "
            "and balance their lengths, or add a length penalty"
        )
    return result


def diagnose(
    chosen: Sequence[float],
    rejected: Sequence[float],
    chosen_lengths: Sequence[float],
    rejected_lengths: Sequence[float],
    true_margin: Sequence[float] | None = None,
    buckets: int = 4,
    bins: int = 10,
) -> dict:
    """Every diagnostic of held-out pairs, JSON-ready; ``warnings`` lists what a person should look at."""
    chosen, rejected = np.asarray(chosen, dtype=float), np.asarray(rejected, dtype=float)
    margin = chosen - rejected
    correct = margin > 0
    low, high = wilson_interval(int(correct.sum()), len(correct))
    length = length_correlation(np.concatenate([chosen, rejected]), np.concatenate([chosen_lengths, rejected_lengths]))
    report = {
        "pairs": len(correct),
        "accuracy": float(correct.mean()),
        "accuracy_ci95": [low, high],
        "accuracy_ci_method": "wilson",
        "scores": {
            "chosen_mean": float(chosen.mean()),
            "chosen_std": float(chosen.std()),
            "rejected_mean": float(rejected.mean()),
            "rejected_std": float(rejected.std()),
        },
        "accuracy_by_predicted_margin": accuracy_by_bucket(correct, np.abs(margin), buckets),
        "calibration": calibration(chosen, rejected, bins),
        "length_correlation": length,
        "warnings": [length["warning"]] if length["warning"] else [],
    }
    if true_margin is not None:
        true_margin = np.asarray(true_margin, dtype=float)
        report["accuracy_by_true_margin"] = accuracy_by_bucket(correct, true_margin, buckets)
        # Against the order the true margin gives (a gold judge's, where the labels are noisy); true ties left out.
        ordered = true_margin != 0
        report["true_order_accuracy"] = float((np.sign(margin[ordered]) == np.sign(true_margin[ordered])).mean())
    return report
