"""RLPrompt's rewards for a generated classification prompt, and the reward source that computes them.

A generated prompt is filled into a template with each scoring example; a frozen task model
(:mod:`reward_models.task_models`) scores the classes; the reward of the prompt is a per-example reward averaged
over the examples. Z-scoring the rewards of a step's prompts (over all processes) is the training engine's job.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch

from pipeline.errors import PipelineError
from reward_models.task_models import DEFAULT_TEMPLATES, TaskModel, check_template, check_verbalizers

CORRECT_COEF, INCORRECT_COEF = 200.0, 180.0


def _gold_mask(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, logits.shape[-1]).bool()


def gap(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """P(gold) - max over the other classes of P(c), with P the softmax over the verbalizers; shape [...]."""
    probs = torch.softmax(logits.float(), dim=-1)
    gold = _gold_mask(logits, labels)
    return probs[gold].view(labels.shape) - probs.masked_fill(gold, float("-inf")).amax(dim=-1)


def gap_reward(
    logits: torch.Tensor,
    labels: torch.Tensor,
    correct_coef: float = CORRECT_COEF,
    incorrect_coef: float = INCORRECT_COEF,
) -> torch.Tensor:
    """RLPrompt's per-example reward: ``correct_coef * Gap`` when Gap > 0 (correct), else ``incorrect_coef * Gap``."""
    value = gap(logits, labels)
    return torch.where(value > 0, correct_coef * value, incorrect_coef * value)


def correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1.0 where the gold class scores strictly above every other class (Gap > 0; a tie counts as wrong), else 0."""
    return (gap(logits, labels) > 0).float()


def gold_log_prob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log P(gold), with P the softmax over the verbalizers."""
    return torch.log_softmax(logits.float(), dim=-1)[_gold_mask(logits, labels)].view(labels.shape)


def edit_score(logits: torch.Tensor, labels: torch.Tensor, gold_coef: float, other_coef: float) -> torch.Tensor:
    """TEMPERA's score of a prompt on an example: ``gold_coef * log P(gold) - other_coef * max over the other
    classes of log P(c)``, with P the softmax over the verbalizers; shape [...]."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    gold = _gold_mask(logits, labels)
    other = log_probs.masked_fill(gold, float("-inf")).amax(dim=-1)
    return gold_coef * log_probs[gold].view(labels.shape) - other_coef * other


# per-example rewards by name; each is averaged over the examples a prompt is scored on
REWARDS: dict[str, Callable[..., torch.Tensor]] = {
    "gap": gap_reward,
    "accuracy": correct,
    "log_prob": gold_log_prob,
}


class PromptTaskReward:
    """Reward source: ``reward(prompts, completions, **columns)`` scores each completion, a generated prompt text,
    by how well the task model classifies the scoring examples with it.

    Each distinct prompt is scored once per call; all prompts x examples go through the task model in batched
    forward passes. The class logits of the last ``cache_size`` distinct prompts on the scoring examples are kept
    across calls, so a prompt the policy samples again (as it converges, it samples few others) costs nothing;
    ``prompts_scored`` counts the prompts that did go through the task model. ``anchors`` (embedding task models
    only) adds texts to each class's anchor.
    """

    __name__ = "prompt_task"

    def __init__(
        self,
        task_model: TaskModel,
        texts: Sequence[str],
        labels: Sequence[int],
        verbalizers: Sequence[str],
        template: str | None = None,
        reward: str = "gap",
        correct_coef: float = CORRECT_COEF,
        incorrect_coef: float = INCORRECT_COEF,
        anchors: Sequence[Sequence[str]] | None = None,
        cache_size: int = 4096,
    ) -> None:
        if reward not in REWARDS:
            raise PipelineError(f"prompt reward '{reward}' is unknown; use one of: {', '.join(REWARDS)}")
        self.template = template if template is not None else DEFAULT_TEMPLATES[task_model.kind]
        check_template(self.template, task_model.kind)
        check_verbalizers(task_model.tokenizer, task_model.kind, verbalizers)
        self.task_model = task_model
        self.verbalizers = list(verbalizers)
        self.anchors = anchors
        self.texts, self.labels = self._examples(texts, labels)
        self.reward_name = reward
        self.coefs = {"correct_coef": correct_coef, "incorrect_coef": incorrect_coef} if reward == "gap" else {}
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.prompts_scored = 0

    def _examples(self, texts: Sequence[str], labels: Sequence[int]) -> tuple[list[str], torch.Tensor]:
        if len(texts) != len(labels):
            raise PipelineError(f"{len(texts)} scoring texts but {len(labels)} labels; give one label per text")
        if not texts:
            raise PipelineError("no scoring examples: a prompt reward needs labelled texts to score prompts on")
        bad = [label for label in labels if not 0 <= int(label) < len(self.verbalizers)]
        if bad:
            raise PipelineError(
                f"label {bad[0]} has no verbalizer: labels must be class indices 0..{len(self.verbalizers) - 1}, "
                f"one per verbalizer {self.verbalizers!r}"
            )
        return list(texts), torch.tensor([int(label) for label in labels])

    def logits(self, prompts: Sequence[str], texts: Sequence[str]) -> torch.Tensor:
        """Class logits [len(prompts), len(texts), classes]; each distinct prompt is scored once."""
        distinct = list(dict.fromkeys(prompts))
        filled = [query for prompt in distinct for query in self.task_model.fill(self.template, texts, prompt)]
        logits = self.task_model.class_logits(filled, self.verbalizers, self.anchors)
        logits = logits.view(len(distinct), len(texts), len(self.verbalizers))
        return logits[torch.tensor([distinct.index(prompt) for prompt in prompts], dtype=torch.long)]

    def __call__(self, prompts: list[str], completions: list[str], **columns) -> torch.Tensor:
        """One reward per completion: the per-example reward averaged over the scoring examples."""
        for completion in completions:
            if not isinstance(completion, str):
                raise PipelineError(
                    f"the prompt-task reward scores generated prompt texts, got a {type(completion).__name__}; "
                    "the policy's completions must be plain text"
                )
        logits = self._train_logits(completions)
        labels = self.labels.expand(len(completions), -1)
        return REWARDS[self.reward_name](logits, labels, **self.coefs).mean(dim=-1)

    def _train_logits(self, prompts: list[str]) -> torch.Tensor:
        """Class logits [len(prompts), examples, classes] on the scoring examples, through the cache: the prompts
        not in it go through the task model (in one batched call), and the least recently used are dropped."""
        new = [prompt for prompt in dict.fromkeys(prompts) if prompt not in self._cache]
        if new:
            self._cache.update(zip(new, self.logits(new, self.texts), strict=True))
            self.prompts_scored += len(new)
        logits = torch.stack([self._cache[prompt] for prompt in prompts])
        for prompt in dict.fromkeys(prompts):
            self._cache.move_to_end(prompt)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return logits

    def accuracy(self, prompts: Sequence[str], texts: Sequence[str], labels: Sequence[int]) -> torch.Tensor:
        """Accuracy of each prompt on a labelled set, shape [len(prompts)] (for dev selection and test reports)."""
        texts, labels = self._examples(texts, labels)
        return correct(self.logits(prompts, texts), labels.expand(len(prompts), -1)).mean(dim=-1)

    def predict(self, prompts: Sequence[str], texts: Sequence[str]) -> torch.Tensor:
        """Predicted class index (into the verbalizers) of each text under each prompt, shape [prompts, texts];
        an exact tie goes to the lower index."""
        return self.logits(prompts, texts).argmax(dim=-1)
