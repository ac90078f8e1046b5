"""``value_adapter_layers``: the value adapter sits on the top layers only and the value pass runs just those layers
with gradients: from the policy pass's hidden states in the one-base layout (read without training the policy), or
from the value model's own lower layers run without gradients; and a LoRA value model's base scores the reward."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from pipeline.errors import PipelineError
from pipeline.models import lora_config
from reward_models.learned import LearnedReward
from stages.ppo.build import top_layers_only, with_lora
from stages.ppo.config import PPOModelArguments
from stages.ppo.modeling import (
    POLICY_ADAPTER,
    VALUE_ADAPTER,
    PolicyAndValue,
    ValueHead,
    last_hidden,
    position_ids_from,
)

TOP = 1


def lora() -> LoraConfig:
    return LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")


@pytest.fixture
def model(tiny_base) -> PolicyAndValue:
    torch.manual_seed(0)
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base), lora())
    model_args = PPOModelArguments(lora_r=4, lora_alpha=8, lora_target_modules=["all-linear"])
    policy.add_adapter(VALUE_ADAPTER, top_layers_only(lora_config(model_args, "CAUSAL_LM"), policy, TOP))
    # LoRA starts as a no-op (B = 0); random B makes both adapters change what they touch.
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    head = ValueHead(policy.config.hidden_size)
    torch.nn.init.normal_(head.summary.weight)
    return PolicyAndValue(policy, value_head=head, value_adapter_layers=TOP)


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, 200, (3, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :3] = 0  # left padding
    return input_ids, attention_mask, position_ids_from(attention_mask)


def adapter_parameters(model: PolicyAndValue, adapter: str) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.policy.named_parameters() if "lora_" in n and f".{adapter}." in n}


def test_value_adapter_only_on_the_top_layers(model):
    layers = model.policy.config.num_hidden_layers
    names = adapter_parameters(model, VALUE_ADAPTER)
    assert names and all(f"layers.{layers - TOP}." in name for name in names)
    assert any(f"layers.{layers - TOP - 1}." in name for name in adapter_parameters(model, POLICY_ADAPTER))


def test_value_loss_trains_the_value_adapter_and_head_not_the_policy(model):
    logits, _ = model(*batch(), keep=4, part="policy")
    _, values = model(*batch(), keep=4, part="value")
    values.square().sum().backward()
    policy_grads = [p.grad for p in adapter_parameters(model, POLICY_ADAPTER).values()]
    assert all(grad is None or not grad.any() for grad in policy_grads)
    assert all(p.grad is not None and p.grad.any() for p in adapter_parameters(model, VALUE_ADAPTER).values())
    assert model.value_head.summary.weight.grad.any()
    assert logits.shape[:2] == values.shape == (3, 4)


def test_split_passes_match_one_joint_pass(model):
    with torch.no_grad():
        joint_logits, joint_values = model(*batch(), keep=4)
        logits, _ = model(*batch(), keep=4, part="policy")
        _, values = model(*batch(), keep=4, part="value")
    torch.testing.assert_close(logits, joint_logits)
    torch.testing.assert_close(values, joint_values)


def test_values_read_the_policy_features_below_the_value_layers(model):
    with torch.no_grad():
        before = model(*batch(), keep=4)[1]
        lowest = next(p for n, p in adapter_parameters(model, POLICY_ADAPTER).items() if "layers.0." in n)
        lowest.add_(1.0)
        after = model(*batch(), keep=4)[1]
    assert not torch.allclose(before, after)


def test_value_pass_without_a_policy_pass_is_refused(model):
    with pytest.raises(RuntimeError, match="policy pass"):
        model(*batch(), keep=4, part="value")


def test_more_layers_than_the_model_has_is_refused(tiny_base):
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base), lora())
    with pytest.raises(PipelineError, match="value_adapter_layers must be between 1 and"):
        PolicyAndValue(policy, value_head=ValueHead(policy.config.hidden_size), value_adapter_layers=99)


# ----- a LoRA value model (the 'separate' layout) on the top layers, and its base shared with the reward -----------


@pytest.fixture
def scorer_dir(tiny_base, tmp_path) -> Path:
    """A reward-model-shaped folder (random score head) with the tiny base's tokenizer."""
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(tiny_base, num_labels=1).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_base).save_pretrained(tmp_path)
    return tmp_path


@pytest.fixture
def separate(tiny_base, scorer_dir) -> PolicyAndValue:
    torch.manual_seed(0)
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base), lora())
    scorer = AutoModelForSequenceClassification.from_pretrained(scorer_dir, num_labels=1)
    model_args = PPOModelArguments(lora_r=4, lora_alpha=8, lora_target_modules=["all-linear"])
    value = with_lora(scorer, model_args, "SEQ_CLS", gradient_checkpointing=False, top_layers=TOP)
    with torch.no_grad():
        for name, parameter in value.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    return PolicyAndValue(policy, value_model=value, value_adapter_layers=TOP)


def value_lora(model: PolicyAndValue) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.value_model.named_parameters() if "lora_" in n}


def test_value_model_adapter_only_on_the_top_layers(separate):
    layers = separate.value_model.config.num_hidden_layers
    names = value_lora(separate)
    assert names and all(f"layers.{layers - TOP}." in name for name in names)


def test_value_model_top_layers_from_its_own_lower_pass_match_a_full_pass(separate):
    with torch.no_grad():
        _, values = separate(*batch(), keep=4, part="value")
        full = last_hidden(separate.value_model, *batch())
        expected = separate.value_model.score(full[:, -4:]).squeeze(-1)
    torch.testing.assert_close(values, expected)


def test_value_model_loss_trains_its_top_adapter_and_head_only(separate):
    _, values = separate(*batch(), keep=4, part="value")
    values.square().sum().backward()
    assert all(p.grad is not None and p.grad.any() for p in value_lora(separate).values())
    trained = {n for n, p in separate.value_model.named_parameters() if p.grad is not None and p.grad.any()}
    assert trained == set(value_lora(separate)) | {n for n in trained if "score" in n} and any(
        "score" in n for n in trained
    )
    assert all(p.grad is None for p in separate.policy.parameters())


def test_reward_scored_on_the_shared_base_ignores_the_value_adapter_and_head(separate, scorer_dir):
    tokenizer = AutoTokenizer.from_pretrained(scorer_dir)
    shared = LearnedReward(separate.value_model, tokenizer, scoring_mode=separate.value_base_scorer)
    plain = LearnedReward(AutoModelForSequenceClassification.from_pretrained(scorer_dir, num_labels=1), tokenizer)
    prompts, completions = ["a good film", "the plot"], [" and a fine cast", " was dull"]
    with torch.no_grad():
        for parameter in separate.value_parameters():
            parameter.add_(0.3)  # the value adapter and the value head's copy both move away from the reward model
    torch.testing.assert_close(shared(prompts, completions), plain(prompts, completions))
    assert all(p.requires_grad for p in separate.value_parameters())
    _, values = separate(*batch(), keep=4, part="value")
    assert values.requires_grad


def test_value_model_values_from_kept_lower_layer_outputs_match_for_any_rows(separate):
    """A rollout keeps the frozen lower layers' output; a minibatch of its rows gets the full pass's values."""
    input_ids, attention_mask, position_ids = batch()
    with torch.no_grad():
        kept = separate.value_inputs(input_ids, attention_mask, position_ids)
        full = last_hidden(separate.value_model, input_ids, attention_mask, position_ids)
        expected = separate.value_model.score(full[:, -4:]).squeeze(-1)
        rows = torch.tensor([2, 0])
        _, values = separate(
            input_ids[rows], attention_mask[rows], position_ids[rows], keep=4, part="value", value_inputs=kept[rows]
        )
    torch.testing.assert_close(values, expected[rows])


def test_a_body_that_rescales_input_embeddings_is_refused(separate, monkeypatch):
    trunk = separate.value_model.get_base_model().model
    forward = trunk.forward

    def scaled(*args, inputs_embeds=None, **kwargs):  # as Gemma multiplies its input embeddings by sqrt(hidden)
        return forward(*args, inputs_embeds=None if inputs_embeds is None else inputs_embeds * 2.0, **kwargs)

    monkeypatch.setattr(trunk, "forward", scaled)
    with pytest.raises(PipelineError, match="takes input embeddings as given"):
        separate.value_inputs(*batch())
