"""The dense edit reward: each action token gets its edit's score change, the stop token and the padding after it 0,
and the engine turns these into hand-computed per-token rewards, returns and whitened advantages."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from torch.testing import assert_close

from reward_models.base import Episodes
from reward_models.registry import RewardSources
from stages.ppo.core import truncate_after_eos
from stages.ppo.rollout import Passes, assemble
from stages.prompt_edit.environment import EditSpace, Exemplar, PromptState
from stages.prompt_edit.reward import ActionTokens, EditReward

EOS, PAD = 2, 0
SPACE = EditSpace(["A", "B", "C"], [Exemplar("n", 0), Exemplar("p", 1)], 1, [[" bad"], [" good", " great"]], ["n", "p"])
INITIAL = PromptState(("A", "B"), (0,), (" bad", " good"))
TOKEN = {i: 100 + i for i in range(len(SPACE))}  # action i is token 100 + i


def action(operation: str, first: int, second: int = -1) -> int:
    return next(
        i for i, a in enumerate(SPACE.actions) if (a.operation, a.first, a.second) == (operation, first, second)
    )


class LogitScorer:
    """Class logits [0, z] with z = number of instruction phrases + 2 if the positive verbalizer is ' great' + 1 for
    query 'q2'; so with gold_coef = other_coef = 1 the score is z for a positive query and -z for a negative one."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def logits(self, queries, states) -> torch.Tensor:
        self.calls.append(len(queries))
        z = [
            len(s.instruction) + 2.0 * (s.verbalizers[1] == " great") + (q == "q2")
            for q, s in zip(queries, states, strict=True)
        ]
        return torch.tensor([[0.0, value] for value in z])


def episodes_of(rows: list[list[int]], queries: list[str], labels: list[int]) -> Episodes:
    responses = torch.tensor(rows)
    responses, mask, last_index, ended = truncate_after_eos(responses, EOS, PAD)
    prompt = torch.ones(len(rows), 3, dtype=torch.long)
    return Episodes(
        prompts=["x"] * len(rows),
        completions=[""] * len(rows),
        columns={"query": queries, "label": labels},
        input_ids=torch.cat([prompt, responses], dim=1),
        attention_mask=torch.cat([torch.ones_like(prompt), mask.long()], dim=1),
        responses=responses,
        response_mask=mask,
        last_index=last_index,
        ended=ended,
    )


# Episode 1 (q1, positive): add C (z 2 -> 3), positive ' great' (3 -> 5), stop.
# Episode 2 (q2, negative): delete A (z 3 -> 2, score -3 -> -2), delete A again (nothing), add A (-2 -> -3),
# positive ' great' (-3 -> -5); no stop: it ends at max_edits.
ROWS = [
    [TOKEN[action("add", 2)], TOKEN[action("verbalizer", 1, 1)], EOS, TOKEN[action("add", 1)]],
    [
        TOKEN[action("delete", 0)],
        TOKEN[action("delete", 0)],
        TOKEN[action("add", 0)],
        TOKEN[action("verbalizer", 1, 1)],
    ],
]
HAND_REWARDS = [[1.0, 2.0, 0.0, 0.0], [1.0, 0.0, -1.0, -2.0]]


def edit_reward(gold_coef: float = 1.0, other_coef: float = 1.0) -> tuple[EditReward, LogitScorer]:
    scorer = LogitScorer()
    tokens = ActionTokens([TOKEN[i] for i in range(len(SPACE))], [EOS])
    return EditReward(SPACE, scorer, INITIAL, tokens, gold_coef, other_coef), scorer


def test_each_edit_token_gets_its_score_change_and_the_stop_token_zero():
    reward, scorer = edit_reward()
    rewards = reward.score_episodes(episodes_of(ROWS, ["q1", "q2"], [1, 0]))
    assert_close(rewards, torch.tensor(HAND_REWARDS))
    assert scorer.calls == [3 + 5], "all states of the batch are scored in one call"


def test_the_score_is_lambda1_log_p_gold_minus_lambda2_log_p_best_other():
    reward, _ = edit_reward(gold_coef=2.0, other_coef=0.0)
    rewards = reward.score_episodes(episodes_of(ROWS[:1], ["q1"], [1]))
    log_sigmoid = lambda z: -math.log1p(math.exp(-z))  # noqa: E731  log P(positive) for logits [0, z]
    step1, step2 = 2 * (log_sigmoid(3) - log_sigmoid(2)), 2 * (log_sigmoid(5) - log_sigmoid(3))
    assert_close(rewards, torch.tensor([[step1, step2, 0.0, 0.0]]))


def test_the_engine_places_them_on_their_tokens_and_runs_gae_on_them():
    reward, _ = edit_reward()
    episodes = episodes_of(ROWS, ["q1", "q2"], [1, 0])
    rewards = RewardSources([reward], [1.0], ["edit_gain"])(episodes)
    assert_close(rewards.totals, torch.tensor([3.0, -2.0]))  # score of the final prompt minus the initial one
    passes = Passes(
        logprobs=torch.full((2, 4), -1.0),
        ref_logprobs=torch.tensor([[-1.2, -1.0, -1.0, -1.0], [-1.0, -1.0, -1.0, -1.5]]),
        values=torch.tensor([[0.5, 1.0, 0.0, 7.0], [0.0, 0.0, 0.0, 0.0]]),
        value_inputs=None,
    )
    args = SimpleNamespace(kl_estimator="k1", whiten_rewards=False, gamma=1.0, lam=0.95)
    rollout = assemble(episodes, passes, rewards, rewards.scores, 0.5, args)
    # k1 KL 0.2 on episode 1's first token and 0.5 on episode 2's last, times beta 0.5; the 7.0 value is masked
    assert_close(rollout.rewards, torch.tensor([[0.9, 2.0, 0.0, 0.0], [1.0, 0.0, -1.0, -2.25]]))
    # episode 1: deltas 0.9 + 1 - 0.5 = 1.4, 2 + 0 - 1 = 1, 0; A = (1.4 + 0.95 * 1, 1, 0)
    # episode 2 (values 0): A3 = -2.25, A2 = -1 + 0.95 * A3, A1 = 0.95 * A2, A0 = 1 + 0.95 * A1
    a2 = -1 - 0.95 * 2.25
    a1 = 0.95 * a2
    a0 = 1 + 0.95 * a1
    advantages = [[2.35, 1.0, 0.0], [a0, a1, a2, -2.25]]
    assert_close(rollout.returns, torch.tensor([[2.85, 2.0, 0.0, 0.0], [a0, a1, a2, -2.25]]))
    flat = [value for row in advantages for value in row]
    mean = sum(flat) / len(flat)
    std = math.sqrt(sum((v - mean) ** 2 for v in flat) / (len(flat) - 1) + 1e-8)
    whitened = [[(v - mean) / std for v in advantages[0]] + [0.0], [(v - mean) / std for v in advantages[1]]]
    assert_close(rollout.advantages, torch.tensor(whitened))
