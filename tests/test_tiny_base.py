"""The offline demo's tiny base model (pipeline/tiny_base.py): tokenizer, model, saving and loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from pipeline.errors import PipelineError
from pipeline.tiny_base import ROLE_MARKERS, build_model, build_tiny_base

DEMO = Path(__file__).resolve().parent.parent / "data" / "demo"
SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}


def demo_rows(name: str) -> list[dict]:
    with open(DEMO / f"{name}.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; more threads only fight for the cores under a parallel load."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return build_tiny_base(DEMO, tmp_path_factory.mktemp("build") / "tiny-base", seed=0, **SMALL)


@pytest.fixture(scope="module")
def tokenizer(base):
    return AutoTokenizer.from_pretrained(base)


def test_loads_with_auto_classes_and_distinct_special_tokens(base, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(base)
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token) == (
        "<pad>",
        "<s>",
        "</s>",
        "<unk>",
    )
    assert len({tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id}) == 4
    assert tokenizer.model_max_length == 256
    assert 1000 < len(tokenizer) <= 2048
    assert model.config.model_type == "llama" and model.config.tie_word_embeddings
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.hidden_size == SMALL["hidden_size"] and model.config.num_hidden_layers == 2
    for config in (model.config, model.generation_config):
        assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (
            tokenizer.bos_token_id,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
        )


def test_default_size_is_a_few_million_parameters(tokenizer):
    model = build_model(tokenizer)
    assert 2e6 < sum(parameter.numel() for parameter in model.parameters()) < 10e6
    assert model.config.max_position_embeddings == 256


def test_completion_tokenizes_the_same_alone_and_after_its_prompt(tokenizer):
    pairs = [(row["prompt"], row["completion"]) for row in demo_rows("sft_train")]
    pairs += [(row["prompt"], row[side]) for row in demo_rows("prefs_eval") for side in ("chosen", "rejected")]
    prompts, completions = zip(*pairs, strict=True)
    joined = tokenizer([p + c for p, c in pairs], add_special_tokens=False).input_ids
    alone = tokenizer(list(prompts), add_special_tokens=False).input_ids
    tails = tokenizer(list(completions), add_special_tokens=False).input_ids
    assert [i for i, ids in enumerate(joined) if ids != alone[i] + tails[i]] == []


def test_encoding_adds_bos_only_and_decodes_back(tokenizer):
    text = demo_rows("sft_eval")[0]["completion"] + " ☃ naïve"
    ids = tokenizer(text).input_ids
    assert ids[0] == tokenizer.bos_token_id and tokenizer.eos_token_id not in ids
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_chat_template_renders_roles_and_marks_the_assistant(tokenizer):
    row = demo_rows("sft_eval")[0]
    messages = [
        {"role": "system", "content": "You write reviews."},
        {"role": "user", "content": row["prompt"]},
        {"role": "assistant", "content": row["completion"]},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<s><|system|>\nYou write reviews.</s>\n"
        f"<|user|>\n{row['prompt']}</s>\n<|assistant|>\n{row['completion']}</s>\n"
    )
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>\n") and text.startswith(prompt)
    assert [len(tokenizer(marker, add_special_tokens=False).input_ids) for marker in ROLE_MARKERS] == [1, 1, 1]
    encoded = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    assistant = [i for i, m in zip(encoded["input_ids"], encoded["assistant_masks"], strict=True) if m]
    expected = tokenizer(row["completion"], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    assert assistant == expected


def test_generation_runs_and_stops_at_eos(base, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(base)
    prompt, completion = "Review of the budget kettle:", " A great kettle."
    target = tokenizer(completion, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    sequence = torch.tensor([tokenizer(prompt).input_ids + target])
    # teach the random model one sequence, so stopping depends on it choosing EOS and generate honouring it
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1.5e-2)
    for _ in range(60):
        model(input_ids=sequence, labels=sequence).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    left_padding = AutoTokenizer.from_pretrained(base, padding_side="left")
    longer = "Write a short review of the premium desk lamp and say why:"
    batch = left_padding([prompt, longer], padding=True, return_tensors="pt")
    assert batch.input_ids[0, 0] == tokenizer.pad_token_id
    max_new_tokens = 30
    with torch.no_grad():
        output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    new_tokens = output[0, batch.input_ids.shape[1] :].tolist()
    assert new_tokens[: len(target)] == target
    assert set(new_tokens[len(target) :]) <= {tokenizer.pad_token_id}
    single = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        alone = model.generate(**single, max_new_tokens=max_new_tokens, do_sample=False)
    assert alone.shape[1] == single.input_ids.shape[1] + len(target) < single.input_ids.shape[1] + max_new_tokens


def test_loads_as_a_scalar_sequence_scorer_that_ignores_padding(base, tokenizer):
    scorer = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1).eval()
    texts = [row["prompt"] + row["completion"] for row in demo_rows("sft_eval")[:2]]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    assert (batch.input_ids == tokenizer.pad_token_id).any()
    with torch.no_grad():
        padded = scorer(**batch).logits
        alone = torch.cat([scorer(**tokenizer(text, return_tensors="pt")).logits for text in texts])
    assert padded.shape == (2, 1)
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-4)


def test_rebuild_replaces_the_folder_and_is_deterministic(tmp_path, base):
    out = tmp_path / "tiny-base"
    build_tiny_base(DEMO, out, seed=0, **SMALL)
    (out / "stale.txt").write_text("from an earlier build")
    build_tiny_base(DEMO, out, seed=0, **SMALL)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tiny-base"]
    assert sorted(path.name for path in out.iterdir()) == sorted(path.name for path in base.iterdir())
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (out / name).read_bytes() == (base / name).read_bytes(), name
    build_tiny_base(DEMO, out, seed=1, **SMALL)
    assert (out / "model.safetensors").read_bytes() != (base / "model.safetensors").read_bytes()


def test_missing_data_is_a_user_error(tmp_path):
    with pytest.raises(PipelineError, match="data.generate"):
        build_tiny_base(tmp_path, tmp_path / "tiny-base")
    assert not (tmp_path / "tiny-base").exists()
