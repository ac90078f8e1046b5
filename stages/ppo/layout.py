"""Where the policy, the reference, the value and the reward model live: decided once, here.

| use_peft | value_model | reward model ('rm')        | reference         | value                        | reward      |
|----------|-------------|----------------------------|-------------------|------------------------------|-------------|
| true     | adapter     | a LoRA adapter trained on  | the base with     | LoRA + head on the base,     | that adapter|
|          |             | the SFT model (RM stage)   | adapters disabled | started as the reward model  | frozen      |
| true     | adapter     | any other, or none         | the same          | LoRA + zero head on the base | its own     |
| true     | separate    | any                        | the same          | LoRA on a reward-model copy  | its own     |
| false    | separate    | any                        | a frozen copy     | a full reward-model copy     | its own     |

"Its own": a model of its own, reading re-tokenized text; the reward adapter on the base reads the policy's token
ids. Rule and function rewards need no model.

The first row holds one base model in memory for all four roles; with ``value_adapter_layers`` the value adapter
sits on the top layers only and trains just those (bench/README.md has the speed, memory and score figures).
Cut, because they bought nothing measurable: a one-base critic started from scratch while the reward adapter is on
the base (it scored 0.133 below trl 1.12 at matched KL where the critic from the reward model scored level), and
a separate LoRA critic sharing the reward model's weights with the rewards (level in score but slower and heavier
than the first row).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.models import adapter_base, is_lora_adapter
from stages.ppo.config import PPOArguments, PPOModelArguments
from stages.ppo.reward_adapter import trained_on


@dataclass(frozen=True)
class Layout:
    """One row of the table above."""

    lora: bool
    value_model: str  # 'adapter' (on the policy's base) or 'separate'
    value_adapter_layers: int | None  # the value adapter on the top N layers only (adapter)
    reward_adapter: Path | None  # the reward adapter put on the policy's base, its critic started from it
    reward_not_on_base: str | None  # why a reward model is not on the policy's base, when one is used

    def describe(self) -> dict:
        """The layout as plain values (summary.json, checkpoints)."""
        return {
            "lora": self.lora,
            "value_model": self.value_model,
            "value_adapter_layers": self.value_adapter_layers,
            "reward_on_policy_base": self.reward_adapter is not None,
            "critic_from_reward_model": self.reward_adapter is not None or self.value_model == "separate",
        }


def decide_layout(
    args: PPOArguments,
    model_args: PPOModelArguments,
    rm_source: str | None = None,
    sft_source: str | None = None,
    share_reward_base: bool = False,
) -> Layout:
    """The layout for these options; ``rm_source`` is the learned reward model in use, if any."""
    if args.value_model == "adapter" and not model_args.use_peft:
        raise PipelineError(
            "value_model 'adapter' needs use_peft true; use --value_model separate for full fine-tuning"
        )
    if args.snapshot_every and not model_args.use_peft:
        raise PipelineError(
            f"snapshot_every ({args.snapshot_every}) saves the policy's LoRA adapter, and with use_peft false there is "
            "none (a full copy of the model per snapshot): leave snapshot_every unset, or train with use_peft true"
        )
    if args.value_adapter_layers and args.value_model != "adapter":
        raise PipelineError(
            f"value_adapter_layers ({args.value_adapter_layers}) applies to value_model 'adapter' (the value adapter "
            "on the policy's base): with value_model 'separate' set it to 0 (the demo config sets 1)"
        )
    reason = None
    if rm_source is not None and args.value_model == "adapter":
        reason = _why_not_on_policy_base(model_args, rm_source, sft_source, share_reward_base)
    return Layout(
        lora=bool(model_args.use_peft),
        value_model=args.value_model,
        value_adapter_layers=args.value_adapter_layers or None,
        reward_adapter=Path(rm_source) if rm_source is not None and reason is None else None,
        reward_not_on_base=reason,
    )


def _why_not_on_policy_base(
    model_args: PPOModelArguments, rm_source: str, sft_source: str | None, share_reward_base: bool
) -> str | None:
    if not share_reward_base:
        return "share_reward_base is false"
    if not is_lora_adapter(rm_source):
        return f"the reward model {rm_source} is a full model, not a LoRA adapter (train the RM stage with use_peft)"
    if model_args.load_in_4bit or model_args.load_in_8bit:
        return "the policy's base is 4/8-bit"
    if sft_source is None or not trained_on(Path(rm_source), sft_source):
        return f"the reward adapter was trained on {adapter_base(rm_source)}, not on the SFT model {sft_source}"
    return None
