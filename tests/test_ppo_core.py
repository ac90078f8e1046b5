"""PPO math checked against small cases computed by hand (the arithmetic is in the comments)."""

import pytest
import torch

from stages.ppo.core import (
    explained_variance,
    gae_advantages,
    group_zscore,
    kl_estimate,
    masked_mean,
    masked_var,
    masked_whiten,
    per_token_rewards,
    policy_loss,
    truncate_after_eos,
    value_loss,
    zscore,
)
from stages.ppo.kl_control import AdaptiveKLController, FixedKLController, make_kl_controller
from stages.ppo.sampling import token_logprobs

EOS, PAD = 2, 0


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def assert_close(actual, expected, atol=1e-6):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# --- masked statistics -------------------------------------------------------------------------------------------


def test_masked_mean_ignores_masked_entries_even_nan():
    values = t([[1.0, 2.0, 3.0, float("nan")], [4.0, 5.0, 6.0, 7.0]])
    mask = t([[1, 1, 1, 0], [1, 1, 0, 0]])
    # (1 + 2 + 3 + 4 + 5) / 5 = 3
    assert_close(masked_mean(values, mask), 3.0)
    # row means: (1 + 2 + 3) / 3 = 2 ; (4 + 5) / 2 = 4.5
    assert_close(masked_mean(values, mask, dim=1), [2.0, 4.5])


def test_masked_mean_of_empty_mask_is_zero_not_nan():
    assert_close(masked_mean(t([[1.0, 2.0]]), t([[0, 0]])), 0.0)


def test_masked_var_biased_and_unbiased():
    values, mask = t([[2.0, 4.0, 6.0, 100.0]]), t([[1, 1, 1, 0]])
    # mean 4, squared deviations 4 + 0 + 4 = 8: biased 8 / 3, unbiased 8 / 2 = 4
    assert_close(masked_var(values, mask, unbiased=False), 8 / 3)
    assert_close(masked_var(values, mask), 4.0)
    # a single entry has no spread: 0, not a division by zero
    assert_close(masked_var(t([[5.0, 1.0]]), t([[1, 0]])), 0.0)


def test_explained_variance_by_hand():
    returns = t([[1.0, 3.0, 99.0], [5.0, 7.0, -4.0]])
    mask = t([[1, 1, 0], [1, 1, 0]])
    # Masked returns 1, 3, 5, 7: variance 5. Values off by +1, -1, +1, -1: residual variance 1.
    assert_close(explained_variance(t([[0.0, 4.0, 0.0], [4.0, 8.0, 0.0]]), returns, mask), 1 - 1 / 5)
    assert_close(explained_variance(returns, returns, mask), 1.0)
    # A constant critic explains nothing; constant returns give 0, not a division by zero.
    assert_close(explained_variance(torch.full_like(returns, 2.0), returns, mask), 0.0)
    assert_close(explained_variance(returns, torch.ones_like(returns), mask), 0.0)


def test_masked_whiten_by_hand():
    values, mask = t([[2.0, 4.0, 6.0, 100.0]]), t([[1, 1, 1, 0]])
    # mean 4, unbiased std 2: (2-4)/2, (4-4)/2, (6-4)/2 = -1, 0, 1; masked-out entry -> 0
    assert_close(masked_whiten(values, mask), [[-1.0, 0.0, 1.0, 0.0]])
    # without shifting the mean: -1 + 4, 0 + 4, 1 + 4 = 3, 4, 5
    assert_close(masked_whiten(values, mask, shift_mean=False), [[3.0, 4.0, 5.0, 0.0]])


def test_masked_whiten_gives_mean_zero_std_one_over_masked_entries():
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(3, 7, generator=generator, dtype=torch.float64) * 5 + 3
    mask = t([[1] * 7, [1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0]])
    kept = mask.bool()
    whitened = masked_whiten(values, mask)
    assert abs(whitened[kept].mean().item()) < 1e-9
    assert abs(whitened[kept].std().item() - 1.0) < 1e-6
    assert torch.all(whitened[~kept] == 0)
    rescaled = masked_whiten(values, mask, shift_mean=False)
    assert rescaled[kept].mean().item() == pytest.approx(values[kept].mean().item(), abs=1e-9)
    assert rescaled[kept].std().item() == pytest.approx(1.0, abs=1e-6)


# --- truncation --------------------------------------------------------------------------------------------------


def test_truncate_after_eos_positions():
    responses = torch.tensor(
        [
            [2, 5, 6, 7],  # EOS first
            [5, 2, 6, 7],  # EOS in the middle
            [5, 6, 7, 2],  # EOS last
            [5, 6, 7, 8],  # no EOS
            [5, 2, 6, 2],  # several EOS: the first one counts
            [0, 0, 0, 0],  # only pad tokens: no EOS, nothing is cut
        ]
    )
    truncated, mask, last_index, ended = truncate_after_eos(responses, EOS, PAD)
    assert truncated.tolist() == [
        [2, 0, 0, 0],
        [5, 2, 0, 0],
        [5, 6, 7, 2],
        [5, 6, 7, 8],
        [5, 2, 0, 0],
        [0, 0, 0, 0],
    ]
    assert mask.tolist() == [
        [1, 0, 0, 0],
        [1, 1, 0, 0],
        [1, 1, 1, 1],
        [1, 1, 1, 1],
        [1, 1, 0, 0],
        [1, 1, 1, 1],
    ]
    assert last_index.tolist() == [0, 1, 3, 3, 1, 3]
    assert ended.tolist() == [True, True, True, False, True, False]


def test_truncate_after_eos_with_several_eos_ids():
    truncated, mask, last_index, ended = truncate_after_eos(torch.tensor([[5, 9, 2, 6]]), [2, 9], PAD)
    # 9 at index 1 comes before 2 at index 2
    assert truncated.tolist() == [[5, 9, 0, 0]]
    assert mask.tolist() == [[1, 1, 0, 0]]
    assert last_index.tolist() == [1]
    assert ended.tolist() == [True]


@pytest.mark.parametrize(
    ("responses", "eos", "match"),
    [
        (torch.tensor([[5, 2]]), [2, 0], "distinct from EOS"),
        (torch.tensor([[5, 2]]), [], "empty"),
        (torch.zeros(2, 0, dtype=torch.long), 2, "T >= 1"),
    ],
)
def test_truncate_after_eos_rejects_bad_input(responses, eos, match):
    with pytest.raises(ValueError, match=match):
        truncate_after_eos(responses, eos, PAD)


# --- KL estimators and rewards -----------------------------------------------------------------------------------


def test_kl_estimators_by_hand():
    logprobs = t([[-1.0, -2.0, -0.5]])
    ref_logprobs = t([[-1.5, -1.0, -0.5]])
    # r = ref - logprobs = [-0.5, 1.0, 0.0]
    # k1 = -r = [0.5, -1.0, 0.0]   (negative on the second token)
    assert_close(kl_estimate(logprobs, ref_logprobs, "k1"), [[0.5, -1.0, 0.0]])
    # k2 = r^2 / 2 = [0.25 / 2, 1 / 2, 0] = [0.125, 0.5, 0]
    assert_close(kl_estimate(logprobs, ref_logprobs, "k2"), [[0.125, 0.5, 0.0]])
    # k3 = e^r - 1 - r: e^-0.5 = 0.60653066 -> 0.60653066 - 1 + 0.5 = 0.10653066 ; e - 2 = 0.71828183 ; 0
    assert_close(kl_estimate(logprobs, ref_logprobs, "k3"), [[0.10653066, 0.71828183, 0.0]], atol=1e-8)


def test_k3_is_non_negative_where_k1_is_negative():
    generator = torch.Generator().manual_seed(1)
    logprobs = -torch.rand(4, 16, generator=generator, dtype=torch.float64) * 5
    ref_logprobs = -torch.rand(4, 16, generator=generator, dtype=torch.float64) * 5
    assert (kl_estimate(logprobs, ref_logprobs, "k1") < 0).any()
    assert (kl_estimate(logprobs, ref_logprobs, "k3") >= 0).all()
    assert (kl_estimate(logprobs, ref_logprobs, "k2") >= 0).all()


def test_unknown_kl_estimator_names_the_accepted_ones():
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_estimate(t([[0.0]]), t([[0.0]]), "k4")


def test_per_token_rewards_place_the_score_exactly_at_the_eos():
    _, mask, last_index, _ = truncate_after_eos(torch.tensor([[5, 2, 6, 7], [5, 6, 7, 8]]), EOS, PAD)
    kl = t([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]])
    rewards = per_token_rewards(t([10.0, 20.0]), kl, 0.5, mask, last_index)
    # row 0 (EOS at 1): -0.5*0.1 = -0.05 ; -0.5*0.2 + 10 = 9.9 ; masked -> 0, 0
    # row 1 (no EOS, last token 3): -0.25, -0.3, -0.35, -0.4 + 20 = 19.6
    assert_close(rewards, [[-0.05, 9.9, 0.0, 0.0], [-0.25, -0.3, -0.35, 19.6]])


def test_per_token_rewards_off_by_one():
    responses = torch.tensor([[5, 6, 2, 7, 8]])  # EOS at index 2
    _, mask, last_index, _ = truncate_after_eos(responses, EOS, PAD)
    rewards = per_token_rewards(t([1.0]), torch.zeros(1, 5, dtype=torch.float64), 0.1, mask, last_index)
    assert rewards.tolist() == [[0.0, 0.0, 1.0, 0.0, 0.0]]  # not at index 1, not at index 3


# --- GAE ---------------------------------------------------------------------------------------------------------


def test_gae_gamma_one_lambda_095_with_masked_tail():
    rewards = t([[0.0, 0.0, 1.0, 5.0]])
    values = t([[0.5, 0.2, 0.4, 9.0]])  # the tail's 5.0 and 9.0 must be ignored (V = 0 after the last real token)
    mask = t([[1, 1, 1, 0]])
    advantages, returns = gae_advantages(rewards, values, mask, gamma=1.0, lam=0.95)
    # deltas: t2 = 1 + 0 - 0.4 = 0.6 ; t1 = 0 + 0.4 - 0.2 = 0.2 ; t0 = 0 + 0.2 - 0.5 = -0.3
    # A2 = 0.6 ; A1 = 0.2 + 0.95 * 0.6 = 0.77 ; A0 = -0.3 + 0.95 * 0.77 = 0.4315
    assert_close(advantages, [[0.4315, 0.77, 0.6, 0.0]])
    # returns = A + V: 0.4315 + 0.5 = 0.9315, 0.77 + 0.2 = 0.97, 0.6 + 0.4 = 1.0
    assert_close(returns, [[0.9315, 0.97, 1.0, 0.0]])


def test_gae_other_gamma_lambda_two_rows():
    rewards = t([[1.0, 0.0, 2.0], [0.0, 3.0, 7.0]])
    values = t([[0.5, 1.0, 1.5], [1.0, 2.0, 4.0]])
    mask = t([[1, 1, 1], [1, 1, 0]])
    advantages, returns = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.5)
    # gamma * lam = 0.45
    # row 0 deltas: 1 + 0.9*1.0 - 0.5 = 1.4 ; 0 + 0.9*1.5 - 1.0 = 0.35 ; 2 + 0 - 1.5 = 0.5
    #   A2 = 0.5 ; A1 = 0.35 + 0.45*0.5 = 0.575 ; A0 = 1.4 + 0.45*0.575 = 1.65875
    # row 1 (last real token 1): deltas 0 + 0.9*2.0 - 1.0 = 0.8 ; 3 + 0.9*0 - 2.0 = 1.0
    #   A1 = 1.0 ; A0 = 0.8 + 0.45*1.0 = 1.25
    assert_close(advantages, [[1.65875, 0.575, 0.5], [1.25, 1.0, 0.0]])
    # returns: 1.65875 + 0.5, 0.575 + 1.0, 0.5 + 1.5 ; 1.25 + 1.0, 1.0 + 2.0, 0
    assert_close(returns, [[2.15875, 1.575, 2.0], [2.25, 3.0, 0.0]])


# --- losses ------------------------------------------------------------------------------------------------------


def test_policy_loss_clipping_bites_for_positive_and_negative_advantages():
    ratios = t([[1.5, 0.5, 0.5, 1.1, 3.0]])
    advantages = t([[1.0, -1.0, 2.0, -2.0, 100.0]])
    mask = t([[1, 1, 1, 1, 0]])
    old_logprobs = t([[-1.0, -2.0, -3.0, -0.5, -1.0]])
    logprobs = (old_logprobs + ratios.log()).requires_grad_()
    loss, stats = policy_loss(logprobs, old_logprobs, advantages, mask, clip_range=0.2)
    # token: max(-A*ratio, -A*clamp(ratio, 0.8, 1.2))
    #   A=+1, r=1.5: max(-1.5, -1.2) = -1.2   clipped (positive A)
    #   A=-1, r=0.5: max( 0.5,  0.8) =  0.8   clipped (negative A)
    #   A=+2, r=0.5: max(-1.0, -1.6) = -1.0   unclipped (pessimistic side)
    #   A=-2, r=1.1: max( 2.2,  2.2) =  2.2   inside the range
    #   5th token masked out
    # loss = (-1.2 + 0.8 - 1.0 + 2.2) / 4 = 0.2 ; clipfrac = 2 / 4
    assert_close(loss, 0.2)
    assert_close(stats["clipfrac"], 0.5)
    # mean ratio = (1.5 + 0.5 + 0.5 + 1.1) / 4 = 0.9
    assert_close(stats["ratio"], 0.9)
    # approxkl = 0.5 * (ln1.5^2 + 2 ln0.5^2 + ln1.1^2) / 4 = 0.5 * (0.164402 + 0.960906 + 0.009084) / 4 = 0.141799
    assert_close(stats["approxkl"], 0.141799, atol=1e-6)
    assert not any(value.requires_grad for value in stats.values())
    loss.backward()
    # clipped tokens get no gradient; unclipped ones d/dlogp (-A * ratio) / 4 = -A * ratio / 4:
    #   -2 * 0.5 / 4 = -0.25 ; 2 * 1.1 / 4 = 0.55
    assert_close(logprobs.grad, [[0.0, 0.0, -0.25, 0.55, 0.0]])


def test_policy_loss_at_ratio_one():
    logprobs = t([[-0.3, -1.7, -2.2, -0.9]])
    advantages = t([[1.0, -2.0, 3.0, 100.0]])
    mask = t([[1, 1, 1, 0]])
    loss, stats = policy_loss(logprobs, logprobs.clone(), advantages, mask, clip_range=0.2)
    # ratio 1 everywhere: loss = -mean(A) = -(1 - 2 + 3) / 3 = -2/3
    assert_close(loss, -2 / 3)
    assert stats["ratio"].item() == 1.0
    assert stats["approxkl"].item() == 0.0
    assert stats["clipfrac"].item() == 0.0


def test_value_loss_clipping_by_hand():
    old_values = t([[1.0, 1.0, 1.0, 0.0, 0.0]])
    values = t([[1.5, 1.1, 0.5, -1.0, 50.0]])
    returns = t([[2.0, 0.0, 2.0, -2.0, 0.0]])
    mask = t([[1, 1, 1, 1, 0]])
    loss, stats = value_loss(values, old_values, returns, mask, clip_range=0.2)
    # clipped v = old + clamp(v - old, -0.2, 0.2); terms (v - R)^2 vs (clipped v - R)^2:
    #   v=1.5 -> 1.2: 0.25 vs 0.64 -> 0.64 clipped
    #   v=1.1 -> 1.1: 1.21 vs 1.21 -> 1.21
    #   v=0.5 -> 0.8: 2.25 vs 1.44 -> 2.25
    #   v=-1  -> -0.2: 1.00 vs 3.24 -> 3.24 clipped
    # loss = 0.5 * (0.64 + 1.21 + 2.25 + 3.24) / 4 = 0.5 * 7.34 / 4 = 0.9175 ; clipfrac = 2 / 4
    assert_close(loss, 0.9175)
    assert_close(stats["clipfrac"], 0.5)


# --- score normalization (RLPrompt's z-score; GRPO-style groups) --------------------------------------------------


def test_zscore_by_hand():
    # population 1, 2, 3, 6: mean 3, unbiased variance (4 + 1 + 0 + 9) / 3 = 14/3, std 2.160247
    scores = t([1.0, 6.0])
    expected = [(1 - 3) / (14 / 3) ** 0.5, (6 - 3) / (14 / 3) ** 0.5]
    assert_close(zscore(scores, t([1.0, 2.0, 3.0, 6.0]), eps=0.0), expected)
    # RLPrompt's eps: (r - mean) / (std + 1e-4)
    assert_close(
        zscore(scores, t([1.0, 2.0, 3.0, 6.0]), eps=1e-4), [(1 - 3) / (2.1602469 + 1e-4), 3 / (2.1602469 + 1e-4)]
    )
    # identical scores: 0 / eps = 0, not NaN; a population of one has std 0
    assert_close(zscore(t([5.0, 5.0]), t([5.0, 5.0]), eps=1e-4), [0.0, 0.0])
    assert_close(zscore(t([5.0]), t([5.0]), eps=1e-4), [0.0])


def test_group_zscore_normalizes_each_prompts_responses_alone():
    scores = t([1.0, 3.0, 10.0, 30.0])  # two prompts, two responses each
    # group (1, 3): mean 2, std sqrt(2); group (10, 30): mean 20, std sqrt(200)
    root2 = 2**0.5
    assert_close(group_zscore(scores, 2, eps=0.0), [-1 / root2, 1 / root2, -1 / root2, 1 / root2])


def test_dense_rewards_add_to_kl_and_score_and_give_hand_computed_returns():
    """Per-token rewards (one per edit, say) sit on their own tokens next to -beta * KL and the episode score."""
    responses = torch.tensor([[5, 6, 2, 7]])  # EOS at 2
    _, mask, last_index, _ = truncate_after_eos(responses, EOS, PAD)
    kl = t([[0.2, 0.4, 0.0, 9.0]])
    dense = t([[1.0, -0.5, 2.0, 100.0]])  # the 100 after the end must be ignored
    rewards = per_token_rewards(t([3.0]), kl, 0.5, mask, last_index, dense)
    # t0: -0.1 + 1 = 0.9 ; t1: -0.2 - 0.5 = -0.7 ; t2: 0 + 2 + 3 = 5 ; t3: masked
    assert_close(rewards, [[0.9, -0.7, 5.0, 0.0]])
    advantages, returns = gae_advantages(rewards, t([[0.5, 1.0, 2.0, 4.0]]), mask, gamma=1.0, lam=0.95)
    # deltas: t2 = 5 - 2 = 3 ; t1 = -0.7 + 2 - 1 = 0.3 ; t0 = 0.9 + 1 - 0.5 = 1.4
    # A2 = 3 ; A1 = 0.3 + 0.95 * 3 = 3.15 ; A0 = 1.4 + 0.95 * 3.15 = 4.3925
    assert_close(advantages, [[4.3925, 3.15, 3.0, 0.0]])
    assert_close(returns, [[4.8925, 4.15, 5.0, 0.0]])


# --- KL controllers ----------------------------------------------------------------------------------------------


def test_adaptive_kl_controller_by_hand():
    controller = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10000)
    # e = clip(kl / 6 - 1, -0.2, 0.2); value *= 1 + e * 1000 / 10000
    expected = [
        (9.0, 0.204),  # e = 0.5 -> 0.2: 0.2 * 1.02 = 0.204
        (6.6, 0.20604),  # e = 0.1: 0.204 * 1.01 = 0.20604
        (3.0, 0.2019192),  # e = -0.5 -> -0.2: 0.20604 * 0.98 = 0.2019192
        (5.4, 0.199900008),  # e = -0.1: 0.2019192 * 0.99 = 0.199900008
    ]
    for kl, value in expected:
        controller.update(kl, n_steps=1000)
        assert controller.value == pytest.approx(value, abs=1e-12)


def test_fixed_kl_controller_never_changes():
    controller = make_kl_controller("fixed", 0.05, None, 10000)
    assert isinstance(controller, FixedKLController)
    for kl in (100.0, 0.0, -3.0):
        controller.update(kl, n_steps=512)
    assert controller.value == 0.05


def test_kl_controller_state_round_trip():
    controller = make_kl_controller("adaptive", 0.2, 6.0, 10000)
    controller.update(9.0, n_steps=1000)
    restored = make_kl_controller("adaptive", 0.2, 6.0, 10000)
    restored.load_state_dict(controller.state_dict())
    assert restored.value == pytest.approx(0.204)
    with pytest.raises(ValueError, match="same kl controller"):
        make_kl_controller("fixed", 0.2, None, 10000).load_state_dict(controller.state_dict())


@pytest.mark.parametrize(
    ("kind", "target", "match"),
    [("adaptive", None, "positive target"), ("adaptive", 0.0, "positive target"), ("adaptive", -1.0, "positive")],
)
def test_adaptive_kl_controller_needs_positive_target(kind, target, match):
    with pytest.raises(ValueError, match=match):
        make_kl_controller(kind, 0.2, target, 10000)


def test_unknown_kl_controller_kind():
    with pytest.raises(ValueError, match="fixed, adaptive"):
        make_kl_controller("pid", 0.2, 6.0, 10000)


def test_token_logprobs_of_bf16_logits_are_float32_and_close_to_the_float32_ones():
    logits = torch.randn(3, 5, 40, generator=torch.Generator().manual_seed(0)) * 4
    tokens = torch.randint(0, 40, (3, 5), generator=torch.Generator().manual_seed(1))
    rounded = logits.bfloat16()
    from_bf16 = token_logprobs(rounded, tokens, temperature=0.7)
    assert from_bf16.dtype == torch.float32
    expected = torch.log_softmax(rounded.float() / 0.7, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(from_bf16, expected, atol=1e-5, rtol=1e-5)
