"""Soft Q-learning, RLPrompt's own algorithm, on the PPO engine's rollouts (Deng et al. 2022; Guo et al. 2021).

The policy's logits are its Q-values: ``Q(s, a) = logits[a]``, ``V(s) = logsumexp(logits)``, so ``A = Q - V`` is
the log-probability of the action and sampling from the policy is sampling from the Boltzmann policy of its Q.
A Polyak-averaged target (a second LoRA adapter on the same base) gives the bootstrap targets. The loss is
RLPrompt's on-policy one as its few-shot classification runs it (``v2_v2r_v3_v3r`` with the reversed terms'
coefficient unset, so the mean of two path-consistency losses with a sparse reward r at the last step):

- one step:    ``A_t``                   regressed on ``V'(s_{t+1}) - V'(s_t)``, and on ``r - V'(s_T)`` at the end;
- multi-step:  ``sum_{k >= t} A_k``      regressed on ``r - V'(s_t)``;

squared errors summed over the steps and averaged over the episodes (V' from the target).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from peft import PeftModel

from stages.ppo.modeling import POLICY_ADAPTER, PolicyModel, copy_adapter
from stages.ppo.sampling import TokenRules
from stages.ppo.update import MinibatchUpdate

TARGET_ADAPTER = "target"


def soft_q_loss(
    logits: torch.Tensor, target_logits: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss above for ``logits``/``target_logits`` [B, T, V] at the positions that chose ``actions`` [B, T],
    episode ``rewards`` [B] and the response ``mask`` [B, T] (1 up to each episode's last step)."""
    mask = mask.to(logits.dtype)
    lengths = mask.sum(1).long()
    rows = torch.arange(logits.shape[0], device=logits.device)
    q = logits.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    v = logits.logsumexp(-1)
    advantage = (q - v) * mask
    target_v = target_logits.logsumexp(-1)
    # one step: V'(s_{t+1}) - V'(s_t) before the end, r - V'(s_T) at it
    one_step = torch.cat([target_v[:, 1:], torch.zeros_like(target_v[:, :1])], dim=1) - target_v
    last = lengths - 1
    one_step = one_step.index_put((rows, last), rewards.to(one_step.dtype) - target_v[rows, last])
    # multi-step: the sum of the advantages from t to the end against r - V'(s_t)
    to_go = advantage.flip(1).cumsum(1).flip(1)
    multi_step = rewards.to(logits.dtype).unsqueeze(1) - target_v
    errors = ((advantage - one_step) ** 2 + (to_go - multi_step) ** 2) / 2
    loss = (errors * mask).sum(1).mean()
    with torch.no_grad():
        tokens = mask.sum().clamp(min=1)
        stats = {
            "loss/sql": loss.detach(),
            "sql/q": (q * mask).sum() / tokens,
            "sql/v": (v * mask).sum() / tokens,
            "sql/target_v": (target_v * mask).sum() / tokens,
            "policy/entropy_avg": (-(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1) * mask).sum() / tokens,
        }
    return loss, stats


class PolicyAndTarget(PolicyModel):
    """A LoRA policy whose logits are Q-values, and its Polyak-averaged target: a second adapter on the same base,
    frozen, started as the policy's copy. The reference (for KL figures) is the base with adapters disabled."""

    def __init__(self, policy: PeftModel) -> None:
        super().__init__(policy)
        policy.add_adapter(TARGET_ADAPTER, policy.peft_config[POLICY_ADAPTER])
        copy_adapter(policy, POLICY_ADAPTER, TARGET_ADAPTER)
        policy.set_adapter(POLICY_ADAPTER)  # the target adapter is frozen from here on
        self._track_trainable()
        named = dict(policy.named_parameters())
        self._pairs = [
            (named[name.replace(f".{POLICY_ADAPTER}.", f".{TARGET_ADAPTER}.")], parameter)
            for name, parameter in named.items()
            if f".{POLICY_ADAPTER}." in name and "lora_" in name
        ]

    def describe(self) -> dict:
        return {**super().describe(), "target_adapter": True}

    def forward(self, input_ids, attention_mask, position_ids, keep: int) -> torch.Tensor:
        return self.policy_logits(input_ids, attention_mask, position_ids, keep)

    @torch.no_grad()
    def target_logits(self, input_ids, attention_mask, position_ids, keep: int) -> torch.Tensor:
        with self._adapter(TARGET_ADAPTER):
            return self.policy_logits(input_ids, attention_mask, position_ids, keep)

    @torch.no_grad()
    def polyak(self, rate: float) -> None:
        """target <- (1 - rate) * target + rate * policy, weight by weight."""
        for target, parameter in self._pairs:
            target.lerp_(parameter.detach().to(target.dtype), rate)


@dataclass
class SQLBatch:
    """What soft Q-learning trains on for a batch of episodes; [B, T] tensors cover the response tokens."""

    input_ids: torch.Tensor  # [B, P + T]
    attention_mask: torch.Tensor  # [B, P + T]
    position_ids: torch.Tensor  # [B, P + T]
    responses: torch.Tensor  # [B, T]
    response_mask: torch.Tensor  # [B, T]
    rewards: torch.Tensor  # [B] the episode's shaped reward, given at its last step

    def __len__(self) -> int:
        return self.responses.shape[0]

    def rows(self, index: torch.Tensor) -> SQLBatch:
        return SQLBatch(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


class SQLUpdate(MinibatchUpdate):
    """Soft Q-learning steps; the target follows the policy by ``target_update_rate`` after every optimizer step."""

    def __init__(self, model, optimizer, accelerator, args, rules: TokenRules, unwrapped: PolicyAndTarget) -> None:
        super().__init__(model, optimizer, accelerator, args)
        self.rules, self.unwrapped = rules, unwrapped

    def micro_step(self, batch: SQLBatch) -> dict[str, torch.Tensor]:
        keep = batch.responses.shape[1] + 1
        inputs = (batch.input_ids, batch.attention_mask, batch.position_ids, keep)
        logits = self.rules.apply(self.model(*inputs)[:, :-1].float() / self.args.temperature)
        with self.accelerator.autocast():
            target_logits = self.unwrapped.target_logits(*inputs)
        target_logits = self.rules.apply(target_logits[:, :-1].float() / self.args.temperature)
        loss, stats = soft_q_loss(logits, target_logits, batch.responses, batch.rewards, batch.response_mask)
        self.accelerator.backward(loss)
        return stats

    def after_optimizer_step(self) -> None:
        self.unwrapped.polyak(self.args.target_update_rate)
