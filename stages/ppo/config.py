"""PPO stage configuration: transformers' TrainingArguments (optimizer, schedule, logging, saving, seeds)
plus the PPO fields. Names and defaults follow trl 1.12's PPOConfig where it had the same field."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from pipeline.config import ModelArguments
from pipeline.errors import PipelineError

KL_ESTIMATORS = ("k1", "k2", "k3")
VALUE_LAYOUTS = ("adapter", "separate")
VALUE_INITS = ("auto", "reward", "zero")


@dataclass
class PPOModelArguments(ModelArguments):
    """Model options for PPO: LoRA is on by default, with dropout off (dropout breaks the PPO ratio)."""

    use_peft: bool = field(default=True, metadata={"help": "Train LoRA adapters (the default) instead of all weights."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout; keep 0 for PPO (ratio must start at 1)."})


@dataclass
class PPOConfig(TrainingArguments):
    """Everything the PPO stage needs besides the model options and the data."""

    # Inputs
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
            "hub id, or 'module:function' with TRL's reward-function signature."
        },
    )
    reward_weights: str | None = field(
        default=None, metadata={"help": "Comma-separated weights, one per reward source (default: all 1)."}
    )
    gold_reward: str | None = field(
        default=None,
        metadata={"help": "A scorer logged beside the reward but never optimized (the demo uses 'vader')."},
    )
    value_model: str = field(
        default="adapter",
        metadata={
            "help": "'adapter': a value LoRA adapter plus a scalar head on the policy's own base (one base model in "
            "memory for policy, reference and value; needs use_peft). 'separate': a value model initialized from "
            "the reward model (value_model_path), with the reward model's score head as its value head; with "
            "use_peft it is a LoRA adapter on the reward model that scores the rewards (one copy of the reward "
            "model, scored with the adapter disabled). It reads the policy's token ids, so it needs the SFT "
            "model's tokenizer."
        },
    )
    share_reward_base: bool = field(
        default=True,
        metadata={
            "help": "With value_model 'adapter' and a reward model that is a LoRA adapter on the SFT model (the RM "
            "stage with use_peft), put that adapter and its score head on the policy's base, frozen, instead of "
            "loading a second model: one base in memory for policy, reference, value and reward. Its score is then "
            "read from the policy's own token ids (as trl 1.12 does) instead of from re-tokenized text. Not with a "
            "4/8-bit base."
        },
    )
    value_init: str = field(
        default="auto",
        metadata={
            "help": "value_model 'adapter' only. 'reward': the value adapter starts as a copy of the reward adapter on "
            "the policy's base (on the top value_adapter_layers layers, reading the reward adapter's hidden states "
            "below them) and the value head as its score head, so the critic knows the reward from the first update "
            "(needs share_reward_base and a reward adapter on the SFT model). 'zero': a fresh value adapter on the "
            "policy's features and a zero head. 'auto': 'reward' when the reward adapter is on the policy's base, "
            "else 'zero'."
        },
    )
    value_model_path: str | None = field(
        default=None, metadata={"help": "Initialization of a 'separate' value model. Default: the reward model."}
    )
    value_adapter_layers: int | None = field(
        default=None,
        metadata={
            "help": "Put the value adapter on only the top N decoder layers, so the value pass trains just those N "
            "layers. 'adapter': the pass re-runs them from the hidden states below them instead of a whole second "
            "trunk pass: the policy pass's (detached, so the value loss does not train the policy), or with "
            "value_init 'reward' the reward pass's of each rollout. 'separate' with use_peft: the value model's "
            "lower layers run without gradients, once per rollout. Default: all layers."
        },
    )
    # Rollouts
    max_prompt_length: int | None = field(
        default=256, metadata={"help": "Prompts longer than this many tokens are cut from the left."}
    )
    total_episodes: int = field(default=10000, metadata={"help": "Episodes (prompt + sampled response) in total."})
    response_length: int = field(default=53, metadata={"help": "Maximum number of generated tokens per response."})
    temperature: float = field(
        default=0.7, metadata={"help": "Sampling temperature; logprobs everywhere are computed at it too."}
    )
    stop_token: str | None = field(
        default=None, metadata={"help": "Token that ends a response, in addition to EOS (e.g. a newline)."}
    )
    missing_eos_penalty: float | None = field(
        default=None, metadata={"help": "Subtracted from the score of a response that did not end (no EOS)."}
    )
    local_rollout_forward_batch_size: int = field(
        default=64, metadata={"help": "Rows per chunk for generation and the no-grad forward passes."}
    )
    # Reward shaping
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
    whiten_rewards: bool = field(
        default=False, metadata={"help": "Whiten per-token rewards per batch (mean kept) before GAE."}
    )
    score_clip: float | None = field(default=None, metadata={"help": "Clip scores to [-score_clip, score_clip]."})
    normalize_reward: bool = field(
        default=False,
        metadata={"help": "Shift scores so that responses of the reference (SFT) policy score 0 on average."},
    )
    normalize_reward_samples: int = field(
        default=256, metadata={"help": "Reference responses sampled to estimate that mean."}
    )
    # PPO update
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
    # Observability and evaluation
    sample_every: int = field(default=10, metadata={"help": "Log a table of sample completions every N updates."})
    num_sample_rows: int = field(default=4, metadata={"help": "Rows in that table."})
    eval_prompts: int = field(
        default=200, metadata={"help": "Held-out prompts on which the final policy is compared with the SFT policy."}
    )
    # Defaults that differ from TrainingArguments
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
            "kl_control": (self.kl_control in ("fixed", "adaptive"), "'fixed' or 'adaptive'"),
            "value_model": (self.value_model in VALUE_LAYOUTS, f"one of {VALUE_LAYOUTS}"),
            "value_init": (self.value_init in VALUE_INITS, f"one of {VALUE_INITS}"),
            "temperature": (self.temperature > 0, "positive"),
            "response_length": (self.response_length > 0, "positive"),
            "num_ppo_epochs": (self.num_ppo_epochs > 0, "positive"),
            "num_mini_batches": (self.num_mini_batches > 0, "positive"),
            "kl_coef": (self.kl_coef >= 0, "non-negative"),
            "kl_target": (self.kl_target > 0, "positive"),
            "total_episodes": (self.total_episodes > 0, "positive"),
        }
        for name, (ok, expected) in checks.items():
            if not ok:
                raise PipelineError(f"{name} must be {expected}, got {getattr(self, name)!r}")

    @property
    def local_batch_size(self) -> int:
        """Episodes per process per update: micro batch x gradient accumulation x minibatches."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.num_mini_batches
