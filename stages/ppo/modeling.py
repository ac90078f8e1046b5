"""Policy, reference and value in one module, in one of two layouts.

- ``adapter``: one base model holds a policy LoRA adapter and a value LoRA adapter with a scalar head; the
  reference is the same base with adapters disabled. One copy of the base weights serves all three. A reward model
  trained as a LoRA adapter on the same base (the RM stage with LoRA) can sit on it as a frozen third adapter with
  its score head: then the rewards come from that base too (``reward_scores``), and the value adapter and head can
  start as copies of the reward adapter and head, reading the reward adapter's features below them.
- ``separate``: the value is its own sequence-classification model (initialized from the reward model); the
  reference is the policy with its adapter disabled (LoRA) or a frozen copy (full fine-tune). A LoRA value model
  can also be the reward source: ``value_base_scorer`` gives its base with the value adapter disabled.

Wrapping policy and value in one ``nn.Module`` lets one optimizer and one DDP/DeepSpeed/FSDP wrapper cover both.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from peft import PeftModel
from torch import nn
from transformers import PreTrainedModel

from pipeline.errors import PipelineError

POLICY_ADAPTER = "default"
VALUE_ADAPTER = "value"
REWARD_ADAPTER = "reward"


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


class _StopForward(Exception):
    """Raised by a capturing hook to skip the layers above it."""


class UpperLayers:
    """The top ``count`` decoder layers of a trunk, re-run from the input a lower pass fed them.

    ``capturing()`` records the hidden states entering the first of them (detached) and that layer's other inputs
    (attention mask, position embeddings); ``run()`` then feeds the recording through the layers and the final norm,
    with whichever adapter is active. Needs a Llama-style trunk: ``layers`` (a ModuleList) and ``norm``.
    """

    def __init__(self, trunk: nn.Module, count: int) -> None:
        layers, norm = getattr(trunk, "layers", None), getattr(trunk, "norm", None)
        if not isinstance(layers, nn.ModuleList) or not isinstance(norm, nn.Module):
            raise PipelineError(
                f"value_adapter_layers needs a decoder whose body has `layers` and `norm` (Llama-style); "
                f"{type(trunk).__name__} has not: leave value_adapter_layers unset"
            )
        if not 0 < count <= len(layers):
            raise PipelineError(f"value_adapter_layers must be between 1 and {len(layers)} (the model's layers)")
        self.layers, self.norm, self.first = layers, norm, len(layers) - count
        self._recorded: tuple[torch.Tensor, dict] | None = None

    @contextmanager
    def capturing(self, stop: bool = False) -> Iterator[None]:
        """Record the input of the first upper layer during the forward pass run inside; with ``stop`` the pass ends
        there (the layers above are not run by it)."""

        def record(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            self._recorded = (hidden.detach(), {k: v for k, v in kwargs.items() if k != "hidden_states"})
            if stop:
                raise _StopForward

        handle = self.layers[self.first].register_forward_pre_hook(record, with_kwargs=True)
        try:
            yield
        except _StopForward:
            pass
        finally:
            handle.remove()

    @property
    def recorded_input(self) -> torch.Tensor:
        """The hidden states the last capturing pass fed the first upper layer."""
        if self._recorded is None:
            raise RuntimeError("the value pass needs a policy pass on the same batch first")
        return self._recorded[0]

    def forget(self) -> None:
        """Drop the recording (it holds the layer's inputs: hidden states, masks, position embeddings)."""
        self._recorded = None

    def run_from(self, trunk: nn.Module, hidden: torch.Tensor, attention_mask, position_ids) -> torch.Tensor:
        """Last hidden states from ``hidden`` entering the first upper layer, any batch: ``trunk`` runs as usual
        (masks and positions from its own code) with ``hidden`` as its input embeddings and only the upper layers."""
        layers = trunk.layers
        trunk.layers = layers[self.first :]
        try:
            return trunk(
                inputs_embeds=hidden, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).last_hidden_state
        finally:
            trunk.layers = layers

    def run(self) -> torch.Tensor:
        """Last hidden states from the recorded input (consumed: each recording serves one run)."""
        hidden, kwargs = self.recorded_input, self._recorded[1]
        self._recorded = None
        for layer in self.layers[self.first :]:
            output = layer(hidden, **kwargs)
            hidden = output[0] if isinstance(output, tuple) else output
        return self.norm(hidden)


class PolicyAndValue(nn.Module):
    """``forward`` returns the policy's logits and the value estimates for the last ``keep`` positions."""

    def __init__(
        self,
        policy: PreTrainedModel | PeftModel,
        value_head: ValueHead | None = None,
        value_model: PreTrainedModel | PeftModel | None = None,
        reference: PreTrainedModel | None = None,
        value_adapter_layers: int | None = None,
        reward_head: nn.Linear | None = None,
        value_reads_reward: bool = False,
    ) -> None:
        """``reward_head``: the score head of a frozen ``REWARD_ADAPTER`` already on the policy's base (one base
        layout). ``value_reads_reward``: the value adapter on the top layers reads the reward adapter's hidden states
        below them (it started as a copy of the reward adapter there) instead of the policy's."""
        super().__init__()
        if (value_head is None) == (value_model is None):
            raise ValueError("give either a value head (adapter layout) or a value model (separate layout)")
        if (reward_head is not None or value_reads_reward) and value_head is None:
            raise ValueError("a reward adapter on the policy's base needs the adapter layout")
        if value_reads_reward and reward_head is None:
            raise ValueError("the value can read the reward adapter's features only when there is one")
        self.policy = policy
        self.value_head = value_head
        self.value_model = value_model
        self.reward_head = reward_head.requires_grad_(False) if reward_head is not None else None
        self.value_reads_reward = value_reads_reward
        # The value adapter on the top layers only: the value pass runs just those layers with gradients, from the
        # policy pass's hidden states (one base), the reward adapter's, or the value model's own lower layers run
        # without gradients.
        value_base = policy if value_head is not None else value_model
        self._upper = UpperLayers(trunk_of(value_base), value_adapter_layers) if value_adapter_layers else None
        self._checked_run_from = False
        # A frozen full copy is kept out of the module's parameters (it is neither trained nor checkpointed).
        self._reference = [reference] if reference is not None else []
        if value_head is not None:
            value_adapter = [p for name, p in policy.named_parameters() if f".{VALUE_ADAPTER}." in name]
            self._value = list(value_head.parameters()) + value_adapter
        else:
            self._value = [p for p in value_model.parameters() if p.requires_grad]
        trainable = [p for p in self.parameters() if p.requires_grad] + self._value
        self._trainable = list({id(p): p for p in trainable}.values())
        if value_head is not None:
            self._use_adapter(POLICY_ADAPTER)

    @property
    def one_base(self) -> bool:
        return self.value_head is not None

    @property
    def scores_rewards(self) -> bool:
        """Whether a reward adapter sits on the policy's base, so rewards come from ``reward_scores``."""
        return self.reward_head is not None

    def _backbones(self) -> list:
        return [self.policy] + ([self.value_model] if self.value_model is not None else [])

    # TRL's unwrap_model_for_generation switches gradient checkpointing off while generating.
    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(model.is_gradient_checkpointing for model in self._backbones())

    def gradient_checkpointing_disable(self) -> None:
        for model in self._backbones():
            model.gradient_checkpointing_disable()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        for model in self._backbones():
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def value_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters of the value: value adapter and head, or the value model's."""
        return list(self._value)

    def trainable_names(self) -> set[str]:
        """Names (in this module) of the parameters PPO trains: what a checkpoint must hold."""
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

    def values(self, input_ids, attention_mask, position_ids, keep: int, value_inputs=None) -> torch.Tensor:
        """Value estimates for the last ``keep`` positions (from ``value_inputs`` when given, see ``value_inputs``)."""
        if self.one_base:
            if self._upper is not None and self.value_reads_reward and value_inputs is None:
                value_inputs = self.reward_scores(input_ids, attention_mask, position_ids)[1]
            with self._adapter(VALUE_ADAPTER):
                if self._upper is None:
                    hidden = last_hidden(self.policy, input_ids, attention_mask, position_ids)
                elif self.value_reads_reward:
                    hidden = self._upper.run_from(trunk_of(self.policy), value_inputs, attention_mask, position_ids)
                else:
                    hidden = self._upper.run()
            return self.value_head(hidden[:, -keep:])
        if self._upper is not None:
            if value_inputs is None:
                value_inputs = self.value_inputs(input_ids, attention_mask, position_ids)
            hidden = self._upper.run_from(trunk_of(self.value_model), value_inputs, attention_mask, position_ids)
        else:
            hidden = last_hidden(self.value_model, input_ids, attention_mask, position_ids)
        return self.value_model.score(hidden[:, -keep:]).squeeze(-1).float()

    def value_inputs(self, input_ids, attention_mask, position_ids) -> torch.Tensor | None:
        """The hidden states entering the value model's lowest trained layer (no gradients), or None when there is
        no frozen lower part (one base, or a value adapter on every layer). They do not change during training, so a
        rollout computes them once and every value pass on its episodes starts from them. (When the value reads the
        reward adapter's features, ``reward_scores`` gives them.)"""
        if self.one_base or self._upper is None:
            return None
        trunk = trunk_of(self.value_model)
        with torch.no_grad(), self._upper.capturing(stop=True):
            trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        return self._recorded_value_inputs(trunk, attention_mask, position_ids)

    def _recorded_value_inputs(self, trunk: nn.Module, attention_mask, position_ids) -> torch.Tensor:
        """The hidden states the last capturing pass fed the value's lowest layer (the recording is dropped)."""
        hidden = self._upper.recorded_input
        if not self._checked_run_from:
            # run_from feeds the hidden states in as input embeddings; a body that rescales those (Gemma) would
            # silently compute other values, so the first batch is checked against the recorded layer inputs.
            with torch.no_grad():
                expected = self._upper.run()
                got = self._upper.run_from(trunk, hidden, attention_mask, position_ids)
            if not torch.allclose(got.float(), expected.float(), atol=1e-4, rtol=1e-3):
                raise PipelineError(
                    f"value_adapter_layers with value features from a frozen pass needs a body that takes input "
                    f"embeddings as given (Llama, Mistral, Qwen2); {type(trunk).__name__} does not: leave "
                    "value_adapter_layers unset"
                )
            self._checked_run_from = True
        self._upper.forget()
        return hidden

    @torch.no_grad()
    def reward_scores(self, input_ids, attention_mask, position_ids) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The reward adapter's score of each sequence, read at its last attended token (EOS for a finished
        response), in float32; and, when the value reads the reward adapter's features from the top layers, the
        hidden states entering the lowest of them (the same pass, so the rollout's reward costs one trunk pass)."""
        if not self.scores_rewards:
            raise RuntimeError("no reward adapter on the policy's base")
        record = self.value_reads_reward and self._upper is not None
        trunk = trunk_of(self.policy)
        with self._adapter(REWARD_ADAPTER), self._upper.capturing() if record else nullcontext():
            hidden = trunk(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).last_hidden_state
            value_inputs = self._recorded_value_inputs(trunk, attention_mask, position_ids) if record else None
        last = attention_mask.shape[1] - 1 - attention_mask.flip(1).argmax(1)
        final = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        scores = self.reward_head(final.to(self.reward_head.weight.dtype)).squeeze(-1).float()
        return scores, value_inputs

    def policy_logits(self, input_ids, attention_mask, position_ids, keep: int) -> torch.Tensor:
        """Policy logits for the last ``keep`` positions (recording the value pass's input when it needs one)."""
        records = self._upper is not None and self.one_base and not self.value_reads_reward
        with self._upper.capturing() if records else nullcontext():
            return last_logits(self.policy, input_ids, attention_mask, position_ids, keep)

    @property
    def frozen_reference(self) -> PreTrainedModel | None:
        """The frozen reference copy (full fine-tuning), or None when the reference is the adapter-disabled base."""
        return self._reference[0] if self._reference else None

    @contextmanager
    def reference_policy(self) -> Iterator[PreTrainedModel | PeftModel]:
        """The reference (SFT) policy to call or generate with: the frozen copy, or the policy with its adapters
        disabled (trainable flags restored afterwards, since PEFT freezes adapters when disabling them)."""
        if self._reference:
            yield self._reference[0]
            return
        try:
            with self.policy.disable_adapter():
                yield self.policy
        finally:
            self._restore_trainable()

    @contextmanager
    def value_base_scorer(self) -> Iterator[PeftModel]:
        """The value model with its adapter disabled: the reward model it was started from, for scoring rewards
        with the same weights in memory (trainable flags restored afterwards)."""
        if not isinstance(self.value_model, PeftModel):
            raise RuntimeError("only a LoRA value model has a frozen base to score with")
        try:
            with self.value_model.disable_adapter():
                yield self.value_model
        finally:
            self._restore_trainable()

    @torch.no_grad()
    def reference_logits(self, input_ids, attention_mask, position_ids, keep: int) -> torch.Tensor:
        """Logits of the reference (SFT) policy for the last ``keep`` positions."""
        with self.reference_policy() as reference:
            return last_logits(reference, input_ids, attention_mask, position_ids, keep)

    def forward(
        self, input_ids, attention_mask, position_ids, keep: int, part: str = "both", value_inputs=None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(policy logits, values) for the last ``keep`` positions; ``part`` 'policy' or 'value' computes only that
        one (the other is None), so a training step can free one pass's activations before running the other. With
        ``value_adapter_layers`` in one base the value pass reads the policy pass's hidden states, so 'policy' must
        come first, unless the value reads the reward adapter's features; those, and a value model's lower layers,
        it starts from ``value_inputs`` when given.
        """
        logits = (
            self.policy_logits(input_ids, attention_mask, position_ids, keep) if part in ("both", "policy") else None
        )
        values = (
            self.values(input_ids, attention_mask, position_ids, keep, value_inputs)
            if part in ("both", "value")
            else None
        )
        return logits, values
