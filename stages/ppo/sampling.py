"""How the policy samples, and the log-probabilities of what it sampled under exactly that distribution.

Prompts are tokenized as TRL's trainers do (chat template for conversational prompts, the tokenizer's own special
tokens for text), left-padded and cut from the left. Sampling is plain ancestral sampling from softmax(logits / T):
the model's own ``generation_config.json`` (repetition penalties, top-k, min-p, ...) is kept out of it. An
environment may add ``TokenRules``: a restricted vocabulary, or EOS suppressed for a fixed response length. The same
rules are applied wherever log-probabilities are recomputed, so the first minibatch's ratio is exactly 1.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, PreTrainedTokenizerBase
from trl.trainer.utils import selective_log_softmax, selective_log_softmax_and_entropy

from pipeline.errors import PipelineError


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, stop_token: str | None, stop_token_id: int | None) -> list[int]:
    """EOS plus the extra stop token: ``stop_token`` is text that must encode to exactly one token (escapes such as
    ``\\n`` read as the character), ``stop_token_id`` an id of the vocabulary."""
    ids = [tokenizer.eos_token_id]
    if stop_token is not None:
        text = codecs.decode(stop_token, "unicode_escape")
        encoded = tokenizer.encode(text, add_special_tokens=False)
        if len(encoded) != 1:
            raise PipelineError(
                f"stop_token {stop_token!r} encodes to {len(encoded)} tokens {encoded} with the policy's tokenizer, "
                "not one: give text that is a single token (e.g. '\\n'), or its id as stop_token_id"
            )
        ids.append(encoded[0])
    if stop_token_id is not None:
        if not 0 <= stop_token_id < len(tokenizer):
            raise PipelineError(
                f"stop_token_id {stop_token_id} is not in the policy's vocabulary (0-{len(tokenizer) - 1})"
            )
        ids.append(stop_token_id)
    if tokenizer.pad_token_id in ids:
        raise PipelineError("the stop token is the pad token: choose another stop token")
    return list(dict.fromkeys(ids))


class TokenRules(LogitsProcessor):
    """Which tokens the policy may sample: only ``allowed`` (when given) and never ``banned``.

    Applied to logits already divided by the temperature: a disallowed token gets the dtype's lowest finite value,
    so its probability is exactly 0 and entropies stay finite. As a transformers ``LogitsProcessor`` it rules
    sampling; ``apply`` rules the recomputed log-probabilities identically.
    """

    def __init__(self, allowed: Sequence[int] | None = None, banned: Sequence[int] = ()) -> None:
        self.allowed = sorted(set(allowed)) if allowed is not None else None
        self.banned = sorted(set(banned))
        self._masks: dict[tuple[int, torch.device], torch.Tensor] = {}

    @property
    def active(self) -> bool:
        return self.allowed is not None or bool(self.banned)

    def disallowed(self, vocab_size: int, device: torch.device) -> torch.Tensor:
        """A boolean ``[vocab_size]`` mask of the tokens that may not be sampled."""
        key = (vocab_size, device)
        if key not in self._masks:
            mask = torch.zeros(vocab_size, dtype=torch.bool)
            if self.allowed is not None:
                mask[:] = True
                mask[self.allowed] = False
            mask[self.banned] = True
            self._masks[key] = mask.to(device)
        return self._masks[key]

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return logits
        return logits.masked_fill(self.disallowed(logits.shape[-1], logits.device), torch.finfo(logits.dtype).min)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self.apply(scores)


def token_rules(
    allowed_token_ids: Sequence[int] | None, stop_ids: Sequence[int], fixed_length: bool, vocab_size: int
) -> TokenRules:
    """The rules of a rollout: a fixed response length bans the stop tokens; a restricted vocabulary keeps them."""
    if allowed_token_ids is not None:
        outside = [i for i in allowed_token_ids if not 0 <= i < vocab_size]
        if outside or not allowed_token_ids:
            raise PipelineError(
                f"allowed_token_ids must be ids of the policy's vocabulary (0-{vocab_size - 1}); got {outside[:5]}"
                if outside
                else "allowed_token_ids is empty: allow at least one token"
            )
        allowed = list(allowed_token_ids) if fixed_length else [*allowed_token_ids, *stop_ids]
        return TokenRules(allowed, banned=stop_ids if fixed_length else ())
    return TokenRules(None, banned=stop_ids if fixed_length else ())


def tokenize_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: list, max_length: int | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids and mask, as TRL tokenizes prompts: conversational prompts through the chat template
    (with the generation prompt; the template writes the special tokens), text with the tokenizer's own special
    tokens. Prompts longer than ``max_length`` are cut from the left. A prompt that encodes to nothing (an empty
    input) starts from the BOS token, or EOS where the tokenizer has no BOS (GPT-2's convention)."""
    if prompts and isinstance(prompts[0], list):
        ids = tokenizer.apply_chat_template(prompts, add_generation_prompt=True, tokenize=True, return_dict=True)
        ids = ids["input_ids"]
    else:
        ids = tokenizer(list(prompts))["input_ids"]
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    ids = [(row[-max_length:] if max_length else row) or [start] for row in ids]
    batch = tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt", padding_side="left")
    return batch["input_ids"].to(device), batch["attention_mask"].to(device)


@contextmanager
def neutral_generation_defaults(model) -> Iterator[None]:
    """Hide the model's ``generation_config.json`` while sampling.

    transformers fills every field our sampling config leaves unset from it, so a base that ships a repetition
    penalty or min-p would sample from another distribution than the softmax(logits / T) that PPO scores.
    """
    inner = model.get_base_model() if isinstance(model, PeftModel) else model
    saved = inner.generation_config
    inner.generation_config = GenerationConfig()
    try:
        yield
    finally:
        inner.generation_config = saved


def sampling_config(
    max_new_tokens: int, temperature: float, stop_ids: list[int], pad_token_id: int, greedy: bool = False
) -> GenerationConfig:
    """Ancestral sampling at ``temperature``: no top-k, top-p or other truncation; or, ``greedy``, the most likely
    token at each step."""
    sampling = {} if greedy else {"temperature": temperature, "top_k": 0, "top_p": 1.0}
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=not greedy,
        eos_token_id=stop_ids,
        pad_token_id=pad_token_id,
        **sampling,
    )


@torch.no_grad()
def generate(
    policy,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    config: GenerationConfig,
    rules: TokenRules,
    chunk_size: int,
) -> torch.Tensor:
    """Sample responses for left-padded prompts in chunks; returns [B, T] response tokens padded with pad."""
    processors = LogitsProcessorList([rules] if rules.active else [])
    chunks = []
    with neutral_generation_defaults(policy):
        for start in range(0, prompt_ids.shape[0], chunk_size):
            ids = prompt_ids[start : start + chunk_size]
            output = policy.generate(
                input_ids=ids,
                attention_mask=prompt_mask[start : start + chunk_size],
                generation_config=config,
                logits_processor=processors,
            )
            chunks.append(output[:, ids.shape[1] :])
    length = max(chunk.shape[1] for chunk in chunks)
    return torch.cat([F.pad(c, (0, length - c.shape[1]), value=config.pad_token_id) for c in chunks])


def token_logprobs(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float,
    rules: TokenRules | None = None,
    entropy: bool = False,
    entropy_grad: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Float32 log-probabilities of ``tokens`` under softmax(rules(logits / T)), the distribution sampled from; with
    ``entropy``, also each position's entropy (with gradients only if ``entropy_grad``: TRL's one-pass helper).

    Half-precision logits are upcast one row at a time: bf16 log-probabilities are too coarse for PPO's ratios, and
    a float32 copy of all logits at once would cost B x T x vocabulary x 4 bytes.
    """

    def one(block: torch.Tensor, block_tokens: torch.Tensor):
        scaled = block.float() / temperature
        scaled = rules.apply(scaled) if rules is not None else scaled
        if entropy:
            return selective_log_softmax_and_entropy(scaled, block_tokens, entropy_requires_grad=entropy_grad)
        return selective_log_softmax(scaled, block_tokens)

    if logits.dtype in (torch.float32, torch.float64):
        return one(logits, tokens)
    rows = [one(row, row_tokens) for row, row_tokens in zip(logits, tokens, strict=True)]
    if entropy:
        return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])
    return torch.stack(rows)
