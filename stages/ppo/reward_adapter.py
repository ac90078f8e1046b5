"""A reward model trained as a LoRA adapter on the SFT model (the RM stage with LoRA), put on the policy's own base
as a frozen third adapter with its score head: one base in memory for policy, reference, value and reward.

The reward is then read from the policy's own token ids by a pass over that base (``PolicyAndValue.reward_scores``,
served to the engine as a ``reward_models.policy_base.PolicyBaseReward`` source), and the value adapter and head start
as copies of the reward adapter and head.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel
from peft.utils import load_peft_weights, set_peft_model_state_dict
from torch import nn

from pipeline.errors import PipelineError
from pipeline.models import adapter_base
from pipeline.noise import lm_head_unaffected
from pipeline.runs import MANIFEST, content_hash, read_json
from stages.ppo.modeling import REWARD_ADAPTER

# The score head of a sequence-classification model in transformers' causal-LM families (Llama, Mistral, Qwen2,
# Gemma, GPT-2, GPT-NeoX, ...), saved with the adapter as a fully trained module.
SCORE_HEAD = "score"


def _same_model(one: str, other: str) -> bool:
    if os.path.exists(one) and os.path.exists(other):
        return os.path.samefile(one, other)
    return one == other


def trained_on(adapter_dir: Path, sft_source: str) -> bool:
    """Whether the reward adapter in ``adapter_dir`` was trained on ``sft_source``: it names that base, and when it
    is an RM stage's adapter, the base still holds what the stage's manifest recorded (an SFT stage re-run after the
    RM stage would otherwise silently change the reward)."""
    if not _same_model(adapter_base(adapter_dir), sft_source):
        return False
    manifest = adapter_dir.parent / MANIFEST
    if adapter_dir.name == "adapter" and manifest.is_file():
        recorded = read_json(manifest).get("inputs", {}).get("base_model", {}).get("sha256")
        if recorded and os.path.isdir(sft_source) and content_hash(Path(sft_source)) != recorded:
            raise PipelineError(
                f"the reward adapter in {adapter_dir} was trained on another version of {sft_source} than the one "
                "there now (was the SFT stage re-run after the RM stage?): re-run the RM stage (`make rm`)"
            )
    return True


def attach_reward_adapter(policy: PeftModel, adapter_dir: Path) -> nn.Linear:
    """Add the reward adapter in ``adapter_dir`` to ``policy``'s base as ``REWARD_ADAPTER`` (frozen, dropout off)
    and return its score head as a frozen linear layer.

    Besides LoRA weights and the score head, PEFT saves the base weights of adapted embedding layers with the
    adapter; those must equal the policy's own (the same base), which is checked.
    """
    config = LoraConfig.from_pretrained(str(adapter_dir))
    weights = load_peft_weights(str(adapter_dir), device="cpu")
    lora = {key: value for key, value in weights.items() if "lora_" in key}
    base_copies = {key: value for key, value in weights.items() if ".base_layer." in key}
    head = {key: value for key, value in weights.items() if key not in lora and key not in base_copies}
    if not head or any(key.rsplit(".", 2)[-2] != SCORE_HEAD for key in head):
        raise PipelineError(
            f"the reward adapter in {adapter_dir} holds full weights other than a '{SCORE_HEAD}' head "
            f"({sorted(head)[:3]}), which the policy's base does not share: set share_reward_base false"
        )
    config = dataclasses.replace(config, task_type="CAUSAL_LM", modules_to_save=None, lora_dropout=0.0)
    with lm_head_unaffected():  # the reward adapter reads hidden states, never the LM head its embeddings tie to
        policy.add_adapter(REWARD_ADAPTER, config)
    result = set_peft_model_state_dict(policy, lora, adapter_name=REWARD_ADAPTER)
    missing = [key for key in result.missing_keys if f".{REWARD_ADAPTER}." in key]
    if missing or result.unexpected_keys:
        raise PipelineError(
            f"the reward adapter in {adapter_dir} does not fit the SFT model's layers (missing {missing[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}): set share_reward_base false"
        )
    state = policy.state_dict()
    differing = [key for key, value in base_copies.items() if not torch.equal(state[key].cpu(), value.to(state[key]))]
    if differing:
        raise PipelineError(
            f"the reward adapter in {adapter_dir} was trained on other base weights than the SFT model's "
            f"({differing[0]} differs): give the SFT model it was trained on, or set share_reward_base false"
        )
    weight = next(value for key, value in head.items() if key.endswith(".weight"))
    bias = next((value for key, value in head.items() if key.endswith(".bias")), None)
    score = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
    with torch.no_grad():
        score.weight.copy_(weight)
        if bias is not None:
            score.bias.copy_(bias)
    return score.to(policy.device).requires_grad_(False)
