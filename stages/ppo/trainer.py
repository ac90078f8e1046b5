"""The PPO loop: rollouts, KL-shaped rewards, GAE, clipped updates; checkpoints, resume, metrics.

Built on transformers' Trainer for the accelerator (DDP / DeepSpeed / FSDP from ``accelerate launch``), the
optimizer and LR schedule, callbacks, ``report_to`` integrations and the progress bar; ``train`` is our own.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate.utils import DistributedType, set_seed
from datasets import Dataset
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import GenerationConfig, PreTrainedTokenizerBase, ProgressCallback, Trainer
from trl.models.utils import unwrap_model_for_generation
from trl.trainer.utils import entropy_from_logits

from pipeline.errors import PipelineError
from pipeline.metrics import append_metrics, read_metrics
from pipeline.runs import METRICS
from stages.ppo.config import PPOConfig
from stages.ppo.core import (
    entropy_bonus,
    explained_variance,
    gae_advantages,
    kl_estimate,
    masked_mean,
    masked_whiten,
    per_token_rewards,
    policy_loss,
    truncate_after_eos,
    value_loss,
)
from stages.ppo.kl_control import make_kl_controller
from stages.ppo.modeling import PolicyAndValue, position_ids_from
from stages.ppo.reward_adapter import REWARD_MODEL_SCORES
from stages.ppo.rollout import (
    ForwardScores,
    Rollout,
    decode_completions,
    forward_scores,
    generate,
    reward_adapter_scores,
    score,
    token_logprobs,
)

CHECKPOINT_PREFIX = "checkpoint-"
SAMPLES = "samples.jsonl"


class PPOProgressCallback(ProgressCallback):
    """The progress bar shows the live score, KL and beta instead of printing every log line."""

    SHOWN = {"objective/scores": "score", "objective/kl": "kl", "objective/kl_coef": "beta"}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs:
            self.training_bar.set_postfix(
                {short: f"{logs[key]:.3f}" for key, short in self.SHOWN.items() if key in logs}, refresh=False
            )


class TrainingProgress:
    """Counters and reward normalization restored on resume (registered for accelerate checkpointing)."""

    def __init__(self) -> None:
        self.update = 0
        self.reward_offset = 0.0

    def state_dict(self) -> dict:
        return {"update": self.update, "reward_offset": self.reward_offset}

    def load_state_dict(self, state: dict) -> None:
        self.update = int(state["update"])
        self.reward_offset = float(state["reward_offset"])


class PromptBatches:
    """Deterministic per-update batches: a seeded permutation per epoch, each process taking its own slice.

    The position in the data is a function of the update number, so resuming needs only that number.
    """

    def __init__(self, num_rows: int, local_batch: int, num_processes: int, process_index: int, seed: int) -> None:
        self.global_batch = local_batch * num_processes
        if num_rows < self.global_batch:
            raise PipelineError(
                f"the prompt dataset has {num_rows} rows, fewer than one update's {self.global_batch} episodes: "
                "use more prompts or a smaller per_device_train_batch_size / num_mini_batches"
            )
        self.num_rows, self.local_batch, self.process_index, self.seed = num_rows, local_batch, process_index, seed
        self.per_epoch = num_rows // self.global_batch

    def indices(self, update: int) -> list[int]:
        epoch, position = divmod(update, self.per_epoch)
        order = torch.randperm(self.num_rows, generator=torch.Generator().manual_seed(self.seed + epoch))
        start = position * self.global_batch + self.process_index * self.local_batch
        return order[start : start + self.local_batch].tolist()


class PPOTrainer(Trainer):
    """Actor-critic PPO with a KL penalty to the reference policy (see ``train``)."""

    def __init__(
        self,
        args: PPOConfig,
        model: PolicyAndValue,
        tokenizer: PreTrainedTokenizerBase,
        prompts: Dataset,
        reward_fn: Callable,
        gold_fn: Callable | None,
        work_dir: Path,
        callbacks: list | None = None,
    ) -> None:
        super().__init__(model=model, args=args, processing_class=tokenizer, callbacks=callbacks)
        # Trainer accumulates gradients in its own loop and sets accelerate's count to 1; ours relies on
        # accelerator.accumulate (skipped optimizer steps, loss scaling, no DDP sync until the last micro-batch).
        self.accelerator.gradient_accumulation_steps = args.gradient_accumulation_steps
        self.remove_callback(ProgressCallback)
        if not args.disable_tqdm:
            self.add_callback(PPOProgressCallback)
        self.prompts = prompts
        self.reward_fn, self.gold_fn = reward_fn, gold_fn
        self.work_dir = Path(work_dir)
        self.kl_controller = make_kl_controller(args.kl_control, args.kl_coef, args.kl_target, args.kl_horizon)
        self.progress = TrainingProgress()
        if self.accelerator.mixed_precision in ("bf16", "fp16"):
            keep_lora_in_autocast_dtype(model)
        # Forward/backward passes per micro-batch (see _forward_backward).
        one_backward = self.accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)
        self.passes = ("both",) if one_backward else ("policy", "value")
        self.stop_token_ids = [tokenizer.eos_token_id]
        if args.stop_token:
            self.stop_token_ids.append(tokenizer.convert_tokens_to_ids(args.stop_token))
        self.generation_config = GenerationConfig(
            max_new_tokens=args.response_length,
            do_sample=True,
            temperature=args.temperature,
            top_k=0,
            top_p=1.0,
            eos_token_id=self.stop_token_ids,
            pad_token_id=tokenizer.pad_token_id,
        )
        # Prompts are left-padded and cut from the left; a copy keeps the saved tokenizer's settings untouched.
        self.prompt_tokenizer = copy.copy(tokenizer)
        self.prompt_tokenizer.padding_side = self.prompt_tokenizer.truncation_side = "left"
        if model.frozen_reference is not None:
            model.frozen_reference.to(self.accelerator.device)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """Trainer's optimizer, with the value parameters in groups of their own at ``value_learning_rate``."""
        optimizer = super().create_optimizer(model)
        if self.args.value_learning_rate is None:
            return optimizer
        value = {id(p) for p in self.model.value_parameters()}
        groups, optimizer.param_groups = optimizer.param_groups, []
        for group in groups:
            for is_value in (False, True):
                params = [p for p in group["params"] if (id(p) in value) == is_value]
                if params:
                    lr = self.args.value_learning_rate if is_value else group["lr"]
                    optimizer.add_param_group({**group, "params": params, "lr": lr})
        return optimizer

    # ----- rollout -----------------------------------------------------------------------------------------

    def _tokenize_prompts(self, rows: dict[str, list]) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self.prompt_tokenizer(
            rows["prompt"],
            padding=True,
            truncation=self.args.max_prompt_length is not None,
            max_length=self.args.max_prompt_length,
            return_tensors="pt",
        ).to(self.accelerator.device)
        return encoded["input_ids"], encoded["attention_mask"]

    def sample(self, rows: dict[str, list], use_reference: bool = False) -> tuple[torch.Tensor, torch.Tensor, ...]:
        """Generate for ``rows``; returns (input_ids, attention_mask, responses, response_mask, last_index, ended)."""
        prompt_ids, prompt_mask = self._tokenize_prompts(rows)
        with (
            unwrap_model_for_generation(self.model_wrapped, self.accelerator) as unwrapped,
            self.accelerator.autocast(),
        ):
            if use_reference:
                with unwrapped.reference_policy() as reference:
                    raw = self._generate(reference, prompt_ids, prompt_mask)
            else:
                raw = self._generate(unwrapped.policy, prompt_ids, prompt_mask)
        responses, response_mask, last_index, ended = truncate_after_eos(
            raw, self.stop_token_ids, self.processing_class.pad_token_id
        )
        input_ids = torch.cat([prompt_ids, responses], dim=1)
        attention_mask = torch.cat([prompt_mask, response_mask.to(prompt_mask.dtype)], dim=1)
        return input_ids, attention_mask, responses, response_mask, last_index, ended

    def _generate(self, policy, prompt_ids, prompt_mask) -> torch.Tensor:
        return generate(
            policy,
            prompt_ids,
            prompt_mask,
            self.generation_config,
            self.args.local_rollout_forward_batch_size,
            self.processing_class.pad_token_id,
        )

    def score_texts(
        self,
        rows: dict[str, list],
        completions: list[str],
        gold: bool = False,
        reward_model_scores: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores of ``completions`` from the reward source (or the gold scorer), on this process's device. With a
        reward adapter on the policy's base, its scores of the same episodes (``reward_model_scores``) go to the
        sources as a column of that name (see ``reward_adapter.PolicyBaseReward``)."""
        columns = {k: v for k, v in rows.items() if k not in ("prompt", "completion", "completions")}
        if reward_model_scores is not None:
            columns[REWARD_MODEL_SCORES] = reward_model_scores
        function = self.gold_fn if gold else self.reward_fn
        with self.accelerator.autocast():
            return score(function, rows["prompt"], completions, columns, self.accelerator.device)

    def _unwrapped(self) -> PolicyAndValue:
        return self.accelerator.unwrap_model(self.model_wrapped)

    def forward_scores(self, input_ids, attention_mask, responses) -> ForwardScores:
        """Policy logprobs, reference logprobs, values, value inputs and reward-adapter scores of sampled responses
        (no gradients, in chunks; see ``rollout.forward_scores``)."""
        with self.accelerator.autocast():
            return forward_scores(
                self._unwrapped(),
                input_ids,
                attention_mask,
                responses,
                self.args.temperature,
                self.args.local_rollout_forward_batch_size,
            )

    def reward_model_scores(self, input_ids, attention_mask) -> torch.Tensor | None:
        """The scores of the reward adapter on the policy's base for sampled episodes, or None without one."""
        model = self._unwrapped()
        if not model.scores_rewards:
            return None
        with self.accelerator.autocast():
            return reward_adapter_scores(model, input_ids, attention_mask, self.args.local_rollout_forward_batch_size)

    @torch.no_grad()
    def make_rollout(self, rows: dict[str, list]) -> tuple[Rollout, list[str]]:
        """Sample, recompute logprobs (policy and reference) and values, score, and shape per-token rewards."""
        args = self.args
        input_ids, attention_mask, responses, response_mask, last_index, ended = self.sample(rows)
        scored = self.forward_scores(input_ids, attention_mask, responses)
        completions = decode_completions(self.processing_class, responses, response_mask)
        raw_scores = self.score_texts(rows, completions, reward_model_scores=scored.reward_scores)
        scores = raw_scores - self.progress.reward_offset
        if args.score_clip is not None:
            scores = scores.clamp(-args.score_clip, args.score_clip)
        if args.missing_eos_penalty is not None:
            scores = scores - args.missing_eos_penalty * (~ended).float()
        rollout = Rollout(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from(attention_mask),
            responses=responses,
            response_mask=response_mask,
            logprobs=scored.logprobs.float(),
            ref_logprobs=scored.ref_logprobs.float(),
            values=scored.values.float() * response_mask,
            scores=scores,
            raw_scores=raw_scores,
            ended=ended,
            value_inputs=scored.value_inputs,
            reward_model_scores=scored.reward_scores,
        )
        rollout.kl = kl_estimate(rollout.logprobs, rollout.ref_logprobs, args.kl_estimator) * response_mask
        rollout.rewards = per_token_rewards(scores, rollout.kl, self.kl_controller.value, response_mask, last_index)
        if args.whiten_rewards:
            rollout.rewards = masked_whiten(rollout.rewards, response_mask, shift_mean=False)
        advantages, rollout.returns = gae_advantages(
            rollout.rewards, rollout.values, response_mask, args.gamma, args.lam
        )
        rollout.advantages = masked_whiten(advantages, response_mask)
        return rollout, completions

    # ----- update ------------------------------------------------------------------------------------------

    def ppo_update(self, rollout: Rollout) -> dict[str, float]:
        """``num_ppo_epochs`` passes of minibatch updates over one rollout; returns the averaged statistics."""
        args, accelerator = self.args, self.accelerator
        stats: dict[str, list[torch.Tensor]] = defaultdict(list)
        minibatch = len(rollout) // args.num_mini_batches
        length = rollout.response_length
        for _ in range(args.num_ppo_epochs):
            order = torch.randperm(len(rollout), device=rollout.responses.device)
            for mb_start in range(0, len(rollout), minibatch):
                minibatch_kl = []
                for start in range(mb_start, mb_start + minibatch, args.per_device_train_batch_size):
                    batch = rollout.rows(order[start : start + args.per_device_train_batch_size])
                    with accelerator.accumulate(self.model_wrapped):
                        step_stats = self._forward_backward(batch, length)
                        if accelerator.sync_gradients and args.max_grad_norm:
                            accelerator.clip_grad_norm_(self.model_wrapped.parameters(), args.max_grad_norm)
                        self.optimizer.step()
                        self.optimizer.zero_grad()
                    for key, value in step_stats.items():
                        stats[key].append(value)
                    if "first/ratio" not in stats:
                        stats["first/ratio"].append(step_stats["val/ratio"])
                        stats["first/approxkl"].append(step_stats["policy/approxkl_avg"])
                    minibatch_kl.append(step_stats["policy/approxkl_avg"])
                if args.target_kl_early_stop is not None:
                    approxkl = accelerator.reduce(torch.stack(minibatch_kl).mean(), reduction="mean")
                    if approxkl.item() > args.target_kl_early_stop:
                        stats["policy/early_stop"].append(torch.tensor(1.0))
                        return self._mean_stats(stats)
        return self._mean_stats(stats)

    def _forward_backward(self, batch: Rollout, length: int) -> dict[str, torch.Tensor]:
        """Losses and gradients of one micro-batch; returns its statistics.

        The policy pass and the value pass run one after the other, each freeing its activations in its backward
        before the next forward, so only one pass's activations are alive at a time. The policy pass keeps its
        gradients local (DDP ``no_sync``) and the value pass synchronizes all of them. DeepSpeed and FSDP engines
        expect one backward per micro-batch, so there both run in one pass.
        """
        args, accelerator = self.args, self.accelerator
        stats: dict[str, torch.Tensor] = {}
        for part in self.passes:
            keep_local = (
                accelerator.no_sync(self.model_wrapped) if part != self.passes[-1] else contextlib.nullcontext()
            )
            with keep_local:
                logits, values = self.model_wrapped(
                    batch.input_ids,
                    batch.attention_mask,
                    batch.position_ids,
                    length + 1,
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
                    logits = logits[:, :-1]
                    logprobs = token_logprobs(logits, batch.responses, args.temperature)
                    pg_loss, pg_stats = policy_loss(
                        logprobs, batch.logprobs, batch.advantages, batch.response_mask, args.cliprange
                    )
                    entropy = entropy_bonus(
                        entropy_from_logits((logits / args.temperature).float()), batch.response_mask
                    )
                    loss = loss + pg_loss - args.entropy_coef * entropy
                    stats.update(
                        {
                            "policy/approxkl_avg": pg_stats["approxkl"],
                            "policy/clipfrac_avg": pg_stats["clipfrac"],
                            "loss/policy_avg": pg_loss.detach(),
                            "policy/entropy_avg": entropy.detach(),
                            "val/ratio": pg_stats["ratio"],
                        }
                    )
                accelerator.backward(loss)
        return stats

    def _mean_stats(self, stats: dict[str, list[torch.Tensor]]) -> dict[str, float]:
        ratios = torch.stack(stats["val/ratio"])
        means = {
            key: torch.stack([v.float().to(self.accelerator.device) for v in values]).mean()
            for key, values in stats.items()
        }
        means["val/ratio_var"] = ratios.var() if len(ratios) > 1 else torch.zeros((), device=ratios.device)
        return {key: self.accelerator.reduce(value, reduction="mean").item() for key, value in means.items()}

    # ----- metrics -----------------------------------------------------------------------------------------

    def rollout_metrics(self, rollout: Rollout, gold: torch.Tensor | None) -> dict[str, float]:
        """Per-update rollout statistics with TRL's names, averaged over processes."""
        mask = rollout.response_mask
        kl_sum = rollout.kl.sum(1)
        non_score = -self.kl_controller.value * kl_sum
        values = {
            "objective/kl": kl_sum.mean(),
            "objective/kl_k1": ((rollout.logprobs - rollout.ref_logprobs) * mask).sum(1).mean(),
            "objective/entropy": (-rollout.logprobs * mask).sum(1).mean(),
            "objective/non_score_reward": non_score.mean(),
            "objective/rlhf_reward": (rollout.scores + non_score).mean(),
            "objective/scores": rollout.scores.mean(),
            "objective/raw_scores": rollout.raw_scores.mean(),
            "val/num_eos_tokens": rollout.ended.float().sum(),
            "val/response_length": mask.sum(1).float().mean(),
            "val/advantage_mean": masked_mean(rollout.advantages, mask),
            "val/value_mean": masked_mean(rollout.values, mask),
            "val/explained_variance": explained_variance(rollout.values, rollout.returns, mask),
        }
        if gold is not None:
            values["objective/gold_scores"] = gold.float().mean()
        reduced = {k: self.accelerator.reduce(v.float(), reduction="mean").item() for k, v in values.items()}
        reduced["val/num_eos_tokens"] *= self.accelerator.num_processes
        return reduced

    def _check_finite(self, values: dict[str, torch.Tensor | float]) -> None:
        for name, value in values.items():
            if not math.isfinite(float(value)):
                latest = latest_checkpoint(self.checkpoint_dir)
                where = f"the last good checkpoint is {latest}" if latest else "no checkpoint was written yet"
                raise PipelineError(
                    f"non-finite {name} ({float(value)}) at update {self.progress.update + 1}; {where}. Lower the "
                    "learning rate or kl_coef, clip scores (score_clip), or check the reward source"
                )

    # ----- checkpoints -------------------------------------------------------------------------------------

    @property
    def checkpoint_dir(self) -> Path:
        return self.work_dir / "checkpoints"

    def _keep_trainable_only(self, models, weights, output_dir) -> None:
        # Checkpoints hold what PPO trains (adapters, value head or value model), not the frozen base weights.
        trainable = self._unwrapped().trainable_names()
        for state in weights:
            for name in [n for n in state if n not in trainable]:
                del state[name]

    def save_checkpoint(self) -> Path:
        """Everything needed to resume, written atomically to ``checkpoints/checkpoint-<update>``."""
        target = self.checkpoint_dir / f"{CHECKPOINT_PREFIX}{self.progress.update}"
        partial = target.with_name(target.name + ".partial")
        self.accelerator.save_state(str(partial))
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            if target.exists():
                shutil.rmtree(target)
            os.replace(partial, target)
            self._prune_checkpoints()
        self.accelerator.wait_for_everyone()
        return target

    def _prune_checkpoints(self) -> None:
        if not self.args.save_total_limit:
            return
        for old in list_checkpoints(self.checkpoint_dir)[: -self.args.save_total_limit]:
            shutil.rmtree(old)

    def _resume_from(self) -> Path | None:
        wanted = self.args.resume_from_checkpoint
        if not wanted:
            return None
        if str(wanted).lower() in ("true", "latest"):
            path = latest_checkpoint(self.checkpoint_dir)
            if path is None:
                raise PipelineError(f"resume_from_checkpoint: no checkpoint in {self.checkpoint_dir}")
            return path
        if not Path(wanted).is_dir():
            raise PipelineError(f"resume_from_checkpoint: {wanted} is not a checkpoint folder")
        return Path(wanted)

    def _forget_logs_after(self, update: int) -> None:
        """Drop metrics and samples logged after ``update``: a killed run may have logged updates past its last
        checkpoint, and the resumed run logs them again."""
        if not self.accelerator.is_main_process:
            return
        for name, key in ((METRICS, "step"), (SAMPLES, "update")):
            path = self.work_dir / name
            if path.exists():
                kept = [record for record in read_metrics(path) if record[key] <= update]
                partial = path.with_name(path.name + ".partial")
                partial.write_text("".join(json.dumps(record) + "\n" for record in kept))
                os.replace(partial, path)

    # ----- the loop ----------------------------------------------------------------------------------------

    def reference_score_mean(self, rows: Dataset) -> float:
        """Mean score of the reference policy's responses (for ``normalize_reward``), over all processes."""
        shard = rows.shard(self.accelerator.num_processes, self.accelerator.process_index, contiguous=True)
        batch = shard[:]
        input_ids, attention_mask, responses, response_mask, _, _ = self.sample(batch, use_reference=True)
        scores = self.score_texts(
            batch,
            decode_completions(self.processing_class, responses, response_mask),
            reward_model_scores=self.reward_model_scores(input_ids, attention_mask),
        )
        return self.accelerator.gather(scores).float().mean().item()

    def train(self) -> dict[str, float]:
        """Run PPO for ``total_episodes``; returns the last update's metrics."""
        args, accelerator = self.args, self.accelerator
        local_batch = args.local_batch_size
        if local_batch % args.num_mini_batches:
            raise PipelineError("per_device_train_batch_size x gradient_accumulation_steps must fill the minibatches")
        batches = PromptBatches(
            len(self.prompts),
            local_batch,
            accelerator.num_processes,
            accelerator.process_index,
            args.data_seed or args.seed,
        )
        num_updates = args.total_episodes // batches.global_batch
        if num_updates < 1:
            raise PipelineError(
                f"total_episodes ({args.total_episodes}) is less than one update ({batches.global_batch} episodes)"
            )
        self.create_optimizer_and_scheduler(num_training_steps=num_updates)
        self.model_wrapped, self.optimizer = accelerator.prepare(self.model, self.optimizer)
        accelerator.register_for_checkpointing(self.lr_scheduler, self.kl_controller, self.progress)
        accelerator.register_save_state_pre_hook(self._keep_trainable_only)

        resume = self._resume_from()
        if resume is not None:
            accelerator.load_state(str(resume), strict=False)
            self._forget_logs_after(self.progress.update)
        else:
            # Each process samples with its own seed (seed + process index); a resumed run restores RNG states.
            set_seed(args.seed, device_specific=True)
        if resume is None and args.normalize_reward:
            count = min(args.normalize_reward_samples, len(self.prompts))
            self.progress.reward_offset = self.reference_score_mean(self.prompts.select(range(count)))

        self.state.max_steps = num_updates
        self.state.global_step = self.progress.update
        self.state.logging_steps = args.logging_steps
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        started, first_update = time.time(), self.progress.update
        metrics: dict[str, float] = {}
        for update in range(self.progress.update, num_updates):
            rows = self.prompts[batches.indices(update)]
            rollout, completions = self.make_rollout(rows)
            gold = (
                self.score_texts(rows, completions, gold=True, reward_model_scores=rollout.reward_model_scores)
                if self.gold_fn is not None
                else None
            )
            metrics = self.rollout_metrics(rollout, gold)
            self._check_finite(
                {"objective/scores": metrics["objective/scores"], "objective/kl": metrics["objective/kl"]}
            )
            # Averaged over processes, so every process stops together (a NaN loss makes the averages NaN).
            metrics.update(self.ppo_update(rollout))
            self._check_finite(
                {"loss/policy_avg": metrics["loss/policy_avg"], "loss/value_avg": metrics["loss/value_avg"]}
            )
            metrics["objective/kl_coef"] = self.kl_controller.value
            self.kl_controller.update(metrics["objective/kl"], batches.global_batch)
            self.lr_scheduler.step()
            self.progress.update = update + 1
            episodes = self.progress.update * batches.global_batch
            metrics.update(
                {
                    "lr": self.lr_scheduler.get_last_lr()[0],
                    "episode": episodes,
                    "eps": (update + 1 - first_update) * batches.global_batch / (time.time() - started),
                    "elapsed_s": time.time() - started,
                }
            )
            self.state.global_step = self.progress.update
            self.state.epoch = episodes / len(self.prompts)
            if self.progress.update % max(int(args.logging_steps), 1) == 0 or self.progress.update == num_updates:
                self.log(dict(metrics))
            if args.sample_every and self.progress.update % args.sample_every == 0:
                self._log_samples(rows, completions, rollout, gold)
            if args.save_strategy == "steps" and self.progress.update % int(args.save_steps) == 0:
                self.save_checkpoint()
            self.control = self.callback_handler.on_step_end(args, self.state, self.control)
        if args.save_strategy != "no" and latest_checkpoint(self.checkpoint_dir) != self._checkpoint_path():
            self.save_checkpoint()
        self.control = self.callback_handler.on_train_end(args, self.state, self.control)
        return metrics

    def _checkpoint_path(self) -> Path:
        return self.checkpoint_dir / f"{CHECKPOINT_PREFIX}{self.progress.update}"

    def _log_samples(self, rows, completions, rollout: Rollout, gold: torch.Tensor | None) -> None:
        """Append a few (prompt, completion, score) rows to samples.jsonl and print them."""
        if not self.accelerator.is_main_process:
            return
        count = min(self.args.num_sample_rows, len(completions))
        for i in range(count):
            record = {
                "update": self.progress.update,
                "prompt": rows["prompt"][i],
                "completion": completions[i],
                "score": rollout.scores[i].item(),
                **({"gold_score": gold[i].item()} if gold is not None else {}),
            }
            append_metrics(self.work_dir / SAMPLES, record)
            gold_text = f" gold {record['gold_score']:+.3f}" if gold is not None else ""
            shown = f"{record['prompt']!r} -> {record['completion']!r}"
            print(f"[update {self.progress.update}] score {record['score']:+.3f}{gold_text} | {shown}")


def keep_lora_in_autocast_dtype(model: torch.nn.Module) -> None:
    """Let LoRA layers compute in the autocast dtype under mixed precision.

    PEFT casts each LoRA layer's input to the adapter's float32 weights, so a bf16 activation is copied to float32
    and the adapter runs in float32 in every layer. Under autocast the matmuls cast their operands themselves; every
    forward of the PPO models runs under ``accelerator.autocast`` (the prepared model's forward is wrapped by
    accelerate), so the float32 master weights stay and only the computation is in half precision.
    """
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = False


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = [
        p
        for p in folder.iterdir()
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p.name[len(CHECKPOINT_PREFIX) :].isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(folder)
    return found[-1] if found else None
