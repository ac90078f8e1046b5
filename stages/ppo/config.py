"""Configuration of the PPO engine and of the RLHF PPO stage.

``PPOArguments`` is the algorithm and how it samples, shapes rewards, updates and lays out its models: every stage
built on the engine (RLHF PPO, prompt optimization, prompt editing) takes it. ``PPOConfig`` adds the RLHF stage's
wiring: which SFT policy, which reward sources, what to evaluate. Both extend transformers' ``TrainingArguments``
(optimizer, schedule, logging, saving, seeds). Names and defaults follow trl 1.12's PPOConfig where it had the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from pipeline.config import ModelArguments
from pipeline.errors import PipelineError
from stages.ppo.core import KL_ESTIMATORS, SCORE_NORMALIZATIONS
from stages.ppo.kl_control import KL_CONTROLLER_KINDS

VALUE_MODELS = ("adapter", "separate")


@dataclass
class PPOModelArguments(ModelArguments):
    """Model options for PPO: LoRA is on by default, with dropout off (dropout breaks the PPO ratio)."""

    use_peft: bool = field(default=True, metadata={"help": "Train LoRA adapters (the default) instead of all weights."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout; keep 0 for PPO (ratio must start at 1)."})


@dataclass
class PPOArguments(TrainingArguments):
    """The PPO algorithm: sampling, reward shaping, the update, and where the value lives."""

    # ----- Sampling ------------------------------------------------------------------------------------------
    max_prompt_length: int | None = field(
        default=256, metadata={"help": "Prompts longer than this many tokens are cut from the left."}
    )
    total_episodes: int = field(default=10000, metadata={"help": "Episodes (prompt + sampled response) in total."})
    response_length: int = field(default=53, metadata={"help": "Maximum number of generated tokens per response."})
    temperature: float = field(
        default=0.7, metadata={"help": "Sampling temperature; logprobs everywhere are computed at it too."}
    )
    stop_token: str | None = field(
        default=None,
        metadata={
            "help": "Text that ends a response in addition to EOS; it must encode to exactly one token. Escapes are "
            r"read as the characters they stand for ('\n' is a newline)."
        },
    )
    stop_token_id: int | None = field(
        default=None, metadata={"help": "A token id that ends a response in addition to EOS (instead of stop_token)."}
    )
    missing_eos_penalty: float | None = field(
        default=None, metadata={"help": "Subtracted from the score of a response that did not end (no EOS)."}
    )
    num_generations: int = field(
        default=1, metadata={"help": "Responses sampled per prompt in an update (several samples of one input)."}
    )
    fixed_response_length: bool = field(
        default=False,
        metadata={
            "help": "Suppress EOS and stop tokens while sampling, so every response is exactly response_length tokens "
            "(e.g. a prompt of T tokens for prompt optimization); every episode then counts as ended."
        },
    )
    allowed_token_ids: list[int] | None = field(
        default=None,
        metadata={
            "help": "Restrict sampling to these token ids (EOS is added unless fixed_response_length); the same "
            "restriction is applied wherever log-probabilities are computed."
        },
    )
    local_rollout_forward_batch_size: int = field(
        default=64, metadata={"help": "Rows per chunk for generation and the no-grad forward passes."}
    )
    # ----- Reward shaping -----------------------------------------------------------------------------------
    kl_coef: float = field(default=0.05, metadata={"help": "Initial KL penalty coefficient beta."})
    kl_estimator: str = field(
        default="k1",
        metadata={"help": "Per-token KL estimator: 'k1' (log ratio), 'k2' (squared/2), 'k3' (unbiased, >= 0)."},
    )
    kl_control: str = field(
        default="fixed", metadata={"help": "'fixed' beta, or 'adaptive' (Ziegler et al. 2019 target-KL controller)."}
    )
    kl_target: float = field(default=6.0, metadata={"help": "Adaptive controller: target KL per response."})
    kl_horizon: int = field(default=10000, metadata={"help": "Adaptive controller: horizon in episodes."})
    score_clip: float | None = field(default=None, metadata={"help": "Clip scores to [-score_clip, score_clip]."})
    score_normalization: str = field(
        default="none",
        metadata={
            "help": "'batch': z-score each update's scores over all processes' episodes, (s - mean) / (std + eps); "
            "'group': over the num_generations responses of each prompt; 'none'."
        },
    )
    score_normalization_eps: float = field(default=1e-4, metadata={"help": "The eps of score_normalization."})
    whiten_rewards: bool = field(
        default=False, metadata={"help": "Whiten per-token rewards per batch (mean kept) before GAE."}
    )
    # ----- PPO update ---------------------------------------------------------------------------------------
    num_ppo_epochs: int = field(default=4, metadata={"help": "Passes over each rollout batch."})
    num_mini_batches: int = field(default=1, metadata={"help": "Minibatches (optimizer steps) per PPO epoch."})
    cliprange: float = field(default=0.2, metadata={"help": "Clip range of the policy ratio."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Clip range of the value update."})
    vf_coef: float = field(default=0.1, metadata={"help": "Value loss coefficient."})
    gamma: float = field(default=1.0, metadata={"help": "Discount factor."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda."})
    entropy_coef: float = field(default=0.0, metadata={"help": "Entropy bonus coefficient (0: no bonus)."})
    target_kl_early_stop: float | None = field(
        default=None, metadata={"help": "Stop an update's remaining minibatches once approx-KL exceeds this."}
    )
    # ----- Where the value lives (see stages/ppo/layout.py) ----------------------------------------------------
    value_model: str = field(
        default="adapter",
        metadata={
            "help": "'adapter': a value LoRA adapter plus a scalar head on the policy's own base (one base model in "
            "memory for policy, reference and value; needs use_peft). 'separate': a value model of its own, "
            "initialized from the reward model (value_model_path), with its score head as the value head."
        },
    )
    value_adapter_layers: int | None = field(
        default=None,
        metadata={
            "help": "value_model 'adapter': put the value adapter on the top N decoder layers only. The layers below "
            "run without it, so a rollout keeps the hidden states entering those N layers (from the reward "
            "adapter's pass when the critic starts from it, else from the reference pass) and every value pass "
            "trains just the N layers from them. Default: all layers."
        },
    )
    # ----- Observability -------------------------------------------------------------------------------------
    sample_every: int = field(default=10, metadata={"help": "Log a table of sample completions every N updates."})
    num_sample_rows: int = field(default=4, metadata={"help": "Rows in that table."})
    snapshot_every: int | None = field(
        default=None,
        metadata={
            "help": "Every N updates, save the policy's LoRA adapter alone (no optimizer, value or reward) to "
            "snapshots/update-<N>/ in the stage folder, for the over-optimization curve of `make eval` (proxy and "
            "gold score against sqrt(KL) per snapshot). LoRA only."
        },
    )
    # ----- Defaults that differ from TrainingArguments ----------------------------------------------------------
    learning_rate: float = field(default=3e-6, metadata={"help": "Initial learning rate (AdamW)."})
    value_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Initial learning rate of the value parameters (value adapter and head, or value model), on the "
            "same schedule; a critic usually learns faster than the policy (OpenRLHF's critic_learning_rate). "
            "Default: learning_rate."
        },
    )
    adam_epsilon: float = field(default=1e-5, metadata={"help": "Adam epsilon (1e-5, as in the RLHF references)."})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "Learning-rate schedule over updates."})
    logging_steps: float = field(default=1, metadata={"help": "Log every N updates."})
    save_steps: float = field(default=50, metadata={"help": "Checkpoint every N updates (save_strategy 'steps')."})
    report_to: str | list[str] = field(
        default="none", metadata={"help": "Trackers: 'none', 'tensorboard', 'wandb', 'trackio', ... or 'all'."}
    )
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep prompt columns (rewards may use them)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        checks = {
            "kl_estimator": (self.kl_estimator in KL_ESTIMATORS, f"one of {KL_ESTIMATORS}"),
            "kl_control": (self.kl_control in KL_CONTROLLER_KINDS, f"one of {KL_CONTROLLER_KINDS}"),
            "score_normalization": (self.score_normalization in SCORE_NORMALIZATIONS, f"one of {SCORE_NORMALIZATIONS}"),
            "value_model": (self.value_model in VALUE_MODELS, f"one of {VALUE_MODELS}"),
            "temperature": (self.temperature > 0, "positive"),
            "response_length": (self.response_length > 0, "positive"),
            "num_generations": (self.num_generations > 0, "positive"),
            "num_ppo_epochs": (self.num_ppo_epochs > 0, "positive"),
            "num_mini_batches": (self.num_mini_batches > 0, "positive"),
            "kl_coef": (self.kl_coef >= 0, "non-negative"),
            "kl_target": (self.kl_target > 0, "positive"),
            "total_episodes": (self.total_episodes > 0, "positive"),
            "local_batch_size": (
                self.local_batch_size % self.num_generations == 0,
                "a multiple of num_generations (per_device_train_batch_size x gradient_accumulation_steps x "
                "num_mini_batches episodes per process: whole groups of a prompt's responses)",
            ),
        }
        for name, (ok, expected) in checks.items():
            if not ok:
                raise PipelineError(f"{name} must be {expected}, got {getattr(self, name)!r}")
        if self.snapshot_every is not None and self.snapshot_every < 1:
            raise PipelineError(f"snapshot_every must be a positive number of updates, got {self.snapshot_every}")
        if self.stop_token is not None and self.stop_token_id is not None:
            raise PipelineError("give stop_token or stop_token_id, not both")

    @property
    def local_batch_size(self) -> int:
        """Episodes per process per update: micro batch x gradient accumulation x minibatches."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.num_mini_batches


@dataclass
class PPOConfig(PPOArguments):
    """The RLHF PPO stage: the engine's arguments plus where its policy and rewards come from."""

    sft_model_path: str | None = field(
        default=None,
        metadata={
            "help": "Policy initialization and KL reference. Default: this run's SFT model (runs/<run>/sft/model)."
        },
    )
    reward_model_path: str | None = field(
        default=None,
        metadata={
            "help": "Reward model for the 'rm' reward source: a model folder or hub id, or a LoRA adapter folder "
            "(applied to the base it names). Default: this run's RM (runs/<run>/rm/adapter when the RM stage trained "
            "LoRA, else runs/<run>/rm/model)."
        },
    )
    reward: str = field(
        default="rm",
        metadata={
            "help": "Reward source(s), comma-separated: 'rm' (the reward model), 'vader', a reward-model folder or "
            "hub id, or 'module:name' naming a function with TRL's reward-function signature or a reward class."
        },
    )
    reward_kwargs: str | None = field(
        default=None,
        metadata={
            "help": "JSON mapping a 'module:name' reward spec to its keyword arguments (a class is built with them, "
            'a function gets them on every call), e.g. \'{"my_rewards:Length": {"target": 20}}\'.'
        },
    )
    reward_weights: str | None = field(
        default=None, metadata={"help": "Comma-separated weights, one per reward source (default: all 1)."}
    )
    gold_reward: str | None = field(
        default=None,
        metadata={"help": "Scorer(s) logged beside the reward but never optimized (the demo uses 'vader')."},
    )
    share_reward_base: bool = field(
        default=True,
        metadata={
            "help": "With value_model 'adapter' and a reward model that is a LoRA adapter on the SFT model (the RM "
            "stage with use_peft), put that adapter and its score head on the policy's base, frozen, instead of "
            "loading a second model: one base in memory for policy, reference, value and reward, the reward read "
            "from the policy's own token ids, and the critic started as the reward model. Not with a 4/8-bit base."
        },
    )
    value_model_path: str | None = field(
        default=None, metadata={"help": "Initialization of a 'separate' value model. Default: the reward model."}
    )
    normalize_reward: bool = field(
        default=False,
        metadata={"help": "Shift scores so that responses of the reference (SFT) policy score 0 on average."},
    )
    normalize_reward_samples: int = field(
        default=256, metadata={"help": "Reference responses sampled to estimate that mean."}
    )
    eval_prompts: int = field(
        default=200, metadata={"help": "Held-out prompts on which the final policy is compared with the SFT policy."}
    )
