"""How the PPO stage samples: exactly the distribution it scores (no generation settings from the model's own
generation_config.json), stop tokens given as text that encodes to one token or as an id, conversational prompts
tokenized as TRL tokenizes them (one BOS), and token rules (restricted vocabulary, fixed length) applied alike in
sampling and in every logprob pass."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoTokenizer, GenerationConfig

import stages.ppo.__main__ as ppo_stage
from pipeline.errors import PipelineError
from tests.ppo_testing import RecordingTrainer, ppo_argv, run_ppo


@pytest.fixture
def recording(monkeypatch) -> type[RecordingTrainer]:
    monkeypatch.setattr(ppo_stage, "PPOTrainer", RecordingTrainer)
    RecordingTrainer.latest = None
    return RecordingTrainer


def responses_of(trainer: RecordingTrainer) -> list[list[int]]:
    """Every sampled response's tokens up to its end (the rollouts' input ids after the prompt, padding dropped)."""
    tokenizer_pad = trainer.processing_class.pad_token_id
    found = []
    for rollout in trainer.rollouts:
        for row, mask, length in zip(
            rollout["input_ids"], rollout["attention_mask"], rollout["response_lengths"], strict=True
        ):
            ids = row[mask.bool()].tolist()
            found.append([t for t in ids[len(ids) - length :] if t != tokenizer_pad])
    return found


def has_repeat(tokens: list[int]) -> bool:
    return len(set(tokens)) < len(tokens)


def test_sampling_ignores_the_models_own_generation_settings(sft_model, tmp_path, recording):
    """Bug: transformers fills every sampling field we leave unset from the model's generation_config.json. With a
    huge repetition penalty there, no response could repeat a token, while the PPO ratio assumes softmax(logits / T);
    the policy must sample as if the file were not there."""
    model = tmp_path / "sft-with-generation-config"
    shutil.copytree(sft_model, model)
    GenerationConfig(do_sample=True, repetition_penalty=1000.0, min_p=0.5).save_pretrained(model)
    run_ppo(ppo_argv(tmp_path, "r", model, response_length=16, temperature=1.0, total_episodes=32))

    responses = responses_of(recording.latest)
    repeating = sum(has_repeat(r) for r in responses) / len(responses)
    # 32 responses of up to 16 tokens from a model that writes "The ... is ... . The ..." repeat tokens often
    # (0.8-0.9 of responses here); under a penalty of 1000 none can.
    assert repeating > 0.4, repeating


def test_stop_token_is_text_that_encodes_to_one_token(sft_model, tmp_path, recording):
    """Bug: the stop token was looked up as a vocabulary entry, and " the" (the BPE token 'Ġthe') is no entry, so
    '<unk>' stopped responses instead. Responses must end at their first " the"."""
    the = AutoTokenizer.from_pretrained(sft_model).encode(" the", add_special_tokens=False)
    assert len(the) == 1
    run_ppo(ppo_argv(tmp_path, "r", sft_model, stop_token=" the", response_length=16, total_episodes=32))

    responses = responses_of(recording.latest)
    assert all(the[0] not in r[:-1] for r in responses), "a response went on past ' the'"
    assert sum(r[-1] == the[0] for r in responses) >= 4, "no response stopped at ' the': the check proves nothing"


def test_stop_token_escape_and_id_and_refusal(sft_model):
    from stages.ppo.sampling import stop_token_ids

    tokenizer = AutoTokenizer.from_pretrained(sft_model)
    newline = tokenizer.encode("\n", add_special_tokens=False)
    assert stop_token_ids(tokenizer, "\\n", None) == [tokenizer.eos_token_id, *newline]  # '\n' typed on a shell
    assert stop_token_ids(tokenizer, None, 20) == [tokenizer.eos_token_id, 20]
    with pytest.raises(PipelineError, match=r"stop_token 'Hello' encodes to 4 tokens"):
        stop_token_ids(tokenizer, "Hello", None)
    with pytest.raises(PipelineError, match="stop_token_id 99999 is not in the policy's vocabulary"):
        stop_token_ids(tokenizer, None, 99999)
    with pytest.raises(PipelineError, match="the stop token is the pad token"):
        stop_token_ids(tokenizer, None, tokenizer.pad_token_id)


def test_conversational_prompts_get_one_bos(sft_model, tmp_path, recording):
    """Bug: the chat template writes the BOS and tokenizing added a second one."""
    prompts = tmp_path / "chat_prompts.jsonl"
    rows = [
        {"prompt": [{"role": "user", "content": f"Write a short review of the cafe number {i}."}]} for i in range(16)
    ]
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    run_ppo(
        ppo_argv(
            tmp_path, "r", sft_model, dataset_name=prompts, eval_dataset_name=prompts, total_episodes=16, sample_every=1
        )
    )
    tokenizer = AutoTokenizer.from_pretrained(sft_model)
    for rollout in recording.latest.rollouts:
        ids = rollout["input_ids"]
        assert ((ids == tokenizer.bos_token_id).sum(1) == 1).all(), ids[:, :6]
    expected = tokenizer.apply_chat_template(rows[0]["prompt"], add_generation_prompt=True, return_dict=True)
    assert expected["input_ids"].count(tokenizer.bos_token_id) == 1  # the template writes the BOS itself
    samples = [json.loads(line) for line in (tmp_path / "r" / "ppo" / "samples.jsonl").read_text().splitlines()]
    assert isinstance(samples[0]["prompt"], list) and isinstance(samples[0]["completion"], str)


# ----- token rules -----------------------------------------------------------------------------------------------


def test_restricted_vocabulary_is_what_is_sampled_and_scored(sft_model, tmp_path, recording):
    """An allowed-token list rules sampling, and the recomputed logprobs use the same distribution, so the first
    minibatch's ratio is exactly 1."""
    tokenizer = AutoTokenizer.from_pretrained(sft_model)
    allowed = tokenizer.convert_tokens_to_ids(["ĠThe", "Ġfood", "Ġwas", "Ġgreat", "Ġterrible", "."])
    records = run_ppo(
        ppo_argv(
            tmp_path,
            "r",
            sft_model,
            allowed_token_ids=allowed,
            response_length=8,
            total_episodes=16,
        )
    )
    for response in responses_of(recording.latest):
        assert set(response) <= {*allowed, tokenizer.eos_token_id}, response
    for record in records:
        assert abs(record["first/ratio"] - 1) < 1e-6 and record["first/approxkl"] < 1e-10


def test_fixed_length_suppresses_eos_and_every_episode_ends(sft_model, tmp_path, recording):
    records = run_ppo(ppo_argv(tmp_path, "r", sft_model, fixed_response_length="true", response_length=7))
    eos = AutoTokenizer.from_pretrained(sft_model).eos_token_id
    responses = responses_of(recording.latest)
    assert all(len(r) == 7 and eos not in r for r in responses)
    assert all(r["val/num_eos_tokens"] == 8 and r["val/response_length"] == 7 for r in records)


def test_token_rules_mask_logprobs_exactly():
    from stages.ppo.sampling import TokenRules, token_logprobs

    logits = torch.randn(2, 3, 10, generator=torch.Generator().manual_seed(0))
    tokens = torch.tensor([[1, 4, 4], [7, 1, 7]])
    rules = TokenRules(allowed=[1, 4, 7])
    logprobs, entropy = token_logprobs(logits, tokens, 0.5, rules, entropy=True)
    kept = logits[..., [1, 4, 7]] / 0.5
    expected = torch.log_softmax(kept, -1).gather(-1, torch.tensor([[0, 1, 1], [2, 0, 2]]).unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logprobs, expected)
    p = kept.softmax(-1)
    torch.testing.assert_close(entropy, -(p * p.log()).sum(-1))
    # As a logits processor, the rules give sampling the same distribution.
    processed = rules(torch.zeros(1, 1, dtype=torch.long), logits[:, 0] / 0.5).softmax(-1)
    torch.testing.assert_close(processed[:, [1, 4, 7]], kept[:, 0].softmax(-1))
    assert processed[:, [0, 2, 3, 5, 6, 8, 9]].sum() == 0


def test_bad_token_rules_are_refused(sft_model, tmp_path):
    with pytest.raises(PipelineError, match="allowed_token_ids must be ids of the policy's vocabulary"):
        ppo_stage.main(ppo_argv(tmp_path, "r", sft_model, allowed_token_ids=[5, 999999]))
    assert not (tmp_path / "r" / "ppo").exists()


def test_empty_policy_input_starts_from_bos(sft_model):
    from stages.ppo.sampling import tokenize_prompts

    tokenizer = AutoTokenizer.from_pretrained(sft_model)
    ids, mask = tokenize_prompts(tokenizer, ["", "Rate the cafe:"], None, torch.device("cpu"))
    assert ids[0, -1] == tokenizer.bos_token_id and mask[0].sum() == 1
    assert (mask[1] == 1).all() and ids[1, 0] == tokenizer.bos_token_id


def test_models_generation_config_is_back_after_sampling(sft_model):
    from transformers import AutoModelForCausalLM

    from stages.ppo.sampling import neutral_generation_defaults

    model = AutoModelForCausalLM.from_pretrained(sft_model)
    model.generation_config.repetition_penalty = 3.0
    with neutral_generation_defaults(model):
        assert model.generation_config.repetition_penalty is None
    assert model.generation_config.repetition_penalty == 3.0
