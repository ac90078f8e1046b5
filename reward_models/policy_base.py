"""A reward model that reads the policy's own token ids: a reward adapter on the policy's base model.

When the reward model is a LoRA adapter trained on the SFT model, the PPO engine puts it on the policy's base (one
base in memory for policy, reference, value and reward) and scores each episode from the token ids the policy
sampled, as trl 1.12 and OpenRLHF feed their reward models, instead of decoding and re-tokenizing the text.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from reward_models.base import Episodes


class PolicyBaseReward:
    """An episode source: ``scorer(input_ids, attention_mask) -> [B]`` reads the reward model's score of each whole
    sequence (at its last attended token: the EOS of a finished response)."""

    __name__ = "reward_model"

    def __init__(self, scorer: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        self.scorer = scorer

    @torch.no_grad()
    def score_episodes(self, episodes: Episodes) -> torch.Tensor:
        return self.scorer(episodes.input_ids, episodes.attention_mask)
