"""A learned reward model (sequence classification, one output) as a reward source, with its own tokenizer."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


class LearnedReward:
    """Scores ``prompt + completion + EOS`` with a reward model, the way TRL's RewardTrainer trained it.

    Text from the policy is decoded and re-tokenized with the reward model's own tokenizer (special tokens
    added as TRL's RewardTrainer adds them), so policy and reward model need not share a vocabulary.
    The score is read at the last non-pad token, i.e. at EOS. ``scoring_mode``, when given, is entered around each
    call and yields the model to score with (e.g. a LoRA-tuned copy with its adapter disabled).
    """

    __name__ = "reward_model"

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        batch_size: int = 32,
        max_length: int | None = None,
        scoring_mode: Callable[[], AbstractContextManager[PreTrainedModel]] | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.scoring_mode = scoring_mode or (lambda: nullcontext(self.model))

    def texts(self, prompts: list, completions: list) -> list[str]:
        """The sequences the model scores: conversational rows through the chat template, strings + EOS."""
        texts = []
        for prompt, completion in zip(prompts, completions, strict=True):
            if isinstance(completion, list):
                texts.append(self.tokenizer.apply_chat_template(prompt + completion, tokenize=False))
                continue
            text = prompt + completion
            texts.append(text if text.endswith(self.tokenizer.eos_token) else text + self.tokenizer.eos_token)
        return texts

    @torch.no_grad()
    def __call__(self, prompts: list, completions: list, **columns) -> torch.Tensor:
        device = next(self.model.parameters()).device
        texts = self.texts(prompts, completions)
        scores = []
        with self.scoring_mode() as model:
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    texts[start : start + self.batch_size],
                    return_tensors="pt",
                    padding=True,
                    truncation=self.max_length is not None,
                    max_length=self.max_length,
                ).to(device)
                scores.append(model(**batch).logits[:, 0].float().cpu())
        return torch.cat(scores) if scores else torch.zeros(0)


def load_learned_reward(source: str, dtype: str, batch_size: int, device) -> LearnedReward:
    """A reward source from a reward-model folder, hub id or LoRA adapter folder, with its own tokenizer, frozen on
    ``device``."""
    from pipeline.config import ModelArguments
    from pipeline.models import load_sequence_scorer, load_tokenizer, resolve_model_source

    path = resolve_model_source(source, "reward model")
    tokenizer = load_tokenizer(path)
    model = load_sequence_scorer(path, ModelArguments(dtype=dtype), tokenizer.pad_token_id)
    return LearnedReward(model.to(device).requires_grad_(False), tokenizer, batch_size=batch_size)
