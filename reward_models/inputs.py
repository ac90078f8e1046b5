"""What a reward model reads for a prompt and a completion: the same token ids in RM training and in scoring.

The RM stage hands TRL's RewardTrainer the ids of :func:`reward_model_ids` (it then skips its own EOS and
tokenization) and batches them with :class:`RewardPairCollator`; :class:`reward_models.learned.LearnedReward` scores
with the same two functions, so what the reward model was trained on and what it scores cannot drift apart.

- Conversational rows (message lists): ``prompt + completion`` through the chat template, which writes the special
  tokens itself (no second BOS), as TRL's RewardTrainer tokenizes them.
- Text for a decoder: ``prompt + completion + EOS`` with the tokenizer's special tokens (e.g. a BOS), as TRL's
  RewardTrainer tokenizes it; a decoder's classification head reads the last non-pad token, the EOS.
- Text for an encoder (a tokenizer that frames inputs with a CLS and a SEP token: BERT, DeBERTa, RoBERTa, ...):
  the classic cross-encoder input, ``(prompt, completion)`` as a text pair, ``[CLS] prompt [SEP] completion [SEP]``
  with segment ids 0 then 1 where the model takes them, and no EOS; its classification head reads the pooled [CLS].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase
from trl.trainer.reward_trainer import DataCollatorForPreference
from trl.trainer.utils import pad

from pipeline.errors import PipelineError


def is_cross_encoder(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer frames inputs as an encoder does (a CLS and a SEP token): such a model reads a text pair
    and its own CLS token, not an EOS."""
    return tokenizer.cls_token is not None and tokenizer.sep_token is not None


def reward_model_ids(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Any],
    completions: Sequence[Any],
    truncation: bool = False,
    max_length: int | None = None,
) -> list[list[int]]:
    """The token ids a reward model reads for each prompt + completion (see the module's docstring).

    Prompts and completions are all text or all message lists. Without ``truncation`` (the RM stage's training
    data: TRL's RewardTrainer drops pairs longer than its ``max_length`` instead) the ids are exactly those TRL's
    RewardTrainer makes of the same rows.
    """
    if not completions:
        return []
    options = {"truncation": truncation, "max_length": max_length}
    if isinstance(completions[0], list):
        if not tokenizer.chat_template:
            raise PipelineError(
                f"the rows are chat messages but the tokenizer of '{tokenizer.name_or_path}' has no chat template: "
                "give prompt, chosen and rejected as text, or use a reward model whose tokenizer has a chat template"
            )
        return [
            tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=True, **options)["input_ids"]
            for prompt, completion in zip(prompts, completions, strict=True)
        ]
    if is_cross_encoder(tokenizer):
        return tokenizer(list(prompts), list(completions), **options)["input_ids"]
    eos = tokenizer.eos_token
    if eos is None:
        raise PipelineError(
            f"the tokenizer of '{tokenizer.name_or_path}' has no EOS token, where a decoder reward model reads its "
            "score, and no CLS/SEP tokens of an encoder: set --eos_token to a token from its vocabulary"
        )
    texts = [prompt + (c if c.endswith(eos) else c + eos) for prompt, c in zip(prompts, completions, strict=True)]
    return tokenizer(texts, **options)["input_ids"]


def segment_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor, sep_token_id: int) -> torch.Tensor:
    """An encoder's segment ids (``token_type_ids``) for right-padded rows: 0 up to the first SEP token included, 1
    after it, 0 on padding, as a BERT tokenizer writes them for a text pair (and all 0 for a single text).

    They are derived from the ids because TRL's preference collator passes ids and attention masks only. (A SEP
    token written literally in a prompt would start the second segment early.)
    """
    is_sep = (input_ids == sep_token_id).long()
    return ((is_sep.cumsum(-1) - is_sep) > 0).long() * attention_mask


def with_segment_ids(batch: dict[str, torch.Tensor], tokenizer: PreTrainedTokenizerBase) -> dict[str, torch.Tensor]:
    """``batch`` plus ``token_type_ids`` when the tokenizer is an encoder's whose model takes them."""
    if is_cross_encoder(tokenizer) and "token_type_ids" in tokenizer.model_input_names:
        batch["token_type_ids"] = segment_ids(batch["input_ids"], batch["attention_mask"], tokenizer.sep_token_id)
    return batch


def reward_model_batch(ids: Sequence[Sequence[int]], tokenizer: PreTrainedTokenizerBase) -> dict[str, torch.Tensor]:
    """Rows of :func:`reward_model_ids` as one batch, padded as :class:`RewardPairCollator` pads them for training:
    on the right (an encoder's CLS stays first), with the tokenizer's pad token, plus segment ids."""
    rows = [torch.tensor(row, dtype=torch.long) for row in ids]
    batch = {
        "input_ids": pad(rows, padding_value=tokenizer.pad_token_id, padding_side="right"),
        "attention_mask": pad([torch.ones_like(row) for row in rows], padding_value=0, padding_side="right"),
    }
    return with_segment_ids(batch, tokenizer)


@dataclass
class RewardPairCollator:
    """TRL's preference collator (chosen rows, then rejected rows, right-padded; margins) plus an encoder's segment
    ids. The pad token is read from the tokenizer when a batch is made, after TRL's RewardTrainer has set it."""

    tokenizer: PreTrainedTokenizerBase
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        collate = DataCollatorForPreference(self.tokenizer.pad_token_id, self.pad_to_multiple_of)
        return with_segment_ids(collate(examples), self.tokenizer)
