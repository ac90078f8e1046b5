"""The dense edit reward: each action token is rewarded by how much its edit changed the task model's score of the
training query, ``score(after) - score(before)``; the stop token (EOS) gets 0.

With ``score = gold_coef * log P(gold) - other_coef * max over other classes log P(c)`` (``edit_score``), an
episode's rewards sum to the score of its final prompt minus that of the initial prompt. The source returns ``[B, T]``
per-token rewards over the response tokens; the engine adds them to the KL-shaped rewards and runs GAE on them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pipeline.errors import PipelineError
from reward_models.base import Episodes
from reward_models.prompt_task import edit_score
from stages.prompt_edit.environment import EditSpace, PromptState
from stages.prompt_edit.scoring import StateScorer


class ActionTokens:
    """The token of each action, and the actions an episode's tokens stand for (up to its stop token)."""

    def __init__(self, token_ids: Sequence[int], stop_ids: Sequence[int]) -> None:
        self.token_ids, self.stop_ids = list(token_ids), set(stop_ids)
        self.action_of = {token: index for index, token in enumerate(self.token_ids)}

    def actions(self, tokens: Sequence[int]) -> list[int]:
        """The action indices of ``tokens``, ending at the first stop token (not included)."""
        actions = []
        for token in tokens:
            if token in self.stop_ids:
                break
            if token not in self.action_of:
                raise PipelineError(f"token {token} is not an action token: the policy sampled outside the action set")
            actions.append(self.action_of[token])
        return actions

    def episode_actions(self, responses: torch.Tensor, response_mask: torch.Tensor) -> list[list[int]]:
        """The actions of each episode of a ``[B, T]`` batch of responses."""
        lengths = response_mask.sum(1).long().tolist()
        return [self.actions(row[:length]) for row, length in zip(responses.tolist(), lengths, strict=True)]


class EditReward:
    """Episode reward source: ``score_episodes`` replays each episode's edits on the initial prompt and puts each
    edit's score change on its token (see the module docstring). Episodes carry ``query`` and ``label`` columns."""

    __name__ = "edit_gain"

    def __init__(
        self,
        space: EditSpace,
        scorer: StateScorer,
        initial: PromptState,
        tokens: ActionTokens,
        gold_coef: float = 1.0,
        other_coef: float = 0.0,
    ) -> None:
        self.space, self.scorer, self.initial, self.tokens = space, scorer, initial, tokens
        self.gold_coef, self.other_coef = gold_coef, other_coef

    def scores(self, queries: Sequence[str], labels: Sequence[int], states: Sequence[PromptState]) -> torch.Tensor:
        """``edit_score`` of each query under the state beside it, shape [len(queries)]."""
        logits = self.scorer.logits(queries, states)
        return edit_score(logits, torch.tensor(list(labels)), self.gold_coef, self.other_coef)

    def trajectories(self, actions: Sequence[Sequence[int]]) -> list[list[PromptState]]:
        """Each episode's states: the initial prompt, then the prompt after each of its actions."""
        return [self.space.replay(self.initial, episode) for episode in actions]

    def score_episodes(self, episodes: Episodes) -> torch.Tensor:
        """``[B, T]`` rewards: on an action token the score change of its edit, 0 on the stop token and after."""
        actions = self.tokens.episode_actions(episodes.responses, episodes.response_mask)
        trajectories = self.trajectories(actions)
        queries, labels = episodes.columns["query"], episodes.columns["label"]
        flat = [(i, state) for i, states in enumerate(trajectories) for state in states]
        scores = self.scores([queries[i] for i, _ in flat], [labels[i] for i, _ in flat], [s for _, s in flat])
        rewards = torch.zeros(episodes.responses.shape, dtype=torch.float32)
        start = 0
        for row, states in enumerate(trajectories):
            path = scores[start : start + len(states)]
            rewards[row, : len(states) - 1] = path[1:] - path[:-1]
            start += len(states)
        return rewards.to(episodes.responses.device)
