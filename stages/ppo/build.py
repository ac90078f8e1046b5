"""Build the PPO engine's models in the decided layout (``layout.py``), and save what it trained."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl.trainer.utils import disable_dropout_in_model

from pipeline.config import ModelArguments
from pipeline.errors import PipelineError
from pipeline.models import load_causal_lm, load_sequence_scorer, lora_config, merge_adapter
from pipeline.noise import lm_head_unaffected
from stages.ppo.config import PPOArguments
from stages.ppo.layout import Layout
from stages.ppo.modeling import (
    POLICY_ADAPTER,
    REWARD_ADAPTER,
    VALUE_ADAPTER,
    PolicyAndValue,
    ValueHead,
    copy_adapter,
    trunk_of,
)
from stages.ppo.reward_adapter import attach_reward_adapter

VALUE_HEAD_FILE = "value_head.safetensors"


def with_lora(model: PreTrainedModel, model_args: ModelArguments, task_type: str, gradient_checkpointing: bool):
    """Wrap ``model`` in a LoRA adapter, preparing a 4/8-bit model for training first."""
    if getattr(model, "is_quantized", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    peft_model = get_peft_model(model, lora_config(model_args, task_type))
    disable_dropout_in_model(peft_model)
    return peft_model


def top_layers_only(config: LoraConfig, model: PreTrainedModel | PeftModel, top_layers: int | None) -> LoraConfig:
    """``config`` restricted to the same modules in the top ``top_layers`` decoder layers of ``model``."""
    if not top_layers:
        return config
    layers = getattr(trunk_of(model), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise PipelineError(
            f"value_adapter_layers needs a decoder whose body has `layers` (Llama-style); {type(model).__name__} "
            "has not: leave value_adapter_layers unset"
        )
    targets = {config.target_modules} if isinstance(config.target_modules, str) else set(config.target_modules)
    if targets == {"all-linear"}:
        # A LoRA-wrapped linear layer counts once, by its own name (not its base_layer / lora_A inside).
        tuned = [name for name, module in layers.named_modules() if isinstance(module, BaseTunerLayer)]
        names = {
            name.rsplit(".", 1)[-1]
            for name, module in layers.named_modules()
            if isinstance(module, nn.Linear | BaseTunerLayer) and not any(name.startswith(f"{t}.") for t in tuned)
        }
    elif isinstance(config.target_modules, str):
        raise PipelineError(
            "value_adapter_layers needs lora_target_modules as module names or 'all-linear', not a pattern"
        )
    else:
        names = {name.rsplit(".", 1)[-1] for name in targets}
    total = len(layers)
    return dataclasses.replace(
        config, target_modules=names, layers_to_transform=list(range(max(total - top_layers, 0), total))
    )


def build_policy_and_value(
    sft_source: str,
    layout: Layout,
    model_args: ModelArguments,
    args: PPOArguments,
    pad_token_id: int,
    value_source: str | None = None,
) -> PolicyAndValue:
    """Policy from the SFT model; reference, value and (on the policy's base) reward as ``layout`` says; a separate
    value model starts from ``value_source``."""
    policy = load_causal_lm(sft_source, model_args)
    if args.gradient_checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    reference = None
    if layout.lora:
        policy = with_lora(policy, model_args, "CAUSAL_LM", args.gradient_checkpointing)
    else:
        reference = load_causal_lm(sft_source, model_args).requires_grad_(False)
    if layout.value_model == "separate":
        value = load_sequence_scorer(value_source, model_args, pad_token_id)
        if layout.lora:
            value = with_lora(value, model_args, "SEQ_CLS", args.gradient_checkpointing)
        return PolicyAndValue(policy, value_model=value, reference=reference)
    reward_head = attach_reward_adapter(policy, layout.reward_adapter) if layout.reward_adapter else None
    # The value adapter starts as the reward adapter (same rank and modules) when there is one on the base.
    config = (
        copy.deepcopy(policy.peft_config[REWARD_ADAPTER])
        if reward_head is not None
        else lora_config(model_args, "CAUSAL_LM")
    )
    policy.add_adapter(VALUE_ADAPTER, top_layers_only(config, policy, layout.value_adapter_layers))
    value_head = ValueHead(policy.config.hidden_size)
    if reward_head is not None:
        copy_adapter(policy, REWARD_ADAPTER, VALUE_ADAPTER)
        value_head.start_from(reward_head)
    disable_dropout_in_model(policy)
    return PolicyAndValue(
        policy, value_head=value_head, value_adapter_layers=layout.value_adapter_layers, reward_head=reward_head
    )


def save_policy_and_value(
    model: PolicyAndValue, tokenizer: PreTrainedTokenizerBase, work: Path, sft_source: str
) -> dict[str, str]:
    """Write ``adapter/`` + merged ``model/`` (or ``model/`` for full fine-tuning) and ``value/``; main process only.

    The policy adapter is merged into the loaded base in place (no second copy of the base in memory), so ``model``
    is unusable afterwards; a quantized base cannot be merged exactly and is re-loaded in full precision instead.
    Returns the folder names written, for the summary.
    """
    written = {"model": "model", "value": "value"}
    value_dir = work / "value"
    if model.one_base:
        model.policy.save_pretrained(value_dir, selected_adapters=[VALUE_ADAPTER])
        # PEFT puts a non-default adapter in a subfolder named after it; keep value/ itself loadable.
        for file in (value_dir / VALUE_ADAPTER).iterdir():
            file.rename(value_dir / file.name)
        (value_dir / VALUE_ADAPTER).rmdir()
        save_file({k: v.contiguous() for k, v in model.value_head.state_dict().items()}, value_dir / VALUE_HEAD_FILE)
    else:
        model.value_model.save_pretrained(value_dir)
    tokenizer.save_pretrained(value_dir)

    if isinstance(model.policy, PeftModel):
        model.policy.save_pretrained(work / "adapter", selected_adapters=[POLICY_ADAPTER])
        tokenizer.save_pretrained(work / "adapter")
        written["adapter"] = "adapter"
        if getattr(model.policy, "is_quantized", False):
            merge_adapter(sft_source, work / "adapter", work / "model")
            return written
        # PEFT warns about embeddings tied to the LM head when another adapter (the reward adapter) trains them;
        # only the policy adapter is merged, so that matters only if the policy adapter itself adapts embeddings.
        policy_embeddings = any(
            "lora_embedding" in n and f".{POLICY_ADAPTER}." in n for n, _ in model.named_parameters()
        )
        with contextlib.nullcontext() if policy_embeddings else lm_head_unaffected():
            merged = model.policy.merge_and_unload(adapter_names=[POLICY_ADAPTER])
        merged.save_pretrained(work / "model")
    else:
        model.policy.save_pretrained(work / "model")
    tokenizer.save_pretrained(work / "model")
    return written
