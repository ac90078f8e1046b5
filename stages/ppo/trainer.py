"""The PPO loop: sample episodes, score them, shape the rewards, update; log, checkpoint, resume.

Built on transformers' Trainer for the accelerator (DDP / DeepSpeed / FSDP from ``accelerate launch``), the
optimizer and LR schedule, callbacks, ``report_to`` integrations and the progress bar; ``train`` is our own.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate.utils import DistributedType, set_seed
from datasets import Dataset
from peft.helpers import disable_input_dtype_casting
from transformers import PreTrainedTokenizerBase, ProgressCallback, Trainer
from trl.models.utils import unwrap_model_for_generation

from pipeline.errors import PipelineError
from pipeline.metrics import append_metrics
from reward_models.base import Episodes, completion_text
from reward_models.registry import Rewards, RewardSources
from stages.ppo.batches import PromptBatches
from stages.ppo.checkpoints import SAMPLES, Checkpoints, forget_logs_after, latest_checkpoint
from stages.ppo.config import PPOArguments
from stages.ppo.core import explained_variance, masked_mean
from stages.ppo.kl_control import make_kl_controller
from stages.ppo.modeling import POLICY_ADAPTER, PolicyAndValue
from stages.ppo.rollout import Passes, Rollout, Sampler, assemble, forward_passes, shape_scores
from stages.ppo.update import PPOUpdate

# Where the policy adapter is saved every ``snapshot_every`` updates: <stage>/snapshots/update-<n>/.
SNAPSHOTS = "snapshots"
SNAPSHOT_PREFIX = "update-"


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


class Timer:
    """Wall time per phase of an update, logged as ``time/<phase>``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # kernels run asynchronously: charge them to the phase that launched them
        self.seconds[phase] += time.perf_counter() - started

    def metrics(self) -> dict[str, float]:
        return {f"time/{phase}": seconds for phase, seconds in self.seconds.items()}


class PPOTrainer(Trainer):
    """Actor-critic PPO with a KL penalty to the reference policy (see ``train``)."""

    def __init__(
        self,
        args: PPOArguments,
        model: PolicyAndValue,
        tokenizer: PreTrainedTokenizerBase,
        prompts: Dataset,
        rewards: RewardSources,
        work_dir: Path,
        gold: RewardSources | None = None,
        offset_prompts: Dataset | None = None,
        callbacks: list | None = None,
    ) -> None:
        """``rewards`` are optimized, ``gold`` only logged; with ``offset_prompts``, the mean score of the reference
        policy's responses to them is subtracted from every score (``normalize_reward``)."""
        super().__init__(model=model, args=args, processing_class=tokenizer, callbacks=callbacks)
        # Trainer accumulates gradients in its own loop and sets accelerate's count to 1; ours relies on
        # accelerator.accumulate (skipped optimizer steps, loss scaling, no DDP sync until the last micro-batch).
        self.accelerator.gradient_accumulation_steps = args.gradient_accumulation_steps
        self.remove_callback(ProgressCallback)
        if not args.disable_tqdm:
            self.add_callback(PPOProgressCallback)
        self.prompts, self.rewards, self.gold, self.offset_prompts = prompts, rewards, gold, offset_prompts
        self.work_dir = Path(work_dir)
        self.sampler = Sampler(tokenizer, args, model.policy.get_output_embeddings().weight.shape[0])
        self.kl_controller = make_kl_controller(args.kl_control, args.kl_coef, args.kl_target, args.kl_horizon)
        self.progress = TrainingProgress()
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

    def unwrapped(self) -> PolicyAndValue:
        return self.accelerator.unwrap_model(self.model_wrapped)

    @contextlib.contextmanager
    def computing(self, autocast: bool = True) -> Iterator[None]:
        """Passes run under the accelerator's autocast; under mixed precision LoRA layers compute in the autocast
        dtype instead of casting their input to their float32 weights (the master weights stay float32).

        The update's passes go through the prepared model, whose forward accelerate wraps in autocast itself, so
        they take ``autocast=False``: one autocast region around several optimizer steps would keep reusing its
        cached half-precision copies of weights that have since changed."""
        mixed = self.accelerator.mixed_precision in ("bf16", "fp16")
        region = self.accelerator.autocast() if autocast else contextlib.nullcontext()
        with region, disable_input_dtype_casting(self.model, active=mixed):
            yield

    # ----- one rollout -------------------------------------------------------------------------------------

    def sample(self, rows: dict[str, list], reference: bool = False, greedy: bool = False) -> Episodes:
        """Episodes for ``rows`` sampled by the policy (or the reference); ``greedy``: its most likely response."""
        with unwrap_model_for_generation(self.model_wrapped, self.accelerator) as unwrapped, self.computing():
            context = unwrapped.reference_policy() if reference else contextlib.nullcontext(unwrapped.policy)
            with context as policy:
                return self.sampler.sample(policy, rows, self.accelerator.device, greedy=greedy)

    def forward_passes(self, episodes: Episodes) -> Passes:
        with self.computing():
            return forward_passes(
                self.unwrapped(),
                episodes,
                self.args.temperature,
                self.sampler.rules,
                self.args.local_rollout_forward_batch_size,
            )

    def score(self, episodes: Episodes, gold: bool = False) -> Rewards | None:
        """The reward sources' (or the gold scorers') rewards for ``episodes``."""
        sources = self.gold if gold else self.rewards
        if sources is None:
            return None
        with self.computing(), torch.no_grad():
            return sources(episodes)

    def collect(self, rows: dict[str, list], timer: Timer) -> tuple[Episodes, Rewards, Rewards | None, torch.Tensor]:
        """Sample episodes for ``rows`` and score them: the reward sources' rewards, the gold scorers', and the
        per-episode scores as the update uses them (``shape_scores``)."""
        with timer("generation"):
            episodes = self.sample(rows)
        with timer("reward"):
            rewards, gold = self.score(episodes), self.score(episodes, gold=True)
        scores = shape_scores(
            rewards.scores, episodes.ended, self.args, self.progress.reward_offset, self.accelerator.gather
        )
        return episodes, rewards, gold, scores

    def learn(self, episodes: Episodes, rewards: Rewards, scores: torch.Tensor, timer: Timer) -> dict[str, float]:
        """PPO on one batch of scored episodes: logprobs, reference logprobs and values, KL-shaped per-token rewards
        and advantages, then the clipped updates; returns the update's metrics (TRL's names)."""
        with timer("forward"):
            passes = self.forward_passes(episodes)
        rollout = assemble(episodes, passes, rewards, scores, self.kl_controller.value, self.args)
        metrics = self.rollout_metrics(rollout, rewards)
        with timer("update"), self.computing(autocast=False):
            metrics.update(self.ppo_update(rollout))
        self._check_finite(metrics, ("loss/policy_avg", "loss/value_avg"))
        return metrics

    # ----- the loop ----------------------------------------------------------------------------------------

    def train(self) -> dict[str, float]:
        """Run PPO for ``total_episodes``; returns the last update's metrics."""
        args = self.args
        batches, num_updates = self._setup()
        started, first_update = time.time(), self.progress.update
        metrics: dict[str, float] = {}
        for update in range(self.progress.update, num_updates):
            timer = Timer()
            rows = self.prompts[batches.indices(update)]
            episodes, rewards, gold, scores = self.collect(rows, timer)
            metrics = {**self.reward_metrics(rewards, gold), **self.learn(episodes, rewards, scores, timer)}
            metrics.update(self.evaluation_metrics(update + 1))
            metrics["objective/kl_coef"] = self.kl_controller.value
            self.kl_controller.update(metrics["objective/kl"], len(episodes) * self.accelerator.num_processes)
            self.lr_scheduler.step()
            self.progress.update = update + 1
            episodes_per_update = len(episodes) * self.accelerator.num_processes
            elapsed = time.time() - started
            metrics.update(
                lr=self.lr_scheduler.get_last_lr()[0],
                episode=self.progress.update * episodes_per_update,
                eps=(update + 1 - first_update) * episodes_per_update / elapsed,
                elapsed_s=elapsed,
                **timer.metrics(),
            )
            self._end_update(metrics, num_updates, episodes, rewards, gold)
        if args.save_strategy != "no" and latest_checkpoint(self.checkpoints.folder) != self.checkpoints.path(
            self.progress.update
        ):
            self.checkpoints.save(self.progress.update)
        self.control = self.callback_handler.on_train_end(args, self.state, self.control)
        return metrics

    def _setup(self) -> tuple[PromptBatches, int]:
        """Batches, optimizer and schedule, the prepared model, checkpoints; resume or seed; callbacks."""
        args, accelerator = self.args, self.accelerator
        if args.local_batch_size % args.num_mini_batches:
            raise PipelineError("per_device_train_batch_size x gradient_accumulation_steps must fill the minibatches")
        batches = PromptBatches(
            len(self.prompts),
            args.local_batch_size // args.num_generations,
            accelerator.num_processes,
            accelerator.process_index,
            args.data_seed or args.seed,
        )
        episodes_per_update = batches.global_batch * args.num_generations
        num_updates = args.total_episodes // episodes_per_update
        if num_updates < 1:
            raise PipelineError(
                f"total_episodes ({args.total_episodes}) is less than one update ({episodes_per_update} episodes)"
            )
        self.create_optimizer_and_scheduler(num_training_steps=num_updates)
        self.model_wrapped, self.optimizer = accelerator.prepare(self.model, self.optimizer)
        self.model_wrapped.train()  # dropout is off everywhere; training mode is what gradient checkpointing needs
        self.prepare_update()
        accelerator.register_for_checkpointing(*self.checkpointed_state())
        self.checkpoints = Checkpoints(
            self.work_dir / "checkpoints",
            accelerator,
            args.save_total_limit,
            self.run_signature(num_updates),
            self.unwrapped,
        )
        resume = self.checkpoints.resolve(args.resume_from_checkpoint)
        if resume is not None:
            self.checkpoints.load(resume)
            if accelerator.is_main_process:
                forget_logs_after(self.work_dir, self.progress.update)
        else:
            # Each process samples with its own seed (seed + process index); a resumed run restores RNG states.
            set_seed(args.seed, device_specific=True)
            if self.offset_prompts is not None:
                self.progress.reward_offset = self.reference_score_mean(self.offset_prompts)
        self.state.max_steps = num_updates
        self.state.global_step = self.progress.update
        self.state.logging_steps = args.logging_steps
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        return batches, num_updates

    def checkpointed_state(self) -> list:
        """Objects with ``state_dict``/``load_state_dict`` a checkpoint keeps besides the model and optimizer (the
        main process's copy is saved and every process loads it)."""
        return [self.lr_scheduler, self.kl_controller, self.progress]

    def evaluation_metrics(self, update: int) -> dict[str, float]:
        """Figures a stage measures along the way after ``update`` (e.g. a dev-set accuracy); none here."""
        return {}

    def prepare_update(self) -> None:
        """The update step on the prepared model (see ``learn``)."""
        # Forward/backward passes per micro-batch (see PPOUpdate).
        one_backward = self.accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)
        passes = ("both",) if one_backward else ("policy", "value")
        self.ppo_update = PPOUpdate(
            self.model_wrapped, self.optimizer, self.accelerator, self.args, self.sampler.rules, passes
        )

    def run_signature(self, num_updates: int) -> dict:
        """What a checkpoint must agree on with the run resuming from it: the layout and the batch arithmetic."""
        args = self.args
        return {
            **self.model.describe(),
            "num_processes": self.accelerator.num_processes,
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "num_mini_batches": args.num_mini_batches,
            "num_generations": args.num_generations,
            "updates": num_updates,
            "kl_control": args.kl_control,
        }

    def _end_update(
        self, metrics: dict, num_updates: int, episodes: Episodes, rewards: Rewards, gold: Rewards | None
    ) -> None:
        """Log, keep samples, checkpoint, and tell the callbacks."""
        args, update = self.args, self.progress.update
        self.state.global_step = update
        self.state.epoch = update * len(episodes) * self.accelerator.num_processes / len(self.prompts)
        if update % max(int(args.logging_steps), 1) == 0 or update == num_updates:
            self.log(dict(metrics))
        if args.sample_every and update % args.sample_every == 0:
            self._log_samples(episodes, rewards, gold)
        if args.save_strategy == "steps" and update % int(args.save_steps) == 0:
            self.checkpoints.save(update)
        if args.snapshot_every and update % args.snapshot_every == 0:
            self._save_snapshot(update)
        self.control = self.callback_handler.on_step_end(args, self.state, self.control)

    def _save_snapshot(self, update: int) -> None:
        """Save the policy adapter alone to ``snapshots/update-<update>/`` (main process), written to a partial
        folder and renamed into place, so a snapshot that exists is whole."""
        if self.accelerator.is_main_process:
            target = self.work_dir / SNAPSHOTS / f"{SNAPSHOT_PREFIX}{update}"
            partial = target.with_name(target.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            self.unwrapped().policy.save_pretrained(partial, selected_adapters=[POLICY_ADAPTER])
            shutil.rmtree(target, ignore_errors=True)
            os.replace(partial, target)
        self.accelerator.wait_for_everyone()

    def reference_score_mean(self, rows: Dataset) -> float:
        """Mean reward of the reference policy's responses to ``rows``, over all processes."""
        shard = rows.shard(self.accelerator.num_processes, self.accelerator.process_index, contiguous=True)
        totals = self.score(self.sample(shard[:], reference=True)).totals
        return self.accelerator.gather(totals).float().mean().item()

    # ----- metrics -----------------------------------------------------------------------------------------

    def reduce(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        """Means over processes."""
        return {k: self.accelerator.reduce(v.float(), reduction="mean").item() for k, v in values.items()}

    def reward_metrics(self, rewards: Rewards, gold: Rewards | None) -> dict[str, float]:
        """What the reward sources (each, when there are several) and the gold scorers said, averaged."""
        values = {"objective/raw_scores": rewards.totals.mean()}
        if len(rewards.by_source) > 1:
            values.update({f"rewards/{name}": score.mean() for name, score in rewards.by_source.items()})
        if gold is not None:
            values["objective/gold_scores"] = gold.totals.float().mean()
        return self.reduce(values)

    def rollout_metrics(self, rollout: Rollout, rewards: Rewards) -> dict[str, float]:
        """Per-update rollout statistics with TRL's names, averaged over processes."""
        mask = rollout.response_mask
        kl_sum = rollout.kl.sum(1)
        non_score = -self.kl_controller.value * kl_sum
        dense = rewards.token_rewards.sum(1) if rewards.token_rewards is not None else 0.0
        values = {
            "objective/kl": kl_sum.mean(),
            "objective/kl_k1": ((rollout.logprobs - rollout.ref_logprobs) * mask).sum(1).mean(),
            "objective/entropy": (-rollout.logprobs * mask).sum(1).mean(),
            "objective/non_score_reward": non_score.mean(),
            "objective/rlhf_reward": (rollout.scores + dense + non_score).mean(),
            "objective/scores": (rollout.scores + dense).mean(),
            "val/num_eos_tokens": rollout.ended.float().sum(),
            "val/response_length": mask.sum(1).float().mean(),
            "val/advantage_mean": masked_mean(rollout.advantages, mask),
            "val/value_mean": masked_mean(rollout.values, mask),
            "val/explained_variance": explained_variance(rollout.values, rollout.returns, mask),
        }
        reduced = self.reduce(values)
        reduced["val/num_eos_tokens"] *= self.accelerator.num_processes
        self._check_finite(reduced, ("objective/scores", "objective/kl"))
        return reduced

    def _check_finite(self, metrics: dict[str, float], names: tuple[str, ...]) -> None:
        # The metrics are averaged over processes, so every process stops together (a NaN makes the averages NaN).
        for name in names:
            if not math.isfinite(metrics[name]):
                latest = latest_checkpoint(self.checkpoints.folder)
                where = f"the last good checkpoint is {latest}" if latest else "no checkpoint was written yet"
                raise PipelineError(
                    f"non-finite {name} ({metrics[name]}) at update {self.progress.update + 1}; {where}. Lower the "
                    "learning rate or kl_coef, clip scores (score_clip), or check the reward source"
                )

    def _log_samples(self, episodes: Episodes, rewards: Rewards, gold: Rewards | None) -> None:
        """Append a few (prompt, completion, score) rows to samples.jsonl and print them."""
        if not self.accelerator.is_main_process:
            return
        for i in range(min(self.args.num_sample_rows, len(episodes))):
            record = {
                "update": self.progress.update,
                "prompt": episodes.prompts[i],
                "completion": completion_text(episodes.completions[i]),
                "score": rewards.totals[i].item(),
                **({"gold_score": gold.totals[i].item()} if gold is not None else {}),
            }
            append_metrics(self.work_dir / SAMPLES, record)
            gold_text = f" gold {record['gold_score']:+.3f}" if gold is not None else ""
            shown = f"{record['prompt']!r} -> {record['completion']!r}"
            print(f"[update {self.progress.update}] score {record['score']:+.3f}{gold_text} | {shown}")
