"""One rollout: prompt rows -> sampled episodes -> logprobs, reference logprobs and values -> shaped rewards, GAE.

The environment's part is the ``Sampler`` (how rows become policy inputs and how the policy samples); the reward
sources score the ``Episodes`` it returns (``reward_models``); ``shape`` turns their scores and per-token rewards
into the per-token rewards, advantages and returns PPO trains on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from transformers import PreTrainedTokenizerBase

from reward_models.base import Episodes
from reward_models.registry import Rewards
from stages.ppo.config import PPOArguments
from stages.ppo.core import (
    gae_advantages,
    group_zscore,
    kl_estimate,
    masked_whiten,
    per_token_rewards,
    truncate_after_eos,
    zscore,
)
from stages.ppo.modeling import PolicyAndValue, position_ids_from
from stages.ppo.sampling import (
    TokenRules,
    generate,
    sampling_config,
    stop_token_ids,
    token_logprobs,
    token_rules,
    tokenize_prompts,
)


class Sampler:
    """Turns a batch of prompt rows into episodes: ``num_generations`` responses per prompt, sampled under the
    rollout's token rules (restricted vocabulary, fixed length), truncated after the first stop token."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, args: PPOArguments, vocab_size: int) -> None:
        self.tokenizer, self.args = tokenizer, args
        self.stop_ids = stop_token_ids(tokenizer, args.stop_token, args.stop_token_id)
        self.rules: TokenRules = token_rules(
            args.allowed_token_ids, self.stop_ids, args.fixed_response_length, vocab_size
        )
        self.configs = {
            greedy: sampling_config(
                args.response_length, args.temperature, self.stop_ids, tokenizer.pad_token_id, greedy=greedy
            )
            for greedy in (False, True)
        }

    def sample(self, policy, rows: dict[str, list], device: torch.device, greedy: bool = False) -> Episodes:
        """Sample with ``policy`` (a causal LM, or the reference) for ``rows``: each row's prompt repeated
        ``num_generations`` times, consecutively, with its other columns; ``greedy`` decodes the most likely
        response of each row once."""
        args, repeat = self.args, 1 if greedy else self.args.num_generations
        prompts = [prompt for prompt in rows["prompt"] for _ in range(repeat)]
        prompt_ids, prompt_mask = tokenize_prompts(self.tokenizer, prompts, args.max_prompt_length, device)
        raw = generate(
            policy, prompt_ids, prompt_mask, self.configs[greedy], self.rules, args.local_rollout_forward_batch_size
        )
        columns = {key: [value for value in values for _ in range(repeat)] for key, values in rows.items()}
        return to_episodes(
            self.tokenizer, prompts, columns, prompt_ids, prompt_mask, raw, self.stop_ids, args.fixed_response_length
        )


def to_episodes(
    tokenizer: PreTrainedTokenizerBase,
    prompts: list,
    columns: dict[str, list],
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    raw: torch.Tensor,
    stop_ids: list[int],
    fixed_length: bool = False,
) -> Episodes:
    """Episodes from sampled responses ``raw`` [B, T] to left-padded prompts: each cut after its first stop token
    (a fixed-length episode ends at its length), decoded, with the rows' other ``columns``."""
    responses, response_mask, last_index, ended = truncate_after_eos(raw, stop_ids, tokenizer.pad_token_id)
    if fixed_length:  # no stop token can be sampled: every episode ends at the fixed length
        ended = torch.ones_like(ended)
    texts = [
        tokenizer.decode(row[: int(n)], skip_special_tokens=True)
        for row, n in zip(responses.tolist(), response_mask.sum(1).tolist(), strict=True)
    ]
    conversational = bool(prompts) and isinstance(prompts[0], list)
    return Episodes(
        prompts=prompts,
        completions=[[{"role": "assistant", "content": t}] for t in texts] if conversational else texts,
        columns={key: values for key, values in columns.items() if key not in ("prompt", "completion", "completions")},
        input_ids=torch.cat([prompt_ids, responses], dim=1),
        attention_mask=torch.cat([prompt_mask, response_mask.to(prompt_mask.dtype)], dim=1),
        responses=responses,
        response_mask=response_mask,
        last_index=last_index,
        ended=ended,
    )


@dataclass
class Passes:
    """What the no-gradient passes over sampled episodes give."""

    logprobs: torch.Tensor  # [B, T]
    ref_logprobs: torch.Tensor  # [B, T]
    values: torch.Tensor  # [B, T]
    value_inputs: torch.Tensor | None  # [B, P + T, H] the hidden states entering the value's top layers, if any


@torch.no_grad()
def forward_passes(
    model: PolicyAndValue, episodes: Episodes, temperature: float, rules: TokenRules, chunk_size: int
) -> Passes:
    """Policy and reference logprobs of the response tokens under the sampling distribution, the values, and the
    frozen hidden states the value's top layers start from (in chunks)."""
    input_ids, attention_mask, responses = episodes.input_ids, episodes.attention_mask, episodes.responses
    length = responses.shape[1]
    position_ids = position_ids_from(attention_mask)
    parts: dict[str, list] = {"logprobs": [], "ref_logprobs": [], "values": [], "value_inputs": []}
    for start in range(0, input_ids.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        batch = (input_ids[rows], attention_mask[rows], position_ids[rows])
        ref_logits, value_inputs = model.frozen_passes(*batch, keep=length + 1)
        logits, values = model(*batch, keep=length + 1, value_inputs=value_inputs)
        parts["logprobs"].append(token_logprobs(logits[:, :-1], responses[rows], temperature, rules))
        parts["ref_logprobs"].append(token_logprobs(ref_logits[:, :-1], responses[rows], temperature, rules))
        parts["values"].append(values[:, :-1].float())
        parts["value_inputs"].append(value_inputs)
        del logits, ref_logits
    value_inputs = parts.pop("value_inputs")
    return Passes(
        **{key: torch.cat(chunks) for key, chunks in parts.items()},
        value_inputs=torch.cat(value_inputs) if value_inputs[0] is not None else None,
    )


@dataclass
class Rollout:
    """The tensors PPO trains on for one batch of episodes; [B, T] tensors cover the response tokens only."""

    input_ids: torch.Tensor  # [B, P + T] left-padded prompt + response
    attention_mask: torch.Tensor  # [B, P + T]
    position_ids: torch.Tensor  # [B, P + T]
    responses: torch.Tensor  # [B, T]
    response_mask: torch.Tensor  # [B, T] 1 up to and including each episode's last token
    logprobs: torch.Tensor  # [B, T] of the sampling policy
    ref_logprobs: torch.Tensor  # [B, T]
    values: torch.Tensor  # [B, T]
    scores: torch.Tensor  # [B] the episode scores placed on the last token (after shaping)
    raw_scores: torch.Tensor  # [B] the reward sources' per-episode total (scores and per-token rewards), as returned
    ended: torch.Tensor  # [B] bool
    kl: torch.Tensor  # [B, T] per-token KL estimate
    rewards: torch.Tensor  # [B, T] per-token rewards: -beta * KL, the score on the last token, dense rewards
    advantages: torch.Tensor  # [B, T] whitened GAE advantages
    returns: torch.Tensor  # [B, T]
    value_inputs: torch.Tensor | None = None  # [B, P + T, H] see ``Passes``

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


def shape_scores(
    scores: torch.Tensor,
    ended: torch.Tensor,
    args: PPOArguments,
    offset: float,
    gather: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Per-episode scores as PPO rewards them: minus the reference offset (``normalize_reward``), clipped,
    penalized for a missing EOS, then z-scored over all processes' episodes (``gather``) or within each prompt's
    responses, as configured."""
    scores = scores - offset
    if args.score_clip is not None:
        scores = scores.clamp(-args.score_clip, args.score_clip)
    if args.missing_eos_penalty is not None:
        scores = scores - args.missing_eos_penalty * (~ended).float()
    if args.score_normalization == "batch":
        scores = zscore(scores, gather(scores), args.score_normalization_eps)
    elif args.score_normalization == "group":
        scores = group_zscore(scores, args.num_generations, args.score_normalization_eps)
    return scores


def assemble(
    episodes: Episodes, passes: Passes, rewards: Rewards, scores: torch.Tensor, beta: float, args: PPOArguments
) -> Rollout:
    """The rollout PPO trains on: KL-shaped per-token rewards with the score on each episode's last token and the
    dense rewards on their tokens, GAE advantages (whitened) and returns."""
    mask = episodes.response_mask
    kl = kl_estimate(passes.logprobs, passes.ref_logprobs, args.kl_estimator) * mask
    token_rewards = per_token_rewards(scores, kl, beta, mask, episodes.last_index, rewards.token_rewards)
    if args.whiten_rewards:
        token_rewards = masked_whiten(token_rewards, mask, shift_mean=False)
    values = passes.values * mask
    advantages, returns = gae_advantages(token_rewards, values, mask, args.gamma, args.lam)
    return Rollout(
        input_ids=episodes.input_ids,
        attention_mask=episodes.attention_mask,
        position_ids=position_ids_from(episodes.attention_mask),
        responses=episodes.responses,
        response_mask=mask,
        logprobs=passes.logprobs,
        ref_logprobs=passes.ref_logprobs,
        values=values,
        scores=scores,
        raw_scores=rewards.totals,
        ended=episodes.ended,
        kl=kl,
        rewards=token_rewards,
        advantages=masked_whiten(advantages, mask),
        returns=returns,
        value_inputs=passes.value_inputs,
    )
