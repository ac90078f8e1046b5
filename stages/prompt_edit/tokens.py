"""Which token of the policy's vocabulary stands for each edit action.

The policy emits one token per action. By default action i is the i-th "word token" of the vocabulary in id order:
a token that decodes to a space followed by letters only (" the", " great"), never a special token. Given
``action_tokens`` (texts, one per action in ``EditSpace.actions`` order), each text must encode to exactly one
token and all must be distinct. EOS is the stop action and stays out of the mapping.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from pipeline.errors import PipelineError


def word_tokens(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The vocabulary's word tokens (a space then letters), special tokens excluded, in id order."""
    special = set(tokenizer.all_special_ids)
    words = []
    for index in range(len(tokenizer)):
        text = tokenizer.decode([index])
        if index not in special and text.startswith(" ") and text[1:].isalpha():
            words.append(index)
    return words


def action_token_ids(tokenizer: PreTrainedTokenizerBase, count: int, texts: Sequence[str] | None = None) -> list[int]:
    """The token id of each of ``count`` actions: the given ``texts`` (one per action) or the first word tokens."""
    if texts:
        if len(texts) != count:
            raise PipelineError(
                f"action_tokens lists {len(texts)} token texts for {count} actions; give one per action, in the "
                "order of the action list (instruction, exemplar, then verbalizer edits)"
            )
        ids = []
        for text in texts:
            encoded = tokenizer.encode(text, add_special_tokens=False)
            if len(encoded) != 1:
                raise PipelineError(
                    f"action token {text!r} is {len(encoded)} tokens {encoded} for the policy's tokenizer, not one: "
                    "each action must be a single token (mind the leading space of BPE vocabularies)"
                )
            ids.append(encoded[0])
        repeated = sorted({text for text, i in zip(texts, ids, strict=True) if ids.count(i) > 1})
        if repeated:
            raise PipelineError(f"action tokens {repeated} encode to the same token; each action needs its own")
        special = set(tokenizer.all_special_ids) & set(ids)
        if special:
            raise PipelineError(
                f"action tokens {tokenizer.convert_ids_to_tokens(sorted(special))} are special tokens (EOS is the "
                "stop action); choose ordinary tokens"
            )
        return ids
    words = word_tokens(tokenizer)
    if len(words) < count:
        raise PipelineError(
            f"the edit space has {count} actions but the policy's vocabulary has only {len(words)} distinct word "
            "tokens to stand for them: shrink the pools (phrases, exemplar pool, verbalizer candidates) or give "
            "action_tokens"
        )
    return words[:count]
