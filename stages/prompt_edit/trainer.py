"""The engine's trainer for the edit policy: PPO on edit episodes rewarded per edit, logging which edits it makes and
the accuracy of its greedy edits on the dev queries along the way."""

from __future__ import annotations

import torch

from pipeline.classification import LabelledTexts
from reward_models.base import Episodes
from reward_models.prompt_task import correct
from reward_models.registry import Rewards, RewardSources
from stages.ppo.trainer import PPOTrainer, Timer
from stages.prompt_edit.reward import EditReward


def query_rows(template_inputs: list[str], queries: LabelledTexts) -> dict[str, list]:
    """Engine prompt rows for queries: the policy's input, the query and its label (read by the edit reward)."""
    return {"prompt": template_inputs, "query": list(queries.texts), "label": list(queries.labels)}


class PromptEditTrainer(PPOTrainer):
    """PPO (see ``PPOTrainer``) on edit episodes scored by ``reward``; greedy edits are scored on ``dev`` rows."""

    def __init__(self, *args, reward: EditReward, dev: dict[str, list], dev_every: int, **kwargs) -> None:
        super().__init__(*args, rewards=RewardSources([reward], [1.0], [reward.__name__]), **kwargs)
        self.reward, self.dev, self.dev_every = reward, dev, dev_every

    def greedy_actions(self, rows: dict[str, list], chunk: int = 64) -> list[list[int]]:
        """The policy's greedy actions for engine rows (the most likely allowed token at each step, until EOS)."""
        actions: list[list[int]] = []
        for start in range(0, len(rows["prompt"]), chunk):
            part = {key: values[start : start + chunk] for key, values in rows.items()}
            episodes = self.sample(part, greedy=True)
            actions += self.reward.tokens.episode_actions(episodes.responses, episodes.response_mask)
        return actions

    def collect(self, rows: dict[str, list], timer: Timer) -> tuple[Episodes, Rewards, Rewards | None, torch.Tensor]:
        scored_before = self.reward.scorer.pairs_scored
        episodes, rewards, gold, scores = super().collect(rows, timer)
        actions = self.reward.tokens.episode_actions(episodes.responses, episodes.response_mask)
        space, initial = self.reward.space, self.reward.initial
        effective = [space.effective(initial, episode) for episode in actions]
        counts = space.counts(effective)
        taken = sum(len(episode) for episode in actions)
        self.edit_metrics = {
            "edits/mean": counts["mean_edits"],
            "edits/actions": taken / len(actions),
            **{f"edits/{kind}": counts[kind] for kind in ("instruction", "exemplar", "verbalizer")},
            "edits/no_op": 1 - sum(len(e) for e in effective) / max(taken, 1),
            "reward/pairs_scored": float(self.reward.scorer.pairs_scored - scored_before),
        }
        return episodes, rewards, gold, scores

    def reward_metrics(self, rewards: Rewards, gold: Rewards | None) -> dict[str, float]:
        """Also the edits the sampled episodes made: the mean number of edits (actions that changed the prompt) and of
        actions, the share of each kind among the edits and of actions that changed nothing, and the (query, prompt)
        pairs the task model scored (those not cached)."""
        extra = self.reduce({key: torch.tensor(value) for key, value in self.edit_metrics.items()})
        return {**super().reward_metrics(rewards, gold), **extra}

    def evaluation_metrics(self, update: int) -> dict[str, float]:
        """Every ``dev_every`` updates (and after the last): the greedy edits' accuracy and score gain on dev."""
        if update % self.dev_every and update != self.state.max_steps:
            return {}
        actions = self.greedy_actions(self.dev)
        finals = [states[-1] for states in self.reward.trajectories(actions)]
        queries, labels = self.dev["query"], self.dev["label"]
        accuracy = correct(self.reward.scorer.logits(queries, finals), torch.tensor(labels)).mean()
        gain = self.reward.scores(queries, labels, finals) - self.reward.scores(
            queries, labels, [self.reward.initial] * len(queries)
        )
        return {"dev/accuracy": accuracy.item(), "dev/score_gain": gain.mean().item()}
