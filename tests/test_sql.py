"""Soft Q-learning (RLPrompt's loss) against values computed by hand, and the Polyak-averaged target adapter."""

from __future__ import annotations

import math

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig

from stages.prompt_opt.sql import TARGET_ADAPTER, PolicyAndTarget, soft_q_loss


def test_soft_q_loss_by_hand():
    # One episode of two steps over a vocabulary of two tokens, reward 1.
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(2.0), 0.0]]], requires_grad=True)  # V0 = log 4, V1 = log 3
    target = torch.tensor([[[0.0, 0.0], [0.0, math.log(3.0)]]])  # V'0 = log 2, V'1 = log 4
    actions = torch.tensor([[1, 0]])
    loss, stats = soft_q_loss(logits, target, actions, torch.tensor([1.0]), torch.ones(1, 2))
    a0, a1 = math.log(3 / 4), math.log(2 / 3)  # Q - V of the chosen tokens
    v0, v1 = math.log(2.0), math.log(4.0)  # the target's V
    one_step = [(a0 - (v1 - v0)) ** 2, (a1 - (1 - v1)) ** 2]
    multi_step = [((a0 + a1) - (1 - v0)) ** 2, (a1 - (1 - v1)) ** 2]
    expected = sum((o + m) / 2 for o, m in zip(one_step, multi_step, strict=True))
    assert abs(loss.item() - expected) < 1e-6, (loss.item(), expected)
    assert abs(stats["sql/target_v"].item() - (v0 + v1) / 2) < 1e-6
    loss.backward()
    assert logits.grad.abs().sum() > 0


def test_soft_q_loss_ignores_steps_after_the_end():
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))
    target = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(1))
    actions = torch.tensor([[1, 2, 3], [0, 4, 4]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    loss, _ = soft_q_loss(logits, target, actions, torch.tensor([0.5, -1.0]), mask)
    changed = logits.clone()
    changed[1, 2] += 10.0  # the second episode's third step is past its end
    other_target = target.clone()
    other_target[1, 2] -= 7.0
    loss_changed, _ = soft_q_loss(changed, other_target, actions, torch.tensor([0.5, -1.0]), mask)
    assert torch.allclose(loss, loss_changed)


def test_target_starts_as_the_policy_and_follows_it_by_the_polyak_rate():
    size = {"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2}
    config = LlamaConfig(num_hidden_layers=1, vocab_size=50, **size)
    torch.manual_seed(0)
    policy = get_peft_model(
        AutoModelForCausalLM.from_config(config), LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    model = PolicyAndTarget(policy)
    ids = torch.randint(0, 50, (2, 6))
    mask, positions = torch.ones_like(ids), torch.arange(6).expand(2, 6)
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name and ".default." in name:
                parameter.normal_(std=0.5)  # the policy moves away from its start
    trained = model.trainable_names()
    assert trained and not any(f".{TARGET_ADAPTER}." in name for name in trained)
    target_before = {n: p.clone() for n, p in policy.named_parameters() if f".{TARGET_ADAPTER}." in n}
    assert all(not p.any() for n, p in target_before.items() if "lora_B" in n)  # a copy of the no-op start
    model.polyak(0.25)
    for name, before in target_before.items():
        current = dict(policy.named_parameters())[name]
        source = dict(policy.named_parameters())[name.replace(f".{TARGET_ADAPTER}.", ".default.")]
        torch.testing.assert_close(current, 0.75 * before + 0.25 * source)
    assert not torch.allclose(model(ids, mask, positions, 3), model.target_logits(ids, mask, positions, 3))
