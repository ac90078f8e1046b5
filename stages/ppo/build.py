"""Build the PPO stage's models: policy (+ reference) and value in the configured layout, and reward sources."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

from accelerate import PartialState
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl.trainer.utils import disable_dropout_in_model

from pipeline.config import ModelArguments
from pipeline.errors import PipelineError
from pipeline.models import load_causal_lm, load_sequence_scorer, load_tokenizer, lora_config, merge_adapter
from reward_models.learned import LearnedReward
from stages.ppo.config import PPOConfig
from stages.ppo.modeling import POLICY_ADAPTER, REWARD_ADAPTER, VALUE_ADAPTER, PolicyAndValue, ValueHead, trunk_of
from stages.ppo.reward_adapter import PolicyBaseReward, attach_reward_adapter, copy_reward_into_value_adapter

VALUE_HEAD_FILE = "value_head.safetensors"


def with_lora(
    model: PreTrainedModel,
    model_args: ModelArguments,
    task_type: str,
    gradient_checkpointing: bool,
    top_layers: int | None = None,
):
    """Wrap ``model`` in a LoRA adapter (preparing a 4/8-bit model for training first), on its top ``top_layers``
    decoder layers only when given."""
    if getattr(model, "is_quantized", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    config = top_layers_only(lora_config(model_args, task_type), model, top_layers)
    peft_model = get_peft_model(model, config)
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
    value_source: str | None,
    model_args: ModelArguments,
    args: PPOConfig,
    pad_token_id: int,
    reward_adapter: Path | None = None,
) -> PolicyAndValue:
    """Policy from the SFT model; reference and value per ``args.value_model`` and ``model_args.use_peft``; with
    ``reward_adapter`` (adapter layout) the reward adapter on the policy's base too, and unless ``args.value_init``
    is 'zero' the value adapter and head start as its copies."""
    policy = load_causal_lm(sft_source, model_args)
    if args.gradient_checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    reference = None
    if model_args.use_peft:
        policy = with_lora(policy, model_args, "CAUSAL_LM", args.gradient_checkpointing)
    else:
        reference = load_causal_lm(sft_source, model_args).requires_grad_(False).eval()
    if args.value_model == "adapter":
        reward_head = attach_reward_adapter(policy, reward_adapter) if reward_adapter is not None else None
        from_reward = reward_head is not None and args.value_init != "zero"
        # A copy of the reward adapter's settings (rank, modules) when the value adapter starts as its copy.
        config = (
            copy.deepcopy(policy.peft_config[REWARD_ADAPTER]) if from_reward else lora_config(model_args, "CAUSAL_LM")
        )
        policy.add_adapter(VALUE_ADAPTER, top_layers_only(config, policy, args.value_adapter_layers))
        value_head = ValueHead(policy.config.hidden_size)
        if from_reward:
            copy_reward_into_value_adapter(policy)
            value_head.start_from(reward_head)
        disable_dropout_in_model(policy)
        return PolicyAndValue(
            policy,
            value_head=value_head,
            value_adapter_layers=args.value_adapter_layers,
            reward_head=reward_head,
            value_reads_reward=from_reward,
        )
    value = load_sequence_scorer(value_source, model_args, pad_token_id)
    if not model_args.use_peft:  # a fully fine-tuned value model trains every layer
        return PolicyAndValue(policy, value_model=value, reference=reference)
    value = with_lora(value, model_args, "SEQ_CLS", args.gradient_checkpointing, args.value_adapter_layers)
    return PolicyAndValue(policy, value_model=value, value_adapter_layers=args.value_adapter_layers)


def reward_model_loader(default_path: str | None, dtype: str, batch_size: int, shared: PolicyAndValue | None = None):
    """A loader for learned reward sources: ``rm`` means ``default_path``, anything else is a folder or hub id.

    With ``shared``, the reward model at ``default_path`` is not loaded again: it is either the reward adapter on that
    module's policy base (scored from the policy's token ids in the rollout's pass), or the base of its LoRA value
    model, scored with the value adapter disabled.
    """
    from pipeline.models import resolve_model_source

    def load(spec: str) -> LearnedReward:
        if spec == "rm":
            if default_path is None:
                raise PipelineError("reward 'rm' needs a reward model: set reward_model_path or run `make rm`")
            path = default_path
        else:
            path = resolve_model_source(spec, "reward model")
        if shared is not None and path == default_path and shared.scores_rewards:
            return PolicyBaseReward()
        tokenizer = load_tokenizer(path)
        if shared is not None and path == default_path:
            return LearnedReward(
                shared.value_model, tokenizer, batch_size=batch_size, scoring_mode=shared.value_base_scorer
            )
        model = load_sequence_scorer(path, ModelArguments(dtype=dtype), tokenizer.pad_token_id)
        return LearnedReward(model.to(PartialState().device).requires_grad_(False), tokenizer, batch_size=batch_size)

    return load


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
        model.policy.merge_and_unload(adapter_names=[POLICY_ADAPTER]).save_pretrained(work / "model")
    else:
        model.policy.save_pretrained(work / "model")
    tokenizer.save_pretrained(work / "model")
    return written
