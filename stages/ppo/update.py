"""The PPO update: ``num_ppo_epochs`` passes of minibatch steps over one rollout, clipped policy and value losses."""

from __future__ import annotations

import contextlib
from collections import defaultdict

import torch
from accelerate import Accelerator
from torch import nn

from stages.ppo.config import PPOArguments
from stages.ppo.core import masked_mean, policy_loss, value_loss
from stages.ppo.rollout import Rollout
from stages.ppo.sampling import TokenRules, token_logprobs


def policy_objective(
    logits: torch.Tensor, batch: Rollout, args: PPOArguments, rules: TokenRules
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped surrogate loss (minus the entropy bonus) of a minibatch from the policy's logits at its response
    positions. The entropy keeps gradients only when it is in the loss (``entropy_coef`` > 0): otherwise it is
    logged from a no-gradient pass, so no float32 copy of the logits is held for the backward."""
    with_entropy = args.entropy_coef != 0
    logprobs, entropy = token_logprobs(
        logits, batch.responses, args.temperature, rules, entropy=True, entropy_grad=with_entropy
    )
    surrogate, stats = policy_loss(logprobs, batch.logprobs, batch.advantages, batch.response_mask, args.cliprange)
    mean_entropy = masked_mean(entropy, batch.response_mask)
    loss = surrogate - args.entropy_coef * mean_entropy if with_entropy else surrogate
    return loss, {
        "policy/approxkl_avg": stats["approxkl"],
        "policy/clipfrac_avg": stats["clipfrac"],
        "loss/policy_avg": surrogate.detach(),
        "policy/entropy_avg": mean_entropy.detach(),
        "val/ratio": stats["ratio"],
    }


class MinibatchUpdate:
    """Epochs x minibatches x gradient-accumulation micro-batches over one batch of episodes, on the prepared model:
    the loop every algorithm on the engine trains with. Subclasses give the micro-batch's losses and gradients
    (``micro_step``) and may act after each optimizer step or stop an update early."""

    def __init__(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, accelerator: Accelerator, args: PPOArguments
    ) -> None:
        self.model, self.optimizer, self.accelerator, self.args = model, optimizer, accelerator, args

    def __call__(self, batch) -> dict[str, float]:
        """Train on ``batch`` (a ``Rollout`` or anything with ``rows(index)`` and a length); returns the statistics
        averaged over steps and processes."""
        args, accelerator = self.args, self.accelerator
        stats: dict[str, list[torch.Tensor]] = defaultdict(list)
        minibatch = len(batch) // args.num_mini_batches
        for _ in range(args.num_ppo_epochs):
            order = torch.randperm(len(batch), device=batch.responses.device)
            for mb_start in range(0, len(batch), minibatch):
                minibatch_stats = []
                for start in range(mb_start, mb_start + minibatch, args.per_device_train_batch_size):
                    rows = batch.rows(order[start : start + args.per_device_train_batch_size])
                    with accelerator.accumulate(self.model):
                        step_stats = self.micro_step(rows)
                        if accelerator.sync_gradients and args.max_grad_norm:
                            accelerator.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
                        self.optimizer.step()
                        self.optimizer.zero_grad()
                        if accelerator.sync_gradients:
                            self.after_optimizer_step()
                    for key, value in step_stats.items():
                        stats[key].append(value)
                    minibatch_stats.append(step_stats)
                if self.stop_early(minibatch_stats, stats):
                    return self._mean(stats)
        return self._mean(stats)

    def micro_step(self, rows) -> dict[str, torch.Tensor]:
        """Losses and gradients of one micro-batch; returns its statistics."""
        raise NotImplementedError

    def after_optimizer_step(self) -> None:
        """Called after every optimizer step that updated the weights."""

    def stop_early(self, minibatch_stats: list[dict[str, torch.Tensor]], stats: dict[str, list]) -> bool:
        """Whether to skip the update's remaining minibatches (may add to ``stats``)."""
        return False

    def _mean(self, stats: dict[str, list[torch.Tensor]]) -> dict[str, float]:
        device = self.accelerator.device
        means = {key: torch.stack([v.float().to(device) for v in values]).mean() for key, values in stats.items()}
        if "val/ratio" in stats:
            ratios = torch.stack(stats["val/ratio"])
            means["val/ratio_var"] = ratios.var() if len(ratios) > 1 else torch.zeros((), device=ratios.device)
        return {key: self.accelerator.reduce(value, reduction="mean").item() for key, value in means.items()}


class PPOUpdate(MinibatchUpdate):
    """PPO's clipped policy and value losses on a rollout's micro-batches."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        accelerator: Accelerator,
        args: PPOArguments,
        rules: TokenRules,
        passes: tuple[str, ...],
    ) -> None:
        """``passes``: ('policy', 'value') runs the two passes of a micro-batch one after the other, each backward
        freeing its activations before the next forward; ('both',) runs them jointly (DeepSpeed and FSDP engines
        expect one backward per micro-batch)."""
        super().__init__(model, optimizer, accelerator, args)
        self.rules, self.passes = rules, passes

    def micro_step(self, batch: Rollout) -> dict[str, torch.Tensor]:
        """The first of two passes keeps its gradients local (DDP ``no_sync``); the last one synchronizes all."""
        args, accelerator = self.args, self.accelerator
        keep = batch.response_length + 1
        stats: dict[str, torch.Tensor] = {}
        for part in self.passes:
            local = accelerator.no_sync(self.model) if part != self.passes[-1] else contextlib.nullcontext()
            with local:
                logits, values = self.model(
                    batch.input_ids,
                    batch.attention_mask,
                    batch.position_ids,
                    keep,
                    part=part,
                    value_inputs=batch.value_inputs,
                )
                loss = torch.zeros((), device=batch.responses.device)
                if values is not None:
                    vf_loss, vf_stats = value_loss(
                        values[:, :-1].float(), batch.values, batch.returns, batch.response_mask, args.cliprange_value
                    )
                    loss = loss + args.vf_coef * vf_loss
                    stats.update({"loss/value_avg": vf_loss.detach(), "val/clipfrac_avg": vf_stats["clipfrac"]})
                if logits is not None:
                    pg_loss, pg_stats = policy_objective(logits[:, :-1], batch, args, self.rules)
                    loss = loss + pg_loss
                    stats.update(pg_stats)
                accelerator.backward(loss)
        return stats

    def stop_early(self, minibatch_stats: list[dict[str, torch.Tensor]], stats: dict[str, list]) -> bool:
        """Record the first micro-batch's ratio and approx-KL (exactly 1 and 0: it sees the sampling policy), and
        stop once a minibatch's approx-KL, averaged over processes, exceeds ``target_kl_early_stop``."""
        if "first/ratio" not in stats:
            stats["first/ratio"].append(minibatch_stats[0]["val/ratio"])
            stats["first/approxkl"].append(minibatch_stats[0]["policy/approxkl_avg"])
        if self.args.target_kl_early_stop is None:
            return False
        approxkl = torch.stack([s["policy/approxkl_avg"] for s in minibatch_stats]).mean()
        if self.accelerator.reduce(approxkl, reduction="mean").item() > self.args.target_kl_early_stop:
            stats["policy/early_stop"].append(torch.tensor(1.0))
            return True
        return False
