"""PPO learns: a tiny SFT policy, rewarded for saying "I" (tests.rewards_for_tests:count_i), says it clearly more
within 16 updates, in both value layouts (the adapter one with the value adapter on every layer or the top
layer only), with KL bounded; a large KL coefficient keeps it at the reference.

Thresholds come from runs with seeds 0-3 (16 updates of 16 episodes, response length 12):
score mean of the first 3 updates 0.50-0.67, of the last 3 updates 2.79-4.94 (gain 2.19-4.29);
objective/kl peaked at 7.9-19.6; with kl_coef 5 the score stayed flat and |objective/kl| <= 0.68
(mean |kl| over the updates 0.11-0.22). With the value adapter on the top layer only (value_adapter_layers 1,
seeds 0-3): gain 2.25-2.60, KL peak 8.1-12.0.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ppo_testing import ppo_argv, run_ppo, tiny_reward_model

LEARNING = {
    "reward": "tests.rewards_for_tests:count_i",
    "response_length": 12,
    "per_device_train_batch_size": 8,
    "num_mini_batches": 2,
    "num_ppo_epochs": 4,
    "total_episodes": 16 * 16,
}


@pytest.fixture(scope="module")
def reward_model(tiny_base, tmp_path_factory) -> Path:
    return tiny_reward_model(tiny_base, tmp_path_factory.mktemp("rm") / "model")


def first_and_last(records: list[dict], key: str, n: int = 3) -> tuple[float, float]:
    values = [r[key] for r in records]
    return sum(values[:n]) / n, sum(values[-n:]) / n


@pytest.mark.parametrize(("layout", "value_adapter_layers"), [("adapter", 0), ("adapter", 1), ("separate", 0)])
def test_score_rises_with_bounded_kl(sft_model, reward_model, tmp_path, layout, value_adapter_layers):
    options = {"value_model": layout, "value_adapter_layers": value_adapter_layers, **LEARNING}
    records = run_ppo(ppo_argv(tmp_path, "r", sft_model, reward_model_path=reward_model, **options))

    assert len(records) == 16
    first, last = first_and_last(records, "objective/scores")
    assert last > first + 1.0, (first, last)
    kls = [r["objective/kl"] for r in records]
    # The policy did move away from the reference (KL is live), yet stays far from a blow-up.
    assert 3.0 < max(kls) < 40.0, kls


def test_large_kl_coefficient_keeps_the_policy_at_the_reference(sft_model, tmp_path):
    records = run_ppo(ppo_argv(tmp_path, "r", sft_model, kl_coef=5.0, **LEARNING))

    kls = [r["objective/kl"] for r in records]
    assert max(abs(kl) for kl in kls) < 1.5, kls
    assert sum(abs(kl) for kl in kls) / len(kls) < 0.5, kls
    first, last = first_and_last(records, "objective/scores")
    assert last < first + 1.0, (first, last)
