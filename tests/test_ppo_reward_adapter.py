"""A reward model trained as a LoRA adapter on the SFT model, put on the policy's own base as a frozen third adapter:
it scores like the merged reward model, the policy does not see it, and a value adapter started from it reads as the
reward model and trains without moving it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.config import ModelArguments
from pipeline.errors import PipelineError
from pipeline.models import load_sequence_scorer
from stages.ppo.build import build_policy_and_value
from stages.ppo.config import PPOArguments, PPOModelArguments
from stages.ppo.layout import decide_layout
from stages.ppo.modeling import POLICY_ADAPTER, REWARD_ADAPTER, VALUE_ADAPTER, position_ids_from
from stages.ppo.reward_adapter import trained_on
from tests.ppo_testing import tiny_reward_adapter

LAYERS = 1


@pytest.fixture(scope="module")
def reward_adapter(tiny_base, tmp_path_factory) -> Path:
    return tiny_reward_adapter(tiny_base, tmp_path_factory.mktemp("rm") / "adapter")


@pytest.fixture(scope="module")
def merged_reward_model(tiny_base, reward_adapter) -> torch.nn.Module:
    pad = AutoTokenizer.from_pretrained(tiny_base).pad_token_id
    return load_sequence_scorer(str(reward_adapter), ModelArguments(dtype="float32"), pad).eval()


def build(tiny_base: Path, reward_adapter: Path, layers: int | None = LAYERS):
    torch.manual_seed(1)
    args = PPOArguments(output_dir="unused", value_model="adapter", value_adapter_layers=layers)
    model_args = PPOModelArguments(lora_r=4, lora_alpha=8, lora_target_modules=["all-linear"], dtype="float32")
    layout = decide_layout(args, model_args, str(reward_adapter), str(tiny_base), share_reward_base=True)
    assert layout.reward_adapter == reward_adapter, layout.reward_not_on_base
    return build_policy_and_value(str(tiny_base), layout, model_args, args, pad_token_id=0)


def episodes(pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded prompts with responses of different lengths, right-padded with the pad token."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, 200, (3, 10), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :3] = 0  # left padding of a short prompt
    attention_mask[1, 7:] = 0  # a response that ended early
    attention_mask[2, 9:] = 0
    input_ids = input_ids.masked_fill(attention_mask == 0, pad_token_id)
    return input_ids, attention_mask, position_ids_from(attention_mask)


def merged_readings(merged: torch.nn.Module, batch, keep: int) -> torch.Tensor:
    """The merged reward model's score head on its last hidden state at the last ``keep`` positions."""
    input_ids, attention_mask, position_ids = batch
    hidden = merged.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
    return merged.score(hidden.last_hidden_state[:, -keep:]).squeeze(-1)


def test_policy_pass_sees_neither_the_reward_nor_the_value_adapter(tiny_base, reward_adapter):
    model = build(tiny_base, reward_adapter)
    plain = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    batch = episodes(plain.config.pad_token_id or 0)
    with torch.no_grad():
        logits = model.policy_logits(*batch, keep=4)
        expected = plain(input_ids=batch[0], attention_mask=batch[1], position_ids=batch[2]).logits[:, -4:]
    torch.testing.assert_close(logits, expected)


def test_reward_scores_on_the_policy_base_equal_the_merged_reward_model(tiny_base, reward_adapter, merged_reward_model):
    model = build(tiny_base, reward_adapter)
    batch = episodes(merged_reward_model.config.pad_token_id)
    with torch.no_grad():
        scores = model.reward_scores(*batch[:2])
        expected = merged_reward_model(input_ids=batch[0], attention_mask=batch[1], position_ids=batch[2]).logits
    torch.testing.assert_close(scores, expected[:, 0], atol=1e-5, rtol=1e-4)
    assert scores.std() > 0.01  # the rows' scores differ, so the last-token position is really checked


@pytest.mark.parametrize("layers", [LAYERS, None], ids=["top-layer", "every-layer"])
def test_value_started_from_the_reward_adapter_reads_as_the_reward_model(
    tiny_base, reward_adapter, merged_reward_model, layers
):
    model = build(tiny_base, reward_adapter, layers=layers)
    assert model.scores_rewards
    batch = episodes(merged_reward_model.config.pad_token_id)
    with torch.no_grad():
        _, value_inputs = model.frozen_passes(*batch, keep=5)
        _, values = model(*batch, keep=5, part="value", value_inputs=value_inputs)
        expected = merged_readings(merged_reward_model, batch, keep=5)
    assert (value_inputs is None) == (layers is None)
    torch.testing.assert_close(values, expected, atol=1e-5, rtol=1e-4)


def test_training_moves_the_policy_and_value_only(tiny_base, reward_adapter, merged_reward_model):
    model = build(tiny_base, reward_adapter)
    batch = episodes(merged_reward_model.config.pad_token_id)
    scores_before = model.reward_scores(*batch[:2])
    _, value_inputs = model.frozen_passes(*batch, keep=4)
    logits, _ = model(*batch, keep=4, part="policy")
    logits.logsumexp(-1).sum().backward()
    _, values = model(*batch, keep=4, part="value", value_inputs=value_inputs)
    values.square().sum().backward()

    def adapter(name: str) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in model.policy.named_parameters() if "lora_" in n and f".{name}." in n}

    # The policy adapter starts as a no-op (B = 0), so only its B matrices get a gradient at first.
    assert all(p.grad is not None and p.grad.any() for n, p in adapter(POLICY_ADAPTER).items() if "lora_B" in n)
    assert all(p.grad is not None and p.grad.any() for p in adapter(VALUE_ADAPTER).values())
    assert model.value_head.summary.weight.grad.any()
    reward = adapter(REWARD_ADAPTER)
    assert reward and all(not p.requires_grad and p.grad is None for p in reward.values())
    trainable = model.trainable_names()
    assert not any(f".{REWARD_ADAPTER}." in name or name.startswith("reward_head") for name in trainable)
    with torch.no_grad():
        for parameter in model.value_parameters():
            parameter.add_(0.5)
        scores_after = model.reward_scores(*batch[:2])
    torch.testing.assert_close(scores_after, scores_before)


def test_reward_adapter_must_have_been_trained_on_the_sft_model(tiny_base, reward_adapter, tmp_path):
    assert trained_on(reward_adapter, str(tiny_base))
    assert not trained_on(reward_adapter, str(tmp_path))
    # An RM stage's adapter whose manifest recorded another version of the SFT model (SFT re-run after RM).
    stage = tmp_path / "rm"
    adapter = stage / "adapter"
    adapter.mkdir(parents=True)
    for file in reward_adapter.iterdir():
        (adapter / file.name).write_bytes(file.read_bytes())
    manifest = {"inputs": {"base_model": {"path": str(tiny_base), "sha256": "0" * 64}}}
    (stage / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PipelineError, match="re-run the RM stage"):
        trained_on(adapter, str(tiny_base))


def test_reward_adapter_from_another_base_is_refused(sft_model, reward_adapter):
    """The adapter's saved copy of the base embeddings it adapted tells a different base apart."""
    args = PPOArguments(output_dir="unused")
    model_args = PPOModelArguments(lora_r=4, lora_alpha=8, lora_target_modules=["all-linear"], dtype="float32")
    layout = decide_layout(args, model_args, str(reward_adapter), str(sft_model), share_reward_base=True)
    # Named after another base, the adapter is kept off the SFT model's base...
    assert layout.reward_adapter is None and "not on the SFT model" in layout.reward_not_on_base
    # ...and forced onto it, its saved copy of the embeddings it adapted tells the bases apart.
    forced = dataclasses.replace(layout, reward_adapter=reward_adapter)
    with pytest.raises(PipelineError, match="other base weights than the SFT model's"):
        build_policy_and_value(str(sft_model), forced, model_args, args, pad_token_id=0)
