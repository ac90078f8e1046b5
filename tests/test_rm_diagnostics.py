"""reward_models.diagnostics against small cases computed by hand: Wilson interval, accuracy by bucket, calibration
bins and ECE, the length warning."""

from __future__ import annotations

import math

import pytest

from reward_models.diagnostics import (
    LENGTH_WARNING_R,
    accuracy_by_bucket,
    calibration,
    diagnose,
    length_correlation,
    wilson_interval,
)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_wilson_interval_by_hand():
    # p = 0.8, n = 10, z = 1.96: centre (0.8 + 0.19208) / 1.38416, half-width 1.96 * sqrt(0.025604) / 1.38416.
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    # All correct: the upper end is 1, the lower end n / (n + z^2), not 1 as the normal approximation says.
    assert wilson_interval(10, 10) == pytest.approx((10 / (10 + 1.959964**2), 1.0), abs=1e-6)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_interval_shrinks_with_n():
    widths = [high - low for low, high in (wilson_interval(8 * k, 10 * k) for k in (1, 10, 100))]
    assert widths[0] > widths[1] > widths[2]
    assert widths[1] / widths[2] == pytest.approx(math.sqrt(10), rel=0.05)  # about 1 / sqrt(n) for large n


def test_accuracy_by_quantile_bucket_by_hand():
    values = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    correct = [False, True, True, True, False, False, True, True]
    buckets = accuracy_by_bucket(correct, values, buckets=4)
    # Quartile edges 0.1, 0.275, 0.45, 0.625, 0.8: two pairs in each bucket.
    assert [(b["count"], b["accuracy"]) for b in buckets] == [(2, 0.5), (2, 1.0), (2, 0.0), (2, 1.0)]
    assert [b["low"] for b in buckets] == pytest.approx([0.1, 0.275, 0.45, 0.625])
    assert buckets[-1]["high"] == pytest.approx(0.8)


def test_tied_quantiles_merge_buckets():
    # Quantiles of [1, 1, 1, 1, 2, 2] at 0, 1/4, 1/2, 3/4, 1 are 1, 1, 1, 1.75, 2: two buckets remain.
    buckets = accuracy_by_bucket([True, True, False, False, True, True], [1, 1, 1, 1, 2, 2], buckets=4)
    assert [(b["low"], b["high"], b["count"], b["accuracy"]) for b in buckets] == [(1, 1.75, 4, 0.5), (1.75, 2, 2, 1)]
    assert accuracy_by_bucket([True, False], [3.0, 3.0]) == [{"low": 3.0, "high": 3.0, "count": 2, "accuracy": 0.5}]


def test_calibration_bins_and_ece_by_hand():
    # Four pairs at confidence 0.65, two right and two wrong; two at 0.95, both right.
    margins = [logit(0.65), logit(0.65), -logit(0.65), -logit(0.65), logit(0.95), logit(0.95)]
    result = calibration(margins, [0.0] * 6, bins=5)
    assert [b["count"] for b in result["bins"]] == [4, 2]
    assert [(b["low"], b["high"]) for b in result["bins"]] == [pytest.approx((0.6, 0.7)), pytest.approx((0.9, 1.0))]
    assert [b["accuracy"] for b in result["bins"]] == [0.5, 1.0]
    assert [b["mean_confidence"] for b in result["bins"]] == pytest.approx([0.65, 0.95])
    # ECE = 4/6 * |0.5 - 0.65| + 2/6 * |1 - 0.95|
    assert result["ece"] == pytest.approx(4 / 6 * 0.15 + 2 / 6 * 0.05)
    assert result["mean_confidence"] == pytest.approx(0.75)


def test_calibration_reads_each_pair_from_the_favoured_side():
    """A pair the model gets wrong with p(chosen) = 0.2 is a 0.8-confident miss, like a right one at 0.8 is a hit."""
    result = calibration([logit(0.2), logit(0.8)], [0.0, 0.0], bins=5)
    assert [(b["count"], b["accuracy"]) for b in result["bins"]] == [(2, 0.5)]
    assert result["bins"][0]["mean_confidence"] == pytest.approx(0.8) and result["ece"] == pytest.approx(0.3)


def test_length_warning_fires_when_length_explains_the_score():
    lengths = [10, 20, 30, 40, 50, 60]
    fired = length_correlation([0.1 * n + 0.3 * (-1) ** n for n in lengths], lengths)
    assert fired["pearson"] > LENGTH_WARNING_R and fired["warning"] and "length" in fired["warning"]


def test_length_warning_stays_quiet_otherwise():
    # Alternating scores: Pearson = Spearman = -3 / sqrt(17.5 * 6) = -0.293.
    quiet = length_correlation([1, -1, 1, -1, 1, -1], [1, 2, 3, 4, 5, 6])
    assert quiet["pearson"] == pytest.approx(-3 / math.sqrt(17.5 * 6)) and quiet["spearman"] == pytest.approx(
        -0.293, abs=1e-3
    )
    assert quiet["warning"] is None
    constant = length_correlation([1.0, 2.0, 3.0], [5, 5, 5])
    assert constant["pearson"] is None and constant["warning"] is None


def test_diagnose_with_true_margins():
    chosen, rejected = [2.0, 1.0, 0.0, 3.0], [1.0, 2.0, 1.0, 0.0]  # right, wrong, wrong, right
    true_margin = [0.5, -0.4, 0.2, 0.9]  # the second label is wrong by the true margin, the model "right" there
    report = diagnose(chosen, rejected, [5, 6, 7, 8], [5, 6, 7, 8], true_margin, buckets=2)
    assert report["accuracy"] == 0.5 and report["pairs"] == 4
    assert report["accuracy_ci95"] == pytest.approx(list(wilson_interval(2, 4)))
    assert report["true_order_accuracy"] == 0.75
    assert [(b["count"], b["accuracy"]) for b in report["accuracy_by_true_margin"]] == [(2, 0.0), (2, 1.0)]
    assert report["scores"]["chosen_mean"] == 1.5 and report["scores"]["rejected_mean"] == 1.0
    assert "accuracy_by_true_margin" not in diagnose(chosen, rejected, [1] * 4, [1] * 4)
