"""A learned reward model (sequence classification, one output) as a reward source, with its own tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pipeline.config import ModelArguments
from pipeline.models import adapter_base, is_lora_adapter, load_sequence_scorer, load_tokenizer, resolve_model_source
from reward_models.inputs import reward_model_batch, reward_model_ids

# transformers sets model_max_length to a huge number when the tokenizer does not know its model's limit.
MODEL_MAX_LENGTH_UNSET = 1_000_000


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


def load_learned_reward(
    path: str,
    dtype: str = "float32",
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    max_length: int | None = None,
) -> LearnedReward:
    """A reward model as a reward source: a model folder, a hub id, or a LoRA adapter folder (merged into the base
    it names), with its own tokenizer (an adapter saved without one uses its base's), dropout off, frozen, in eval
    mode, on ``device``. Errors name a missing path or an unreachable hub. Texts longer than ``max_length`` (default:
    the tokenizer's own limit, e.g. BERT's 512, when it has a real one) are cut from the left, so a decoder's EOS,
    where its score is read, stays."""
    source = resolve_model_source(path, "reward model")
    tokenizer_source = source
    if is_lora_adapter(source) and not (Path(source) / "tokenizer_config.json").is_file():
        tokenizer_source = resolve_model_source(adapter_base(source), f"base model of the adapter in {source}")
    tokenizer = load_tokenizer(tokenizer_source)
    tokenizer.truncation_side = "left"
    if max_length is None and tokenizer.model_max_length < MODEL_MAX_LENGTH_UNSET:
        max_length = tokenizer.model_max_length
    model = load_sequence_scorer(source, ModelArguments(dtype=dtype), tokenizer.pad_token_id)
    return LearnedReward(model.to(device).requires_grad_(False), tokenizer, batch_size, max_length)
