"""The rollout and reward seam serving a non-RLHF environment, as prompt optimization uses it: a constant policy
input, a fixed number of generated tokens (EOS suppressed), several samples of that input, a batch-normalized score
from a module:Class reward built with reward_kwargs, and per-token rewards from an episode source; the first
minibatch still sees exactly the sampling distribution."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer

import stages.ppo.__main__ as ppo_stage
from tests.ppo_testing import RecordingTrainer, ppo_argv, run_ppo

LENGTH, SAMPLES = 5, 8


def test_constant_input_fixed_length_batch_normalized_and_per_token_rewards(sft_model, tmp_path, monkeypatch):
    monkeypatch.setattr(ppo_stage, "PPOTrainer", RecordingTrainer)
    constant = tmp_path / "constant.jsonl"
    constant.write_text(json.dumps({"prompt": "Review:"}) + "\n")
    records = run_ppo(
        ppo_argv(
            tmp_path,
            "r",
            sft_model,
            dataset_name=constant,
            eval_dataset_name=constant,
            fixed_response_length="true",
            response_length=LENGTH,
            num_generations=SAMPLES,
            per_device_train_batch_size=4,
            num_mini_batches=2,
            score_normalization="batch",
            reward="tests.rewards_for_tests:WordCount,tests.rewards_for_tests:FirstTokenBonus",
            reward_kwargs=json.dumps({"tests.rewards_for_tests:WordCount": {"word": "the"}}),
            gold_reward=None,
            total_episodes=3 * SAMPLES,
            eval_prompts=1,
        )
    )
    trainer = RecordingTrainer.latest
    tokenizer = AutoTokenizer.from_pretrained(sft_model)
    prompt = tokenizer("Review:")["input_ids"]
    for rollout in trainer.rollouts:
        ids = rollout["input_ids"]
        assert ids.shape == (SAMPLES, len(prompt) + LENGTH)
        assert (ids[:, : len(prompt)] == torch.tensor(prompt)).all()  # one constant input, 8 samples of it
        assert (rollout["response_lengths"] == LENGTH).all() and not (ids == tokenizer.eos_token_id).any()
    for record in records:
        assert abs(record["first/ratio"] - 1) < 1e-6 and record["first/approxkl"] < 1e-10
        assert record["val/num_eos_tokens"] == SAMPLES  # a fixed-length episode ends at its length
        # z-scored word counts average 0 over the batch; the per-token bonus adds 1 per episode
        assert record["objective/scores"] == pytest.approx(1.0, abs=1e-5)
        assert record["rewards/FirstTokenBonus"] == 1.0
    assert any(record["rewards/WordCount"] > 0 for record in records), "no 'the' sampled: z-scores were all 0"
    assert torch.cat([r["raw_scores"] for r in trainer.rollouts]).std() > 0
