"""What prompt optimization found: every prompt the policy sampled with its train reward, and the dev accuracy of
the candidates; the prompt selected on dev."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch


@dataclass
class PromptRecord:
    """One distinct prompt text the policy wrote."""

    text: str
    token_ids: list[int]
    reward_sum: float = 0.0  # the train reward, summed over the times it was sampled
    times_sampled: int = 0
    greedy_at: int | None = None  # the update after which it was the policy's greedy prompt, if it was
    dev_accuracy: float | None = None

    @property
    def train_reward(self) -> float:
        return self.reward_sum / self.times_sampled if self.times_sampled else float("nan")

    def as_row(self) -> dict:
        return {**asdict(self), "train_reward": self.train_reward}


class PromptSearch:
    """Keeps every sampled prompt (by text: the task model reads text) and scores candidates on dev. Each process
    records every process's prompts, so all hold the same records."""

    def __init__(self) -> None:
        self.records: dict[str, PromptRecord] = {}

    def record(self, texts: list[str], token_ids: torch.Tensor, rewards: torch.Tensor) -> None:
        """Add one step's prompts with their train rewards."""
        for text, ids, reward in zip(texts, token_ids.tolist(), rewards.tolist(), strict=True):
            record = self.records.setdefault(text, PromptRecord(text, ids))
            record.reward_sum += reward
            record.times_sampled += 1

    def record_greedy(self, text: str, token_ids: list[int], update: int, dev_accuracy: float) -> None:
        record = self.records.setdefault(text, PromptRecord(text, token_ids))
        record.greedy_at, record.dev_accuracy = update, dev_accuracy

    def state_dict(self) -> dict:
        """Everything recorded so far (checkpoints keep it, so a resumed run selects among every prompt)."""
        return {"records": [asdict(record) for record in self.records.values()]}

    def load_state_dict(self, state: dict) -> None:
        self.records = {row["text"]: PromptRecord(**row) for row in state["records"]}

    def candidates(self, count: int) -> list[PromptRecord]:
        """The ``count`` sampled prompts with the best mean train reward, and every greedy prompt."""
        sampled = sorted(
            (r for r in self.records.values() if r.times_sampled), key=lambda r: r.train_reward, reverse=True
        )
        chosen = {r.text: r for r in sampled[:count]}
        chosen.update({r.text: r for r in self.records.values() if r.greedy_at is not None})
        return list(chosen.values())

    def select(self, count: int, dev_accuracy: Callable[[list[str]], list[float]]) -> list[PromptRecord]:
        """The candidates scored on dev, best first: by dev accuracy, then train reward (a greedy prompt never
        sampled ranks after sampled ones at equal accuracy)."""
        candidates = self.candidates(count)
        missing = [r for r in candidates if r.dev_accuracy is None]
        for record, accuracy in zip(missing, dev_accuracy([r.text for r in missing]), strict=True):
            record.dev_accuracy = accuracy
        return sorted(
            candidates,
            key=lambda r: (r.dev_accuracy, r.train_reward if r.times_sampled else float("-inf")),
            reverse=True,
        )
