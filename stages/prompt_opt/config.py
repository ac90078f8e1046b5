"""Configuration of the prompt-optimization stage: the classification task a prompt is learned for, and how.

``PromptTaskArguments`` names the frozen task model and the labelled data; ``PromptOptConfig`` is the engine's
``PPOArguments`` (sampling, update, layout) plus what the prompt policy and its search need. The stage sets the
engine's rollout hooks from it: a constant policy input, ``prompt_length`` tokens with EOS suppressed, several
prompts per step, and the step's rewards z-scored over all processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.errors import PipelineError
from reward_models.task_models import TaskModelArguments
from stages.ppo.config import PPOArguments

ALGORITHMS = ("ppo", "sql")


@dataclass
class PromptTaskArguments(TaskModelArguments):
    """The frozen task model, the labelled data it is prompted for, and the reward of a prompt."""

    verbalizers: list[str] = field(
        default_factory=list,
        metadata={"help": "One word per class, in the order of `classes` (RLPrompt's SST-2: ' terrible' ' great')."},
    )
    num_shots: int = field(
        default=16, metadata={"help": "Examples per class in the few-shot train split and in the dev split."}
    )
    prompt_reward: str = field(
        default="gap",
        metadata={
            "help": "Per-example reward averaged over the train examples: 'gap' (RLPrompt's: P(gold) minus the best "
            "other class's P, times correct_coef when right, incorrect_coef when wrong), 'accuracy' or 'log_prob'."
        },
    )
    correct_coef: float = field(default=200.0, metadata={"help": "The gap reward's factor when the class is right."})
    incorrect_coef: float = field(default=180.0, metadata={"help": "The gap reward's factor when it is wrong."})


@dataclass
class PromptOptConfig(PPOArguments):
    """The prompt policy, its algorithm and its search; the engine's PPO fields apply to ``algorithm`` 'ppo'."""

    algorithm: str = field(
        default="ppo", metadata={"help": "'ppo' (the engine's PPO) or 'sql' (RLPrompt's soft Q-learning)."}
    )
    policy_model: str | None = field(
        default=None,
        metadata={"help": "The policy's base model (hub id or path), trained with LoRA (the demo: build/tiny-base)."},
    )
    policy_input: str = field(
        default="",
        metadata={"help": "The constant text the policy reads before writing a prompt ('' starts from BOS)."},
    )
    prompt_length: int = field(default=5, metadata={"help": "Tokens per prompt (RLPrompt: 5; 2 is also reported)."})
    allowed_tokens: str | None = field(
        default=None,
        metadata={
            "help": "Restrict the prompt's tokens: 'words' (vocabulary tokens that are a space and letters, for "
            "readable prompts) or a file with one token text per line; default: any token (as RLPrompt)."
        },
    )
    dev_every: int = field(
        default=10, metadata={"help": "Every N updates, the policy's greedy prompt is scored on the dev split."}
    )
    top_prompts: int = field(
        default=10,
        metadata={"help": "Sampled prompts with the best train reward that are scored on dev at the end (and kept)."},
    )
    manual_prompt: str = field(
        default="", metadata={"help": "A prompt written by hand, reported as a baseline on the test split."}
    )
    random_prompts: int = field(
        default=20, metadata={"help": "Random prompts of prompt_length tokens reported as a baseline."}
    )
    target_update_rate: float = field(
        default=0.01,
        metadata={
            "help": "sql: the target adapter's Polyak rate per optimizer step (RLPrompt: 0.001 over 12,000 steps)."
        },
    )
    sql_reward_scale: float = field(
        default=5.0,
        metadata={"help": "sql: the z-scored rewards are multiplied by this (RLPrompt maps [0, 1] to [0, 5])."},
    )
    # Defaults for prompt search (see configs/demo/prompt_opt.yaml for the demo's).
    score_normalization: str = field(
        default="batch", metadata={"help": "The step's prompt rewards z-scored over all processes (RLPrompt)."}
    )
    kl_coef: float = field(default=0.0, metadata={"help": "KL penalty to the initial policy (RLPrompt has none)."})

    def __post_init__(self) -> None:
        if self.prompt_length < 1:
            raise PipelineError(f"prompt_length must be at least 1, got {self.prompt_length}")
        # The prompt is the response: exactly prompt_length tokens, never cut by EOS; every prompt of a process's
        # step is a sample of its one constant input.
        self.response_length = self.prompt_length
        self.fixed_response_length = True
        self.num_generations = self.local_batch_size
        super().__post_init__()
        if self.algorithm not in ALGORITHMS:
            raise PipelineError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if not 0 < self.target_update_rate <= 1:
            raise PipelineError(f"target_update_rate must be in (0, 1], got {self.target_update_rate}")
