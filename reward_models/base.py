"""The reward-source protocol, shared with TRL's reward functions (GRPO/RLOO), so any of those plugs in."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

from pipeline.errors import PipelineError


@runtime_checkable
class RewardFunction(Protocol):
    """``reward(prompts, completions, **columns) -> list[float] | Tensor``: one score per completion."""

    def __call__(self, prompts: list[str], completions: list[str], **columns) -> Sequence[float] | torch.Tensor: ...


def as_tensor(scores: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Scores from any reward source as a float32 CPU tensor; None (TRL's 'no score') becomes NaN."""
    if isinstance(scores, torch.Tensor):
        return scores.detach().float().cpu().reshape(-1)
    return torch.tensor([float("nan") if s is None else float(s) for s in scores], dtype=torch.float32)


def call_reward(function: RewardFunction, prompts: list, completions: list, **columns) -> torch.Tensor:
    """``function``'s scores as :func:`as_tensor` gives them, checked to be one score per completion."""
    scores = as_tensor(function(prompts=prompts, completions=completions, **columns))
    if scores.numel() != len(completions):
        name = getattr(function, "__name__", type(function).__name__)
        raise PipelineError(
            f"reward '{name}' returned {scores.numel()} scores for {len(completions)} completions; "
            "a reward function must return one score per completion"
        )
    return scores
