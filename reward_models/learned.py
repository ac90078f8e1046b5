"""A learned reward model (sequence classification, one output) as a reward source, with its own tokenizer."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from reward_models.inputs import reward_model_batch, reward_model_ids


class LearnedReward:
    """Scores each prompt + completion with a reward model, on the inputs the RM stage trained it on.

    Text from the policy is re-tokenized with the reward model's own tokenizer, as :mod:`reward_models.inputs`
    tokenizes the RM stage's training pairs, so policy and reward model need not share a vocabulary. A decoder reads
    ``prompt + completion + EOS`` and is scored at the EOS; an encoder reads ``(prompt, completion)`` as a text pair
    and is scored on its pooled [CLS]; conversational rows go through the chat template.
    """

    __name__ = "reward_model"

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        batch_size: int = 32,
        max_length: int | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length

    @torch.no_grad()
    def __call__(self, prompts: list, completions: list, **columns) -> torch.Tensor:
        device = next(self.model.parameters()).device
        scores = []
        for start in range(0, len(completions), self.batch_size):
            end = start + self.batch_size
            ids = reward_model_ids(
                self.tokenizer,
                prompts[start:end],
                completions[start:end],
                truncation=self.max_length is not None,
                max_length=self.max_length,
            )
            batch = {key: value.to(device) for key, value in reward_model_batch(ids, self.tokenizer).items()}
            scores.append(self.model(**batch).logits[:, 0].float().cpu())
        return torch.cat(scores) if scores else torch.zeros(0)
