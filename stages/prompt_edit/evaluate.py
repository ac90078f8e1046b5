"""Test-time editing and its baselines: the policy's per-query edits against the initial prompt, the same number of
random edits per query, and (when given) the prompt RLPrompt learned; which edits the policy makes, and whether
it edits per query or applies one sequence to all.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import torch

from reward_models.prompt_task import correct
from stages.prompt_edit.environment import PromptState
from stages.prompt_edit.reward import EditReward
from stages.prompt_edit.task import EditTask


def accuracy(reward: EditReward, texts: Sequence[str], labels: Sequence[int], states: Sequence[PromptState]) -> float:
    """The task model's accuracy on ``texts`` with each under the state beside it."""
    logits = reward.scorer.logits(list(texts), list(states))
    return correct(logits, torch.tensor(list(labels))).mean().item()


def final_states(reward: EditReward, actions: Sequence[Sequence[int]]) -> list[PromptState]:
    return [states[-1] for states in reward.trajectories(actions)]


def random_edits(task: EditTask, counts: Sequence[int], seed: int) -> list[list[int]]:
    """For each query, as many random edits as ``counts`` says, each drawn uniformly among the actions that change
    the prompt at that point (``EditSpace.random_edits``)."""
    rng = random.Random(seed)
    return [task.space.random_edits(task.initial, count, rng) for count in counts]


def score_gain(reward: EditReward, texts: Sequence[str], labels: Sequence[int], actions) -> float:
    """Mean score change from the initial prompt to the edited one (the sum of an episode's edit rewards)."""
    initial = reward.scores(texts, labels, [reward.initial] * len(texts))
    return (reward.scores(texts, labels, final_states(reward, actions)) - initial).mean().item()


def sequences(edits: Sequence[Sequence[int]], describe) -> dict:
    """Does the policy edit per query? How many distinct edit sequences it made, and the most common one."""
    counted = Counter(tuple(e) for e in edits)
    common, times = counted.most_common(1)[0]
    return {
        "distinct": len(counted),
        "most_common": [describe(index) for index in common],
        "most_common_share": times / len(edits),
    }


def evaluate_edits(
    reward: EditReward,
    task: EditTask,
    test_actions: list[list[int]],
    train_actions: list[list[int]],
    draws: int,
    seed: int,
    rlprompt: dict | None,
) -> dict:
    """Test accuracy of the per-query edits and of the baselines, edit statistics, and the training queries' score
    gain under the policy's edits and under as many random edits. Edits are the actions that changed the prompt;
    the random baseline makes as many per query as the policy did."""
    space, test, train = task.space, task.test, task.train
    test_edits = [space.effective(task.initial, episode) for episode in test_actions]
    lengths = [len(edits) for edits in test_edits]
    random_accuracy = [
        accuracy(reward, test.texts, test.labels, final_states(reward, random_edits(task, lengths, seed + d)))
        for d in range(draws)
    ]
    train_random = random_edits(task, [len(space.effective(task.initial, a)) for a in train_actions], seed)
    baselines: dict = {
        "initial_prompt": {
            "prompt": space.render(task.initial),
            "test_accuracy": accuracy(reward, test.texts, test.labels, [task.initial] * len(test.texts)),
        },
        "random_edits": {
            "description": f"as many random edits per query as the policy made (mean of {draws} draws)",
            "test_accuracy_mean": sum(random_accuracy) / draws,
            "test_accuracy_std": torch.tensor(random_accuracy).std().item() if draws > 1 else 0.0,
            "test_accuracy": random_accuracy,
        },
        "rlprompt": rlprompt_figures(reward, task, rlprompt),
    }
    counts = space.counts(test_edits)
    actions_taken = sum(len(a) for a in test_actions)
    return {
        "test_accuracy": accuracy(reward, test.texts, test.labels, final_states(reward, test_actions)),
        "baselines": baselines,
        "mean_edits": counts.pop("mean_edits"),
        "mean_actions": actions_taken / len(test_actions),
        "no_op_share": 1 - sum(lengths) / max(actions_taken, 1),
        "edit_kinds": {kind: counts.pop(kind) for kind in ("instruction", "exemplar", "verbalizer")},
        "edit_operations": counts,
        "sequences": sequences(test_edits, space.describe),
        "train_score_gain": {
            "policy": score_gain(reward, train.texts, train.labels, train_actions),
            "random_edits": score_gain(reward, train.texts, train.labels, train_random),
        },
    }


def rlprompt_figures(reward: EditReward, task: EditTask, rlprompt: dict | None) -> dict:
    """RLPrompt's selected prompt as the instruction, with its verbalizers and no exemplars, on the test queries;
    ``rlprompt`` is ``{"prompt", "verbalizers", "source", ...}`` or ``{"absent": why}``."""
    if rlprompt is None or "absent" in rlprompt:
        return rlprompt or {"absent": "no prompt-optimization stage given"}
    text = rlprompt["prompt"].strip()
    state = PromptState((text,) if text else (), (), tuple(rlprompt["verbalizers"]))
    test = task.test
    return {**rlprompt, "test_accuracy": accuracy(reward, test.texts, test.labels, [state] * len(test.texts))}


def edit_rows(reward: EditReward, task: EditTask, actions: list[list[int]], count: int) -> list[dict]:
    """The first ``count`` test queries as a person reads them: the initial prompt, each action with whether it
    changed the prompt, the prompt after it and its score (on the query's label), the final prompt and the task
    model's answer."""
    space, test = task.space, task.test
    rows = []
    for query, label, episode in list(zip(test.texts, test.labels, actions, strict=True))[:count]:
        states = space.replay(task.initial, episode)
        scores = reward.scores([query] * len(states), [label] * len(states), states).tolist()
        prediction = int(reward.scorer.logits([query], [states[-1]])[0].argmax())
        rows.append(
            {
                "query": query,
                "initial_prompt": space.render(task.initial),
                "initial_score": scores[0],
                "edits": [
                    {
                        "action": space.describe(a),
                        "changed": after != before,
                        "prompt_after": space.render(after),
                        "score_after": score,
                    }
                    for a, before, after, score in zip(episode, states, states[1:], scores[1:], strict=False)
                ],
                "final_prompt": space.render(states[-1]),
                "prediction": task.class_names[prediction],
                "label": task.class_names[label],
            }
        )
    return rows
