"""pipeline.stats against small cases computed by hand: win rate with ties, the bootstrap interval, KL from samples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.stats import bootstrap_interval, describe, duel_outcomes, sampled_kl, win_rate


def test_win_rate_counts_a_tie_as_half():
    # Prompt by prompt: win, tie, loss, win, tie -> (1 + 0.5 + 0 + 1 + 0.5) / 5 = 0.6.
    policy = [0.9, 0.5, 0.1, 0.7, -1.0]
    reference = [0.2, 0.5, 0.4, 0.3, -1.0]
    assert duel_outcomes(policy, reference).tolist() == [1.0, 0.5, 0.0, 1.0, 0.5]
    result = win_rate(policy, reference)
    assert result["win_rate"] == pytest.approx(0.6)
    assert (result["wins"], result["ties"], result["losses"], result["n"]) == (2, 2, 1, 5)
    low, high = result["ci"]
    assert 0 <= low <= 0.6 <= high <= 1


def test_win_rate_of_a_policy_against_itself_is_one_half_with_no_spread():
    scores = [0.3, -0.2, 0.8]
    result = win_rate(scores, scores)
    assert result["win_rate"] == 0.5 and result["ci"] == [0.5, 0.5] and result["ties"] == 3


def test_win_rate_needs_paired_scores():
    with pytest.raises(ValueError, match="one per prompt"):
        win_rate([1.0, 2.0], [1.0])


def test_bootstrap_interval_of_a_two_point_sample_by_hand():
    # Resampling [0, 1] twice gives means 0, 0.5, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 2.5% and 97.5%
    # quantiles of many resamples are 0 and 1, and about half of the resample means are exactly 0.5.
    assert bootstrap_interval([0.0, 1.0], resamples=4000) == (0.0, 1.0)
    rng = np.random.default_rng(0)
    means = np.array([0.0, 1.0])[rng.integers(0, 2, size=(4000, 2))].mean(axis=1)
    assert (means == 0.5).mean() == pytest.approx(0.5, abs=0.03)


def test_bootstrap_interval_shrinks_like_one_over_sqrt_n():
    # A fair coin's outcomes, n = 40, 400, 4000: the interval's width is about 2 * 1.96 * 0.5 / sqrt(n).
    widths = []
    for n in (40, 400, 4000):
        outcomes = [1.0, 0.0] * (n // 2)
        low, high = bootstrap_interval(outcomes, seed=1)
        assert low < 0.5 < high
        widths.append(high - low)
        assert high - low == pytest.approx(2 * 1.96 * 0.5 / math.sqrt(n), rel=0.15)
    assert widths[0] > widths[1] > widths[2]


def test_bootstrap_interval_is_seeded():
    values = list(np.random.default_rng(3).normal(size=50))
    assert bootstrap_interval(values, seed=7) == bootstrap_interval(values, seed=7)
    assert bootstrap_interval(values, seed=7) != bootstrap_interval(values, seed=8)


def test_describe_by_hand():
    # mean 2, sample variance ((1 + 0 + 1) / 2) = 1, stderr 1 / sqrt(3).
    assert describe([1.0, 2.0, 3.0]) == pytest.approx({"mean": 2.0, "std": 1.0, "stderr": 1 / math.sqrt(3), "n": 3})
    single = describe([5.0])
    assert single["mean"] == 5.0 and math.isnan(single["std"]) and math.isnan(single["stderr"])


def test_kl_estimate_of_identical_policies_is_zero():
    logprobs = [-3.2, -7.5, -1.1]
    kl = sampled_kl(logprobs, logprobs)
    assert kl["mean"] == 0.0 and kl["std"] == 0.0


def test_kl_estimate_from_samples_matches_the_exact_value():
    # pi = (0.5, 0.25, 0.25), pi_ref uniform over 3: KL = sum pi log(pi / pi_ref) = 0.5 ln 1.5 + 0.5 ln 0.75.
    pi, ref = np.array([0.5, 0.25, 0.25]), np.full(3, 1 / 3)
    exact = float((pi * np.log(pi / ref)).sum())
    assert exact == pytest.approx(0.5 * math.log(1.5) + 0.5 * math.log(0.75))
    samples = np.random.default_rng(0).choice(3, size=20000, p=pi)
    kl = sampled_kl(np.log(pi[samples]), np.log(ref[samples]))
    assert kl["mean"] == pytest.approx(exact, abs=3 * kl["stderr"])
