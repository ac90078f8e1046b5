"""The prompt-editing environment on small cases: the action list, every edit operation (including those that do not
apply), replays, effective and random edits, descriptions, and the action-token mapping with its refusals."""

from __future__ import annotations

import random

import pytest

from pipeline.errors import PipelineError
from stages.prompt_edit.environment import EditSpace, Exemplar, PromptState, check_initial_state
from stages.prompt_edit.tokens import action_token_ids, word_tokens
from tests.task_model_testing import bpe_tokenizer

POOL = [Exemplar("n1 text", 0), Exemplar("p1 text", 1), Exemplar("n2 text", 0), Exemplar("p2 text", 1)]
CANDIDATES = [[" bad", " awful"], [" good", " great"]]
START = PromptState(("A", "B"), (0, 1), (" bad", " good"))


@pytest.fixture
def space() -> EditSpace:
    return EditSpace(["A", "B", "C"], POOL, 2, CANDIDATES, ["neg", "pos"])


def index(space: EditSpace, operation: str, first: int, second: int = -1) -> int:
    return next(
        i for i, a in enumerate(space.actions) if (a.operation, a.first, a.second) == (operation, first, second)
    )


def test_the_actions_are_listed_in_a_fixed_order(space):
    listed = [(a.operation, a.first, a.second) for a in space.actions]
    assert listed == [
        *(("add", j, -1) for j in range(3)),
        *(("delete", j, -1) for j in range(3)),
        ("swap", 0, 1), ("swap", 0, 2), ("swap", 1, 2),
        *(("exemplar", i, j) for i in range(2) for j in range(4)),
        ("permute", 0, 1),
        ("verbalizer", 0, 0), ("verbalizer", 0, 1), ("verbalizer", 1, 0), ("verbalizer", 1, 1),
    ]  # fmt: skip
    assert len(space) == 22
    kinds = [space.actions[i].kind for i in (0, 3, 6, 9, 17, 18)]
    assert kinds == ["instruction"] * 3 + ["exemplar"] * 2 + ["verbalizer"]


def test_without_permutations_there_are_no_permute_actions():
    unordered = EditSpace(["A", "B", "C"], POOL, 2, CANDIDATES, ["neg", "pos"], permutations=False)
    assert [a.operation for a in unordered.actions].count("permute") == 0 and len(unordered) == 21
    assert EditSpace.from_dict(unordered.as_dict()).actions == unordered.actions


def test_add_appends_an_absent_phrase_and_leaves_a_present_one(space):
    assert space.apply(START, index(space, "add", 2)).instruction == ("A", "B", "C")
    assert space.apply(START, index(space, "add", 0)) == START


def test_delete_removes_a_present_phrase_and_leaves_an_absent_one(space):
    assert space.apply(START, index(space, "delete", 0)).instruction == ("B",)
    assert space.apply(START, index(space, "delete", 2)) == START


def test_swap_exchanges_two_present_phrases_only(space):
    three = PromptState(("A", "B", "C"), (0, 1), (" bad", " good"))
    assert space.apply(three, index(space, "swap", 0, 2)).instruction == ("C", "B", "A")
    assert space.apply(START, index(space, "swap", 0, 1)).instruction == ("B", "A")
    assert space.apply(START, index(space, "swap", 1, 2)) == START  # C is absent


def test_exemplar_puts_a_pool_example_in_a_slot_unless_it_is_already_shown(space):
    assert space.apply(START, index(space, "exemplar", 1, 3)).exemplars == (0, 3)
    assert space.apply(START, index(space, "exemplar", 0, 2)).exemplars == (2, 1)
    assert space.apply(START, index(space, "exemplar", 0, 1)) == START  # example 1 is in slot 1 already
    assert space.apply(START, index(space, "exemplar", 0, 0)) == START


def test_permute_exchanges_two_slots(space):
    assert space.apply(START, index(space, "permute", 0, 1)).exemplars == (1, 0)


def test_verbalizer_sets_one_class_word(space):
    assert space.apply(START, index(space, "verbalizer", 1, 1)).verbalizers == (" bad", " great")
    assert space.apply(START, index(space, "verbalizer", 0, 0)) == START


def test_replay_effective_edits_and_counts(space):
    actions = [index(space, "delete", 0), index(space, "delete", 0), index(space, "verbalizer", 0, 1)]
    states = space.replay(START, actions)
    assert states == [
        START,
        PromptState(("B",), (0, 1), (" bad", " good")),
        PromptState(("B",), (0, 1), (" bad", " good")),
        PromptState(("B",), (0, 1), (" awful", " good")),
    ]
    assert space.effective(START, actions) == [actions[0], actions[2]]
    counts = space.counts([space.effective(START, actions), []])
    assert counts["mean_edits"] == 1.0
    assert counts["instruction"] == counts["verbalizer"] == 0.5 and counts["exemplar"] == 0.0
    assert counts["delete"] == 0.5 and counts["add"] == 0.0


def test_random_edits_change_the_prompt_every_time_and_follow_the_seed(space):
    for count in range(6):
        edits = space.random_edits(START, count, random.Random(count))
        assert len(edits) == count and space.effective(START, edits) == edits
    assert space.random_edits(START, 5, random.Random(1)) == space.random_edits(START, 5, random.Random(1))
    assert space.random_edits(START, 5, random.Random(1)) != space.random_edits(START, 5, random.Random(2))


def test_descriptions_and_renderings_name_what_changed(space):
    assert space.describe(index(space, "add", 2)) == "add 'C'"
    assert space.describe(index(space, "swap", 0, 2)) == "swap 'A' and 'C'"
    assert space.describe(index(space, "exemplar", 1, 2)) == "exemplar slot 1 <- #2 (neg) 'n2 text'"
    assert space.describe(index(space, "permute", 0, 1)) == "permute exemplar slots 0 and 1"
    assert space.describe(index(space, "verbalizer", 1, 1)) == "verbalizer pos ' great'"
    assert space.render(START) == (
        "instruction: 'A B' | exemplars: #0 (neg) 'n1 text'; #1 (pos) 'p1 text' | verbalizers: neg=' bad', pos=' good'"
    )
    assert space.text(START) == "A B | #0:neg #1:pos | bad| good"


def test_a_space_survives_its_saved_form(space):
    again = EditSpace.from_dict(space.as_dict())
    assert again.actions == space.actions and again.pool == space.pool and again.candidates == space.candidates


@pytest.mark.parametrize(
    ("state", "says"),
    [
        (PromptState(("D",), (0, 1), (" bad", " good")), "not among the phrases"),
        (PromptState(("A", "A"), (0, 1), (" bad", " good")), "repeats a phrase"),
        (PromptState(("A",), (0, 0), (" bad", " good")), "distinct examples of the pool"),
        (PromptState(("A",), (0, 9), (" bad", " good")), "distinct examples of the pool"),
        (PromptState(("A",), (0, 1), (" terrible", " good")), "' terrible' of class 'neg' is not among"),
    ],
)
def test_an_initial_prompt_the_space_cannot_edit_is_refused(space, state, says):
    with pytest.raises(PipelineError, match=says):
        check_initial_state(space, state)
    check_initial_state(space, START)


# ---------------------------------------------------------------------------------------------------------------
# Action tokens
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return bpe_tokenizer("bos")


def test_by_default_actions_are_the_first_word_tokens_in_id_order(tokenizer):
    ids = action_token_ids(tokenizer, 10)
    assert ids == sorted(ids) == word_tokens(tokenizer)[:10] and len(set(ids)) == 10
    for token in ids:
        text = tokenizer.decode([token])
        assert text[0] == " " and text[1:].isalpha() and token not in tokenizer.all_special_ids
    skipped = [i for i in range(ids[0], ids[-1]) if i not in ids]
    assert skipped, "the mapping skips the tokens that are not words"
    assert all(not tokenizer.decode([i])[1:].isalpha() or tokenizer.decode([i])[0] != " " for i in skipped)


def test_given_action_tokens_map_in_order(tokenizer):
    texts = [" great", " terrible", " good"]
    assert action_token_ids(tokenizer, 3, texts) == [tokenizer.encode(t, add_special_tokens=False)[0] for t in texts]


@pytest.mark.parametrize(
    ("count", "texts", "says"),
    [
        (10_000, None, "has 10000 actions but the policy's vocabulary has only"),
        (2, [" great"], "lists 1 token texts for 2 actions"),
        (2, [" great", " greatness"], r"' greatness' is \d+ tokens"),
        (2, [" great", " great"], "encode to the same token"),
        (2, [" great", "</s>"], "special tokens"),
    ],
)
def test_an_action_set_the_tokenizer_cannot_express_is_refused(tokenizer, count, texts, says):
    with pytest.raises(PipelineError, match=says):
        action_token_ids(tokenizer, count, texts)
