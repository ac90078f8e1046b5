"""Rule rewards for the PPO tests, named on the command line as ``tests.rewards_for_tests:<name>``."""

from __future__ import annotations

import re

import torch

from reward_models.base import completion_text

_WORD_I = re.compile(r"\bI\b")


def count_i(prompts: list[str], completions: list[str], **columns) -> list[float]:
    """How often the word "I" occurs in each completion.

    The demo's reviews often speak in the first person, so a tiny SFT policy samples "I" now and then and can
    learn within a few updates to say it more: a dense, fast-to-learn signal for the learning tests.
    """
    return [float(len(_WORD_I.findall(completion_text(c)))) for c in completions]


def completion_length(prompts: list[str], completions: list[str], **columns) -> list[float]:
    """Number of characters of each completion."""
    return [float(len(text)) for text in completions]


def scaled_length(prompts: list[str], completions: list[str], scale: float = 1.0, **columns) -> list[float]:
    """Number of characters of each completion times ``scale`` (a keyword argument from reward_kwargs)."""
    return [scale * len(text) for text in completions]


class LengthTarget:
    """A reward class built from reward_kwargs: minus the distance of each completion's length from ``target``."""

    def __init__(self, target: int) -> None:
        self.target = target

    def __call__(self, prompts: list[str], completions: list[str], **columns) -> list[float]:
        return [-float(abs(len(text) - self.target)) for text in completions]


class FirstTokenBonus:
    """An episode source with per-token rewards: 1 on each response's first token."""

    def score_episodes(self, episodes) -> torch.Tensor:
        rewards = torch.zeros_like(episodes.response_mask, dtype=torch.float32)
        rewards[:, 0] = 1.0
        return rewards


def raises_value_error(prompts: list[str], completions: list[str], **columns) -> list[float]:
    """A reward with a bug in it."""
    raise ValueError(f"no score for {completions[0]!r}")


def one_score_too_few(prompts: list[str], completions: list[str], **columns) -> list[float]:
    """A broken reward: one score fewer than completions."""
    return [0.0] * (len(completions) - 1)


class NonFiniteFromCall:
    """Scores 0 until the ``call``-th call, then ``value`` (NaN or inf) for every completion.

    One call scores one rollout batch, so with no gold scorer and no reward normalization the ``call``-th call
    is the ``call``-th update. ``calls`` counts across runs in one process: reset it before each run.
    """

    def __init__(self, call: int, value: float) -> None:
        self.call, self.value, self.calls = call, value, 0

    def __call__(self, prompts: list[str], completions: list[str], **columns) -> list[float]:
        self.calls += 1
        return [self.value if self.calls >= self.call else 0.0] * len(completions)


nan_from_third_call = NonFiniteFromCall(3, float("nan"))
inf_from_third_call = NonFiniteFromCall(3, float("inf"))


class WordCount:
    """A reward class built from reward_kwargs: how often ``word`` occurs in each completion."""

    def __init__(self, word: str) -> None:
        self.pattern = re.compile(rf"\b{re.escape(word)}\b")

    def __call__(self, prompts: list, completions: list, **columns) -> list[float]:
        return [float(len(self.pattern.findall(completion_text(c)))) for c in completions]
