"""The reward-source protocol and the episodes view a source receives.

A reward source is either a **text function** with TRL's reward-function signature (the one GRPO and RLOO take),
``reward(prompts, completions, **columns) -> list[float] | Tensor`` with one score per completion, or an **episode
source**, an object with ``score_episodes(episodes) -> Tensor`` that reads the sampled token ids as well (a reward
model on the policy's own base, a dense per-edit reward). An episode source returns one score per episode (``[B]``,
placed by the engine on the episode's last token) or per-token rewards (``[B, T]`` over the response tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from pipeline.errors import PipelineError, UserCodeError


@runtime_checkable
class RewardFunction(Protocol):
    """``reward(prompts, completions, **columns) -> list[float] | Tensor``: one score per completion."""

    def __call__(self, prompts: list, completions: list, **columns) -> Sequence[float] | torch.Tensor: ...


@runtime_checkable
class EpisodeReward(Protocol):
    """A source that scores the episodes themselves: ``[B]`` scores or ``[B, T]`` per-token rewards."""

    def score_episodes(self, episodes: Episodes) -> torch.Tensor: ...


@dataclass
class Episodes:
    """One batch of sampled episodes, as every reward source sees it.

    Text (``prompts``, ``completions``, ``columns``) serves TRL-style functions; token ids serve sources that read
    what the policy sampled. Conversational prompts are message lists and their completions one assistant message
    (``[{"role": "assistant", "content": text}]``), as in TRL's trainers.
    """

    prompts: list  # the prompt of each episode: text, or chat messages
    completions: list  # the decoded response up to its end (EOS and padding removed)
    columns: dict[str, list]  # the prompt rows' other columns, one value per episode
    input_ids: torch.Tensor  # [B, P + T] left-padded prompt + response
    attention_mask: torch.Tensor  # [B, P + T]
    responses: torch.Tensor  # [B, T] response tokens, padded after the episode's end
    response_mask: torch.Tensor  # [B, T] 1 up to and including the last token of the episode
    last_index: torch.Tensor  # [B] index of the episode's last response token (its EOS, if it ended with one)
    ended: torch.Tensor  # [B] bool: the episode ended (with EOS, or at its fixed length)

    def __len__(self) -> int:
        return self.responses.shape[0]


def completion_text(completion: str | list[dict]) -> str:
    """The text of a completion: the string itself, or the content of a conversational completion's messages."""
    if isinstance(completion, str):
        return completion
    return "".join(message["content"] for message in completion)


def reward_name(source: object) -> str:
    """The name a source is reported under: its ``__name__``, else its class name."""
    return getattr(source, "__name__", None) or type(source).__name__


def as_tensor(scores: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Scores from any reward source as a float32 CPU tensor; None (TRL's 'no score') becomes NaN."""
    if isinstance(scores, torch.Tensor):
        return scores.detach().float().cpu()
    return torch.tensor([float("nan") if s is None else float(s) for s in scores], dtype=torch.float32)


def call_reward(source: RewardFunction | EpisodeReward, episodes: Episodes) -> torch.Tensor:
    """``source``'s rewards for ``episodes``: ``[B]`` scores, or ``[B, T]`` per-token rewards (zero after each
    episode's end), float32 on the episodes' device.

    An exception raised inside the source is reported naming it, with its own traceback (see ``UserCodeError``).
    """
    name = reward_name(source)
    try:
        if isinstance(source, EpisodeReward):
            raw = source.score_episodes(episodes)
        else:
            raw = source(prompts=episodes.prompts, completions=episodes.completions, **episodes.columns)
    except PipelineError:
        raise
    except Exception as error:
        raise UserCodeError(f"reward '{name}' failed: {type(error).__name__}: {error}") from error
    rewards = as_tensor(raw)
    count, length = len(episodes), episodes.responses.shape[1]
    if rewards.dim() == 2 and rewards.shape == (count, length):
        return rewards.to(episodes.responses.device) * episodes.response_mask
    if rewards.dim() != 1 or rewards.numel() != count:
        raise PipelineError(
            f"reward '{name}' returned {tuple(rewards.shape) if rewards.dim() != 1 else rewards.numel()} scores for "
            f"{count} completions; a reward must return one score per completion (or, from score_episodes, "
            f"[{count}, {length}] per-token rewards)"
        )
    return rewards.to(episodes.responses.device)
