"""One rollout batch: sample responses, recompute logprobs, reference logprobs and values, score, shape rewards."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from transformers import GenerationConfig, PreTrainedTokenizerBase
from trl.trainer.utils import selective_log_softmax

from reward_models.base import call_reward
from stages.ppo.modeling import PolicyAndValue, position_ids_from


@dataclass
class Rollout:
    """Tensors of one batch of episodes; [B, T] tensors cover the response tokens only."""

    input_ids: torch.Tensor  # [B, P + T] left-padded prompt + response
    attention_mask: torch.Tensor  # [B, P + T]
    position_ids: torch.Tensor  # [B, P + T]
    responses: torch.Tensor  # [B, T]
    response_mask: torch.Tensor  # [B, T] 1 up to and including the first EOS
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor  # [B] score used for the reward (after normalization, clipping, penalty)
    raw_scores: torch.Tensor  # [B] the reward source's output
    ended: torch.Tensor  # [B] bool: the response contains EOS
    value_inputs: torch.Tensor | None = None  # [B, P + T, H] the value's frozen lower layers' output, if any
    reward_model_scores: torch.Tensor | None = None  # [B] the reward adapter's scores on the policy's base, if any
    kl: torch.Tensor = None  # per-token KL estimate
    rewards: torch.Tensor = None
    advantages: torch.Tensor = None
    returns: torch.Tensor = None

    def __len__(self) -> int:
        return self.responses.shape[0]

    @property
    def response_length(self) -> int:
        return self.responses.shape[1]

    def rows(self, index: torch.Tensor) -> Rollout:
        """The episodes at ``index`` (a minibatch)."""
        return Rollout(
            **{f.name: getattr(self, f.name)[index] for f in fields(self) if getattr(self, f.name) is not None}
        )


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """Float32 log-probabilities of ``tokens`` under ``logits`` divided by the sampling temperature.

    Half-precision logits are upcast one row at a time: bf16 log-probabilities are too coarse for PPO's ratios, and
    a float32 copy of all logits at once would cost B x T x vocabulary x 4 bytes.
    """
    if logits.dtype in (torch.float32, torch.float64):
        return selective_log_softmax(logits, tokens, temperature)
    return torch.stack(
        [
            selective_log_softmax(row.float(), row_tokens, temperature)
            for row, row_tokens in zip(logits, tokens, strict=True)
        ]
    )


@torch.no_grad()
def generate(
    policy,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    generation_config: GenerationConfig,
    chunk_size: int,
    pad_token_id: int,
) -> torch.Tensor:
    """Sample responses for left-padded prompts in chunks; returns [B, T] response tokens padded with pad."""
    chunks = []
    for start in range(0, prompt_ids.shape[0], chunk_size):
        ids = prompt_ids[start : start + chunk_size]
        output = policy.generate(
            input_ids=ids,
            attention_mask=prompt_mask[start : start + chunk_size],
            generation_config=generation_config,
        )
        chunks.append(output[:, ids.shape[1] :])
    length = max(chunk.shape[1] for chunk in chunks)
    return torch.cat([F.pad(c, (0, length - c.shape[1]), value=pad_token_id) for c in chunks])


@dataclass
class ForwardScores:
    """What the no-gradient passes over sampled episodes give (see ``forward_scores``)."""

    logprobs: torch.Tensor  # [B, T]
    ref_logprobs: torch.Tensor  # [B, T]
    values: torch.Tensor  # [B, T]
    value_inputs: torch.Tensor | None  # [B, P + T, H] the value's frozen lower layers' output, if any
    reward_scores: torch.Tensor | None  # [B] the reward adapter's scores, when it sits on the policy's base


@torch.no_grad()
def forward_scores(
    model: PolicyAndValue,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    responses: torch.Tensor,
    temperature: float,
    chunk_size: int,
) -> ForwardScores:
    """Policy logprobs, reference logprobs and values of the response tokens, the value's frozen lower-layer output
    and the reward adapter's scores (no gradients, in chunks)."""
    length = responses.shape[1]
    position_ids = position_ids_from(attention_mask)
    logprobs, ref_logprobs, values, value_inputs, rewards = [], [], [], [], []
    for start in range(0, input_ids.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        args = (input_ids[rows], attention_mask[rows], position_ids[rows], length + 1)
        if model.scores_rewards:
            reward, inputs = model.reward_scores(*args[:3])
        else:
            reward, inputs = None, model.value_inputs(*args[:3])
        logits, value = model(*args, value_inputs=inputs)
        logprobs.append(token_logprobs(logits[:, :-1], responses[rows], temperature))
        values.append(value[:, :-1])
        value_inputs.append(inputs)
        rewards.append(reward)
        ref_logits = model.reference_logits(*args)
        ref_logprobs.append(token_logprobs(ref_logits[:, :-1], responses[rows], temperature))
        del logits, ref_logits
    return ForwardScores(
        logprobs=torch.cat(logprobs),
        ref_logprobs=torch.cat(ref_logprobs),
        values=torch.cat(values),
        value_inputs=torch.cat(value_inputs) if value_inputs[0] is not None else None,
        reward_scores=torch.cat(rewards) if rewards[0] is not None else None,
    )


@torch.no_grad()
def reward_adapter_scores(
    model: PolicyAndValue, input_ids: torch.Tensor, attention_mask: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """The scores of the reward adapter on the policy's base for whole sequences (no gradients, in chunks)."""
    position_ids = position_ids_from(attention_mask)
    return torch.cat(
        [
            model.reward_scores(input_ids[rows], attention_mask[rows], position_ids[rows])[0]
            for rows in (slice(start, start + chunk_size) for start in range(0, input_ids.shape[0], chunk_size))
        ]
    )


def decode_completions(tokenizer: PreTrainedTokenizerBase, responses: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """Response text up to the first EOS (EOS and padding removed), for reward sources with their own tokenizer."""
    return [
        tokenizer.decode(row[: int(n)], skip_special_tokens=True)
        for row, n in zip(responses.tolist(), mask.sum(1).tolist(), strict=True)
    ]


def score(
    reward_fn: Callable[..., torch.Tensor],
    prompts: list[str],
    completions: list[str],
    columns: dict[str, list],
    device: torch.device,
) -> torch.Tensor:
    """Scores from a reward source as a float tensor on ``device``."""
    return call_reward(reward_fn, prompts, completions, **columns).to(device)
