"""The forward passes of policy, reference, value and (on the policy's base) reward, in one module.

Which of them share weights is decided in ``layout.py``; this module runs them:

- one base (``value_head``): the policy is a LoRA adapter, the reference the same base with adapters disabled, the
  value a second LoRA adapter (``VALUE_ADAPTER``) with a scalar head; a reward model trained as a LoRA adapter on the
  same base may sit there too, frozen (``REWARD_ADAPTER`` with ``reward_head``), and then the critic reads the reward
  adapter's features below its own layers.
- separate (``value_model``): the value is a sequence-classification model of its own; the reference is the policy
  with its adapter disabled (LoRA) or a frozen copy (full fine-tuning).

Wrapping policy and value in one ``nn.Module`` lets one optimizer and one DDP/DeepSpeed/FSDP wrapper cover both.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers import PreTrainedModel

from pipeline.errors import PipelineError

POLICY_ADAPTER = "default"
VALUE_ADAPTER = "value"
REWARD_ADAPTER = "reward"
# Config fields of bodies whose layers read state from other layers than the one below (KV shared across layers):
# their top layers cannot run on their own from the hidden states entering them.
CROSS_LAYER_STATE = ("num_kv_shared_layers", "kv_sharing")


def position_ids_from(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: 0 at the first real token (cumsum(mask) - mask)."""
    return (attention_mask.cumsum(-1) - attention_mask).long()


def last_logits(model, input_ids, attention_mask, position_ids, keep: int) -> torch.Tensor:
    """A causal LM's logits for the last ``keep`` positions, without building a KV cache."""
    return model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=keep,
        use_cache=False,
    ).logits


def trunk_of(model: PreTrainedModel | PeftModel) -> nn.Module:
    """The transformer body (no LM or classification head); LoRA layers injected in it stay active."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return getattr(base, base.base_model_prefix)


def last_hidden(model: PreTrainedModel | PeftModel, input_ids, attention_mask, position_ids) -> torch.Tensor:
    """The body's last hidden states at every position (active LoRA layers included), without a KV cache."""
    return trunk_of(model)(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state


def last_token_rows(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``hidden`` at each row's last attended position (the EOS of a finished response)."""
    last = attention_mask.shape[1] - 1 - attention_mask.flip(1).argmax(1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


@torch.no_grad()
def copy_adapter(model: PeftModel, source: str, target: str) -> None:
    """Set every weight of adapter ``target`` to adapter ``source``'s in the same module (``target`` must have the
    same rank and sit on a subset of ``source``'s modules)."""
    copied = 0
    for module in model.modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        for part in (getattr(module, name) for name in module.adapter_layer_names):
            if target in part:
                into, start = part[target], part[source]
                (into.weight if isinstance(into, nn.Module) else into).copy_(
                    start.weight if isinstance(start, nn.Module) else start
                )
                copied += 1
    if not copied:
        raise RuntimeError(f"no layer of adapter '{target}' to start from adapter '{source}'")


class ValueHead(nn.Module):
    """A scalar value per position from the last hidden state, zero-initialized (values start at 0)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.summary.weight)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1)

    @torch.no_grad()
    def start_from(self, score: nn.Linear) -> None:
        """Start as a copy of a reward model's score head, so the values start as the reward model's readings."""
        self.summary.weight.copy_(score.weight)
        self.summary.bias.copy_(score.bias if score.bias is not None else torch.zeros_like(self.summary.bias))


class _PassThrough(nn.Module):
    """Stands in for a lower decoder layer while the upper layers run on their own: returns its input."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states


class _Captured(Exception):
    """Raised by a capturing hook to skip the layers above it."""


class UpperLayers:
    """The top ``count`` decoder layers of a body, run on their own from the hidden states entering them.

    The layers below are swapped for pass-throughs for the call and the given hidden states are put in at the first
    upper layer, so the body itself still computes the masks, positions and per-layer settings (sliding-window
    layers, ``layer_types``) it gives each layer by its index: nothing is re-implemented or re-indexed here.
    """

    def __init__(self, trunk: nn.Module, count: int) -> None:
        layers = getattr(trunk, "layers", None)
        if not isinstance(layers, nn.ModuleList):
            raise PipelineError(
                f"value_adapter_layers needs a decoder whose body keeps its layers in `layers` (Llama, Mistral, "
                f"Qwen2/3, Gemma, ...); {type(trunk).__name__} does not: leave value_adapter_layers unset"
            )
        config = getattr(trunk, "config", None)
        shared = [name for name in CROSS_LAYER_STATE if getattr(config, name, None)]
        if shared:
            raise PipelineError(
                f"value_adapter_layers needs layers that read only the hidden states below them; "
                f"{type(trunk).__name__} shares state across layers ({shared[0]}): leave value_adapter_layers unset"
            )
        if not 0 < count <= len(layers):
            raise PipelineError(f"value_adapter_layers must be between 1 and {len(layers)} (the model's layers)")
        self.trunk, self.count, self.first = trunk, count, len(layers) - count

    @contextmanager
    def capturing(self, stop: bool = False) -> Iterator[list[torch.Tensor]]:
        """Record, in the yielded list, the hidden states entering the first upper layer during the pass run
        inside (detached); with ``stop`` the pass ends there, skipping the layers above."""
        recorded: list[torch.Tensor] = []

        def record(module, args, kwargs):
            recorded.append((args[0] if args else kwargs["hidden_states"]).detach())
            if stop:
                raise _Captured

        handle = self.trunk.layers[self.first].register_forward_pre_hook(record, with_kwargs=True)
        try:
            yield recorded
        except _Captured:
            pass
        finally:
            handle.remove()

    def run_from(self, hidden: torch.Tensor, input_ids, attention_mask, position_ids) -> torch.Tensor:
        """The body's last hidden states when ``hidden`` enters the first upper layer (any active adapter applies)."""

        def put_in(module, args, kwargs):
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        layers = self.trunk.layers
        lower = [layers[i] for i in range(self.first)]
        handle = layers[self.first].register_forward_pre_hook(put_in, with_kwargs=True)
        try:
            for i in range(self.first):
                layers[i] = _PassThrough()
            return self.trunk(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).last_hidden_state
        finally:
            for i, layer in enumerate(lower):
                layers[i] = layer
            handle.remove()


class PolicyModel(nn.Module):
    """A trained policy with its reference, and the adapter plumbing every algorithm on the engine shares: the
    reference is the policy's base with its adapters disabled (LoRA) or a frozen full copy, and adapters on that
    base are switched without losing track of which parameters train."""

    def __init__(self, policy: PreTrainedModel | PeftModel, reference: PreTrainedModel | None = None) -> None:
        super().__init__()
        self.policy = policy
        # A frozen full copy is kept out of the module's parameters (it is neither trained nor checkpointed).
        self._reference = [reference] if reference is not None else []
        self._trainable: list[nn.Parameter] = []

    def _track_trainable(self, extra: list[nn.Parameter] = ()) -> None:
        """Record what trains: every parameter that requires grad now, plus ``extra`` (adapters PEFT may freeze)."""
        trainable = [p for p in self.parameters() if p.requires_grad] + list(extra)
        self._trainable = list({id(p): p for p in trainable}.values())

    def _backbones(self) -> list:
        return [self.policy]

    # TRL's unwrap_model_for_generation switches gradient checkpointing off while generating, by these names.
    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(model.is_activation_checkpointing for model in self._backbones())

    def gradient_checkpointing_disable(self) -> None:
        for model in self._backbones():
            model.gradient_checkpointing_disable()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        for model in self._backbones():
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def value_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters of a value function, if the algorithm has one (own optimizer groups)."""
        return []

    def trainable_names(self) -> set[str]:
        """Names (in this module) of the parameters the algorithm trains: what a checkpoint must hold."""
        wanted = {id(p) for p in self._trainable}
        return {name for name, p in self.named_parameters() if id(p) in wanted}

    def _use_adapter(self, name: str) -> None:
        # PEFT's set_adapter makes the active adapter trainable and freezes every other one (the reward adapter too,
        # once the policy adapter is active again); a parameter frozen between forward and backward gets no
        # gradient, so the trained adapters are made trainable again after each switch.
        self.policy.set_adapter(name)
        self._restore_trainable()

    def _restore_trainable(self) -> None:
        for parameter in self._trainable:
            parameter.requires_grad_(True)

    @contextmanager
    def _adapter(self, name: str) -> Iterator[None]:
        """``name`` active on the policy's base inside, the policy adapter again afterwards."""
        self._use_adapter(name)
        try:
            yield
        finally:
            self._use_adapter(POLICY_ADAPTER)

    @property
    def frozen_reference(self) -> PreTrainedModel | None:
        """The frozen reference copy (full fine-tuning), or None when the reference is the adapter-disabled base."""
        return self._reference[0] if self._reference else None

    @contextmanager
    def reference_policy(self) -> Iterator[PreTrainedModel | PeftModel]:
        """The reference (initial) policy to call or generate with: the frozen copy, or the policy with its adapters
        disabled (trainable flags restored afterwards, since PEFT freezes adapters when disabling them)."""
        if self._reference:
            yield self._reference[0]
            return
        try:
            with self.policy.disable_adapter():
                yield self.policy
        finally:
            self._restore_trainable()

    def policy_logits(self, input_ids, attention_mask, position_ids, keep: int) -> torch.Tensor:
        """Policy logits for the last ``keep`` positions."""
        return last_logits(self.policy, input_ids, attention_mask, position_ids, keep)

    def describe(self) -> dict:
        """Which roles share weights here (a resumed run must hold the same; see checkpoints.py)."""
        return {"frozen_reference_copy": self.frozen_reference is not None}


class PolicyAndValue(PolicyModel):
    """``forward`` returns the policy's logits and the value estimates for the last ``keep`` positions."""

    def __init__(
        self,
        policy: PreTrainedModel | PeftModel,
        value_head: ValueHead | None = None,
        value_model: PreTrainedModel | PeftModel | None = None,
        reference: PreTrainedModel | None = None,
        value_adapter_layers: int | None = None,
        reward_head: nn.Linear | None = None,
    ) -> None:
        """``reward_head``: the score head of a frozen ``REWARD_ADAPTER`` already on the policy's base; the value
        adapter then reads the reward adapter's hidden states below its own layers (it started as its copy there).
        ``value_adapter_layers``: the value adapter sits on that many top layers only (one base)."""
        super().__init__(policy, reference)
        if (value_head is None) == (value_model is None):
            raise ValueError("give either a value head (one base) or a value model (separate)")
        if (reward_head is not None or value_adapter_layers) and value_head is None:
            raise ValueError("a reward adapter or value_adapter_layers needs the one-base layout")
        self.value_head = value_head
        self.value_model = value_model
        self.reward_head = reward_head.requires_grad_(False) if reward_head is not None else None
        self._upper = UpperLayers(trunk_of(policy), value_adapter_layers) if value_adapter_layers else None
        if value_head is not None:
            value_adapter = [p for name, p in policy.named_parameters() if f".{VALUE_ADAPTER}." in name]
            self._value = list(value_head.parameters()) + value_adapter
        else:
            self._value = [p for p in value_model.parameters() if p.requires_grad]
        self._track_trainable(self._value)
        if value_head is not None:
            self._use_adapter(POLICY_ADAPTER)

    @property
    def one_base(self) -> bool:
        return self.value_head is not None

    @property
    def scores_rewards(self) -> bool:
        """Whether a reward adapter sits on the policy's base (read by ``reward_scores``); the value adapter then
        started as its copy and reads its features below the value's own layers."""
        return self.reward_head is not None

    def describe(self) -> dict:
        return {
            **super().describe(),
            "one_base": self.one_base,
            "reward_on_policy_base": self.scores_rewards,
            "value_adapter_layers": self._upper.count if self._upper is not None else None,
        }

    def _backbones(self) -> list:
        return [self.policy] + ([self.value_model] if self.value_model is not None else [])

    def value_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters of the value: value adapter and head, or the value model's."""
        return list(self._value)

    # ----- passes -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def frozen_passes(
        self, input_ids, attention_mask, position_ids, keep: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The reference's logits for the last ``keep`` positions, and the hidden states entering the value's top
        layers (None when the value adapter covers every layer): the reward adapter's, read by a pass that stops
        there, or the reference's, recorded during its pass. Neither changes during training, so a rollout computes
        them once and every value pass on its episodes starts from them."""
        capture = self._upper is not None and not self.scores_rewards
        with self.reference_policy() as reference, self._upper.capturing() if capture else nullcontext() as record:
            logits = last_logits(reference, input_ids, attention_mask, position_ids, keep)
        if capture:
            return logits, record[0]
        if self._upper is None:
            return logits, None
        with self._adapter(REWARD_ADAPTER), self._upper.capturing(stop=True) as record:
            trunk_of(self.policy)(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            )
        return logits, record[0]

    def values(self, input_ids, attention_mask, position_ids, keep: int, value_inputs=None) -> torch.Tensor:
        """Value estimates for the last ``keep`` positions; with top-layer value adapters, from ``value_inputs``
        (see ``frozen_passes``)."""
        if not self.one_base:
            hidden = last_hidden(self.value_model, input_ids, attention_mask, position_ids)
            return self.value_model.score(hidden[:, -keep:]).squeeze(-1).float()
        if self._upper is not None and value_inputs is None:
            value_inputs = self.frozen_passes(input_ids, attention_mask, position_ids, 1)[1]
        with self._adapter(VALUE_ADAPTER):
            if self._upper is None:
                hidden = last_hidden(self.policy, input_ids, attention_mask, position_ids)
            else:
                hidden = self._upper.run_from(value_inputs, input_ids, attention_mask, position_ids)
        return self.value_head(hidden[:, -keep:])

    @torch.no_grad()
    def reward_scores(self, input_ids, attention_mask) -> torch.Tensor:
        """The reward adapter's score of each sequence, read at its last attended token (EOS for a finished
        response), in float32."""
        if not self.scores_rewards:
            raise RuntimeError("no reward adapter on the policy's base")
        with self._adapter(REWARD_ADAPTER):
            hidden = last_hidden(self.policy, input_ids, attention_mask, position_ids_from(attention_mask))
        final = last_token_rows(hidden, attention_mask)
        return self.reward_head(final.to(self.reward_head.weight.dtype)).squeeze(-1).float()

    def forward(
        self, input_ids, attention_mask, position_ids, keep: int, part: str = "both", value_inputs=None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(policy logits, values) for the last ``keep`` positions; ``part`` 'policy' or 'value' computes only that
        one (the other is None), so a training step can free one pass's activations before running the other."""
        logits = (
            self.policy_logits(input_ids, attention_mask, position_ids, keep) if part in ("both", "policy") else None
        )
        values = (
            self.values(input_ids, attention_mask, position_ids, keep, value_inputs)
            if part in ("both", "value")
            else None
        )
        return logits, values
