"""``value_adapter_layers``: the value adapter sits on the top layers only, and each value pass runs just those
layers from the hidden states a frozen pass kept (the reference's, here). The values must equal the value model's
own full pass on any body, including those whose layers differ by index (sliding-window layers in Qwen2 and
Gemma3) or that rescale their input embeddings (Gemma3)."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig, Qwen2Config

from pipeline.errors import PipelineError
from stages.ppo.build import top_layers_only
from stages.ppo.modeling import (
    POLICY_ADAPTER,
    VALUE_ADAPTER,
    PolicyAndValue,
    UpperLayers,
    ValueHead,
    last_hidden,
    position_ids_from,
    trunk_of,
)

TOP, KEEP, WINDOW = 1, 6, 4
SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "vocab_size": 200}
# Bodies whose last layer is unlike the first by its index: were the top layer re-run as if it were layer 0, its
# attention mask (sliding window vs full) would be the wrong one on sequences longer than the window.
CONFIGS = {
    "llama": LlamaConfig(num_hidden_layers=3, num_key_value_heads=2, **SMALL),
    "qwen2-sliding": Qwen2Config(
        num_hidden_layers=4,
        num_key_value_heads=2,
        use_sliding_window=True,
        sliding_window=WINDOW,
        layer_types=["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
        **SMALL,
    ),  # fmt: skip
    "gemma3-sliding-scaled-embeddings": Gemma3TextConfig(
        num_hidden_layers=4,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=WINDOW,
        layer_types=["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
        **SMALL,
    ),  # fmt: skip
}


def lora() -> LoraConfig:
    return LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")


def build(config) -> PolicyAndValue:
    torch.manual_seed(0)
    policy = get_peft_model(AutoModelForCausalLM.from_config(config), lora())
    policy.add_adapter(VALUE_ADAPTER, top_layers_only(lora(), policy, TOP))
    # LoRA starts as a no-op (B = 0); random B makes both adapters change what they touch.
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    head = ValueHead(policy.config.hidden_size)
    torch.nn.init.normal_(head.summary.weight)
    return PolicyAndValue(policy, value_head=head, value_adapter_layers=TOP)


@pytest.fixture
def model() -> PolicyAndValue:
    return build(CONFIGS["llama"])


def batch(seed: int = 0, length: int = 12) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three rows of ``length`` tokens (longer than the sliding window), one left-padded."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, 200, (3, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :3] = 0
    return input_ids, attention_mask, position_ids_from(attention_mask)


def adapter_parameters(model: PolicyAndValue, adapter: str) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.policy.named_parameters() if "lora_" in n and f".{adapter}." in n}


def full_value_pass(model: PolicyAndValue, input_ids, attention_mask, position_ids) -> torch.Tensor:
    """The value model's own function, every layer run: the value adapter active on the base."""
    with model._adapter(VALUE_ADAPTER):
        hidden = last_hidden(model.policy, input_ids, attention_mask, position_ids)
    return model.value_head(hidden[:, -KEEP:])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_top_layers_from_kept_hidden_states_equal_the_full_value_pass(name):
    model = build(CONFIGS[name])
    input_ids, attention_mask, position_ids = batch()
    with torch.no_grad():
        _, kept = model.frozen_passes(input_ids, attention_mask, position_ids, KEEP)
        expected = full_value_pass(model, input_ids, attention_mask, position_ids)
        rows = torch.tensor([2, 0])  # a minibatch of the rollout's rows, in another order
        _, values = model(
            input_ids[rows], attention_mask[rows], position_ids[rows], KEEP, part="value", value_inputs=kept[rows]
        )
    torch.testing.assert_close(values, expected[rows], atol=1e-5, rtol=1e-4)
    # The lower layers are back in place afterwards.
    assert all(type(layer).__name__.endswith("DecoderLayer") for layer in trunk_of(model.policy).layers)


def test_value_adapter_only_on_the_top_layers(model):
    layers = model.policy.config.num_hidden_layers
    names = adapter_parameters(model, VALUE_ADAPTER)
    assert names and all(f"layers.{layers - TOP}." in name for name in names)
    assert any(f"layers.{layers - TOP - 1}." in name for name in adapter_parameters(model, POLICY_ADAPTER))


def test_value_loss_trains_the_value_adapter_and_head_not_the_policy(model):
    _, kept = model.frozen_passes(*batch(), KEEP)
    logits, _ = model(*batch(), keep=KEEP, part="policy")
    _, values = model(*batch(), keep=KEEP, part="value", value_inputs=kept)
    values.square().sum().backward()
    policy_grads = [p.grad for p in adapter_parameters(model, POLICY_ADAPTER).values()]
    assert all(grad is None or not grad.any() for grad in policy_grads)
    assert all(p.grad is not None and p.grad.any() for p in adapter_parameters(model, VALUE_ADAPTER).values())
    assert model.value_head.summary.weight.grad.any()
    assert logits.shape[:2] == values.shape == (3, KEEP)


def test_split_passes_match_one_joint_pass(model):
    with torch.no_grad():
        _, kept = model.frozen_passes(*batch(), KEEP)
        joint_logits, joint_values = model(*batch(), keep=KEEP, value_inputs=kept)
        logits, _ = model(*batch(), keep=KEEP, part="policy")
        _, values = model(*batch(), keep=KEEP, part="value", value_inputs=kept)
    torch.testing.assert_close(logits, joint_logits)
    torch.testing.assert_close(values, joint_values)


def test_values_do_not_depend_on_the_policy_adapter(model):
    """Below its own layers the value model is the base: training the policy does not move the critic's input."""
    with torch.no_grad():
        before = model.values(*batch(), keep=KEEP)
        for parameter in adapter_parameters(model, POLICY_ADAPTER).values():
            parameter.add_(1.0)
        after = model.values(*batch(), keep=KEEP)
        moved_policy = model.policy_logits(*batch(), keep=KEEP)
    torch.testing.assert_close(before, after)
    assert moved_policy.isfinite().all()


def test_more_layers_than_the_model_has_is_refused():
    policy = get_peft_model(AutoModelForCausalLM.from_config(CONFIGS["llama"]), lora())
    with pytest.raises(PipelineError, match="value_adapter_layers must be between 1 and"):
        PolicyAndValue(policy, value_head=ValueHead(policy.config.hidden_size), value_adapter_layers=99)


def test_a_body_sharing_state_across_layers_is_refused():
    config = LlamaConfig(num_hidden_layers=3, num_key_value_heads=2, **SMALL)
    config.num_kv_shared_layers = 1  # as Gemma3n shares keys and values of some layers with later ones
    trunk = trunk_of(AutoModelForCausalLM.from_config(config))
    with pytest.raises(PipelineError, match="shares state across layers"):
        UpperLayers(trunk, TOP)
