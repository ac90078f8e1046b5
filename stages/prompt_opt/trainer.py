"""The engine's trainer for prompt policies: PPO or soft Q-learning on the same rollouts, keeping every sampled
prompt and scoring the policy's greedy prompt on dev along the way."""

from __future__ import annotations

import torch
from accelerate.utils import gather_object

from pipeline.classification import LabelledTexts
from reward_models.base import Episodes
from reward_models.prompt_task import PromptTaskReward
from reward_models.registry import Rewards, RewardSources
from stages.ppo.evaluate import sequence_kl
from stages.ppo.modeling import position_ids_from
from stages.ppo.trainer import PPOTrainer, Timer
from stages.prompt_opt.search import PromptSearch
from stages.prompt_opt.sql import SQLBatch, SQLUpdate


class PromptOptTrainer(PPOTrainer):
    """PPO on prompts (see ``PPOTrainer``) rewarded by ``task``; prompts are scored on ``dev`` along the way."""

    def __init__(
        self, *args, task: PromptTaskReward, dev: LabelledTexts, search: PromptSearch, dev_every: int, **kwargs
    ) -> None:
        super().__init__(*args, rewards=RewardSources([task], [1.0], [task.__name__]), **kwargs)
        self.task, self.dev, self.search, self.dev_every = task, dev, search, dev_every

    def checkpointed_state(self) -> list:
        return [*super().checkpointed_state(), self.search]

    def dev_accuracy(self, prompts: list[str]) -> list[float]:
        return self.task.accuracy(prompts, self.dev.texts, self.dev.labels).tolist()

    def collect(self, rows: dict[str, list], timer: Timer) -> tuple[Episodes, Rewards, Rewards | None, torch.Tensor]:
        scored_before = self.task.prompts_scored
        episodes, rewards, gold, scores = super().collect(rows, timer)
        gather = self.accelerator.gather
        self.search.record(gather_object(episodes.completions), gather(episodes.responses), gather(rewards.totals))
        self.newly_scored = self.task.prompts_scored - scored_before
        return episodes, rewards, gold, scores

    def evaluation_metrics(self, update: int) -> dict[str, float]:
        """Every ``dev_every`` updates (and after the last), the greedy prompt's dev accuracy."""
        metrics = {}
        if update % self.dev_every == 0 or update == self.state.max_steps:
            greedy = self.sample(self.prompts[:1], greedy=True)
            text = greedy.completions[0]
            accuracy = self.dev_accuracy([text])[0]
            self.search.record_greedy(text, greedy.responses[0].tolist(), update, accuracy)
            metrics["dev/accuracy"] = accuracy
        return metrics

    def reward_metrics(self, rewards: Rewards, gold: Rewards | None) -> dict[str, float]:
        """Also the prompts the task model scored this update (those not cached from earlier updates)."""
        return {**super().reward_metrics(rewards, gold), "reward/prompts_scored": float(self.newly_scored)}


class SQLPromptTrainer(PromptOptTrainer):
    """Soft Q-learning (``sql.py``) on the same rollouts: the step's z-scored rewards, scaled, at each prompt's last
    token; the model is a ``PolicyAndTarget``."""

    def prepare_update(self) -> None:
        self.sql_update = SQLUpdate(
            self.model_wrapped, self.optimizer, self.accelerator, self.args, self.sampler.rules, self.model
        )

    def learn(self, episodes: Episodes, rewards: Rewards, scores: torch.Tensor, timer: Timer) -> dict[str, float]:
        with timer("forward"):
            kl = sequence_kl(self, episodes)  # to the initial policy, for the figures: SQL has no KL penalty
        batch = SQLBatch(
            input_ids=episodes.input_ids,
            attention_mask=episodes.attention_mask,
            position_ids=position_ids_from(episodes.attention_mask),
            responses=episodes.responses,
            response_mask=episodes.response_mask,
            rewards=scores * self.args.sql_reward_scale,
        )
        with timer("update"), self.computing(autocast=False):
            metrics = self.sql_update(batch)
        metrics.update(self.reduce({"objective/kl": kl.mean(), "objective/scores": batch.rewards.mean()}))
        self._check_finite(metrics, ("loss/sql", "objective/kl"))
        return metrics
