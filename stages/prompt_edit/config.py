"""Configuration of the prompt-editing stage (TEMPERA): the task model and data, the initial prompt with the pools
its edits draw from, and the edit policy (the engine's ``PPOArguments`` plus what the editing needs).

The stage sets the engine's rollout hooks from it: the policy's response is its actions, at most ``max_edits`` tokens
(``response_length``), sampled among the action tokens and EOS (``allowed_token_ids``), EOS being the stop action.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.errors import PipelineError
from reward_models.task_models import TaskModelArguments
from stages.ppo.config import PPOArguments

CANDIDATE_SEPARATOR = "|"


@dataclass
class EditTaskArguments(TaskModelArguments):
    """The frozen task model and the labelled data whose prompts are edited."""

    task_temperature: float = field(
        default=0.02, metadata={"help": "Embedding task models: cosine similarities are divided by it."}
    )
    num_shots: int = field(
        default=16,
        metadata={"help": "Training queries per class (and as many dev queries), drawn from the training split."},
    )


@dataclass
class InitialPromptArguments:
    """The prompt a person wrote, and the pools of candidates its edits draw from."""

    instruction: list[str] = field(
        default_factory=list,
        metadata={"help": "The initial instruction as phrases, in order (joined by spaces); may be empty."},
    )
    instruction_pool: list[str] = field(
        default_factory=list,
        metadata={"help": "Candidate phrases to add, delete and swap, besides the initial instruction's."},
    )
    verbalizers: list[str] = field(
        default_factory=list,
        metadata={"help": "The initial verbalizer of each class, in the order of `classes` (e.g. ' terrible')."},
    )
    verbalizer_candidates: list[str] = field(
        default_factory=list,
        metadata={
            "help": "One entry per class, in the order of `classes`: its candidate verbalizers separated by "
            f"'{CANDIDATE_SEPARATOR}', the initial one among them (e.g. ' terrible| bad| awful')."
        },
    )
    exemplars: list[str] = field(
        default_factory=list,
        metadata={
            "help": "The initial in-context exemplars: texts of the exemplar pool file, or of the training split "
            "(their labels are taken from there). Default: the first num_exemplars of the pool."
        },
    )
    num_exemplars: int = field(
        default=4, metadata={"help": "Exemplars per prompt when `exemplars` is not given (TEMPERA: 4)."}
    )
    exemplar_pool: str | None = field(
        default=None,
        metadata={
            "help": "A labelled file (text and label columns) of candidate exemplars. Default: drawn from the "
            "training split (exemplar_pool_size of them, balanced, never used as queries)."
        },
    )
    exemplar_pool_size: int = field(
        default=16, metadata={"help": "Candidate exemplars drawn from the training split (TEMPERA: 16)."}
    )
    exemplar_separator: str = field(
        default="\n", metadata={"help": "Masked and causal task models: what joins the exemplars and the query."}
    )

    def candidate_lists(self) -> list[list[str]]:
        """The verbalizer candidates of each class."""
        return [entry.split(CANDIDATE_SEPARATOR) for entry in self.verbalizer_candidates]


@dataclass
class PromptEditConfig(PPOArguments):
    """The edit policy and its training; the engine's PPO fields apply."""

    policy_model: str | None = field(
        default=None,
        metadata={"help": "The policy's base model (hub id or path), trained with LoRA (the demo: build/tiny-base)."},
    )
    policy_template: str = field(
        default="{prompt}\nInput: {input}\nEdits:",
        metadata={"help": "What the policy reads: '{prompt}' (the initial prompt in words) and '{input}' (the query)."},
    )
    max_edits: int = field(default=8, metadata={"help": "At most this many edits per query (TEMPERA: 8)."})
    action_tokens: list[str] | None = field(
        default=None,
        metadata={
            "help": "One token text per action, in the order of the action list; default: the vocabulary's first "
            "word tokens (a space and letters) in id order."
        },
    )
    gold_coef: float = field(default=1.0, metadata={"help": "lambda1 of the score: weight of log P(gold)."})
    other_coef: float = field(
        default=0.0, metadata={"help": "lambda2 of the score: weight of -max over the other classes of log P(c)."}
    )
    dev_every: int = field(
        default=10, metadata={"help": "Every N updates, the greedy edits' accuracy on the dev queries is logged."}
    )
    random_edit_draws: int = field(
        default=5, metadata={"help": "Draws of the random-edits baseline (mean and spread are reported)."}
    )
    sample_queries: int = field(default=20, metadata={"help": "Test queries whose edits are written to edits.jsonl."})
    score_cache_size: int = field(default=100_000, metadata={"help": "(query, prompt) scores kept in memory."})
    # Defaults for editing (see configs/demo/prompt_edit.yaml for the demo's).
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the actions."})
    kl_coef: float = field(default=0.0, metadata={"help": "KL penalty to the initial policy."})

    def __post_init__(self) -> None:
        if self.max_edits < 1:
            raise PipelineError(f"max_edits must be at least 1 edit per query, got {self.max_edits}")
        self.response_length = self.max_edits  # one token per edit, EOS to stop
        self.fixed_response_length = False
        super().__post_init__()
        for name in ("dev_every", "random_edit_draws"):
            if getattr(self, name) < 1:
                raise PipelineError(f"{name} must be at least 1, got {getattr(self, name)}")
