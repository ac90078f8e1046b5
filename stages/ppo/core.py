"""PPO math for language models: masked statistics, EOS truncation, KL estimators, reward shaping, GAE and losses.

All tensors are ``[batch, T]`` over the response tokens only (prompt excluded). ``mask`` is 1 for real response
tokens (up to and including the first EOS) and 0 after; it is a 0/1 float or bool tensor.
"""

from __future__ import annotations

import torch
from torch import Tensor

KL_ESTIMATORS = ("k1", "k2", "k3")
SCORE_NORMALIZATIONS = ("none", "batch", "group")
WHITEN_EPS = 1e-8


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """``sum(values * mask) / sum(mask)`` over all entries, or along ``dim``; an empty mask gives 0, not NaN."""
    mask = mask.to(values.dtype)
    # where() rather than values * mask, so NaN/inf in masked-out entries cannot leak into the result.
    kept = torch.where(mask.bool(), values, torch.zeros_like(values))
    if dim is None:
        return kept.sum() / mask.sum().clamp(min=1)
    return kept.sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of the masked entries; ``unbiased`` applies Bessel's correction. Fewer than two entries give 0."""
    centered = values - masked_mean(values, mask)
    variance = masked_mean(centered**2, mask)
    if unbiased:
        count = mask.to(values.dtype).sum()
        # n / (n - 1), with n = 1 leaving the (zero) variance unchanged instead of dividing by zero.
        variance = variance * count / (count - 1).clamp(min=1)
    return variance


def masked_whiten(values: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """``(x - mean) / sqrt(var + 1e-8)`` over the masked entries; masked-out entries are 0.

    ``shift_mean=False`` adds the mean back, i.e. only rescales (reward whitening "without shifting the mean").
    """
    mean = masked_mean(values, mask)
    whitened = (values - mean) * torch.rsqrt(masked_var(values, mask) + WHITEN_EPS)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """``1 - Var(returns - values) / Var(returns)`` over the masked entries: how much of the return the critic
    predicts (1 perfect, 0 no better than a constant, negative worse). Constant returns give 0."""
    returns_var = masked_var(returns, mask, unbiased=False)
    residual_var = masked_var(returns - values, mask, unbiased=False)
    explained = 1 - residual_var / returns_var.clamp(min=WHITEN_EPS)
    return torch.where(returns_var > 0, explained, torch.zeros_like(explained))


def truncate_after_eos(
    responses: Tensor, eos_token_id: int | list[int], pad_token_id: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Cut each response after its first EOS.

    Returns ``(responses, mask, last_index, ended)``: tokens after the first EOS replaced by ``pad_token_id``;
    a float mask, 1 up to and including the first EOS (all 1 when there is none); the index of the first EOS
    (``T - 1`` when there is none); and whether an EOS was found. Pad is an ordinary token here: a response made
    only of pad tokens has no EOS, so it keeps a full mask and ``ended`` False (the missing-EOS penalty applies).
    """
    eos_ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    if responses.dim() != 2 or responses.size(1) == 0:
        raise ValueError(f"responses must be [batch, T] with T >= 1, got shape {tuple(responses.shape)}")
    if not eos_ids:
        raise ValueError("eos_token_id is an empty list; give at least one EOS token id")
    if pad_token_id in eos_ids:
        raise ValueError(
            f"pad_token_id {pad_token_id} is also an EOS id; use a pad token distinct from EOS, "
            "otherwise the EOS is masked and the policy never learns to stop"
        )
    is_eos = torch.isin(responses, torch.tensor(eos_ids, device=responses.device))
    ended = is_eos.any(dim=1)
    # argmax returns the first maximal index, i.e. the first EOS.
    first_eos = is_eos.to(torch.uint8).argmax(dim=1)
    last_index = torch.where(ended, first_eos, torch.full_like(first_eos, responses.size(1) - 1))
    positions = torch.arange(responses.size(1), device=responses.device)
    after_end = positions.unsqueeze(0) > last_index.unsqueeze(1)
    return responses.masked_fill(after_end, pad_token_id), (~after_end).float(), last_index, ended


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, kind: str) -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from sampled-token logprobs, with ``r = ref_logprobs - logprobs``.

    ``k1 = -r`` (unbiased, can be negative), ``k2 = r**2 / 2``, ``k3 = exp(r) - 1 - r`` (unbiased, >= 0).
    """
    log_ratio = ref_logprobs - logprobs
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return log_ratio**2 / 2
    if kind == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; expected one of {', '.join(KL_ESTIMATORS)}")


def zscore(scores: Tensor, population: Tensor, eps: float) -> Tensor:
    """``(scores - mean) / (std + eps)`` with the mean and (unbiased) standard deviation of ``population``; a
    population of one has standard deviation 0."""
    std = population.std() if population.numel() > 1 else torch.zeros((), device=population.device)
    return (scores - population.mean()) / (std + eps)


def group_zscore(scores: Tensor, group_size: int, eps: float) -> Tensor:
    """:func:`zscore` within consecutive groups of ``group_size`` scores (the responses to one prompt)."""
    groups = scores.view(-1, group_size)
    return torch.stack([zscore(group, group, eps) for group in groups]).view(-1)


def per_token_rewards(
    scores: Tensor, kl: Tensor, beta: float, mask: Tensor, last_index: Tensor, token_rewards: Tensor | None = None
) -> Tensor:
    """``-beta * kl`` on real tokens (0 elsewhere), plus ``scores[i]`` at ``[i, last_index[i]]`` (the episode's last
    token: its EOS), plus ``token_rewards`` (per-token rewards from dense sources) where given."""
    rewards = torch.where(mask.bool(), -beta * kl, torch.zeros_like(kl))
    if token_rewards is not None:
        rewards = rewards + torch.where(mask.bool(), token_rewards.to(rewards.dtype), torch.zeros_like(rewards))
    rows = torch.arange(rewards.size(0), device=rewards.device)
    return rewards.index_put((rows, last_index), scores.to(rewards.dtype), accumulate=True)


def gae_advantages(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation over the response, bootstrapping V = 0 after the last real token.

    Returns ``(advantages, returns)`` with ``returns = advantages + values``; both are 0 where ``mask`` is 0.
    """
    keep = mask.bool()
    rewards = torch.where(keep, rewards, torch.zeros_like(rewards))
    values = torch.where(keep, values, torch.zeros_like(values))
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    deltas = rewards + gamma * next_values - values
    advantages = torch.zeros_like(deltas)
    running = torch.zeros_like(deltas[:, 0])
    for t in reversed(range(deltas.size(1))):
        running = torch.where(keep[:, t], deltas[:, t] + gamma * lam * running, torch.zeros_like(running))
        advantages[:, t] = running
    returns = torch.where(keep, advantages + values, torch.zeros_like(values))
    return advantages, returns


def policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_range: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate loss: masked mean of ``max(-A * ratio, -A * clamp(ratio, 1 - c, 1 + c))``.

    Stats (detached): ``clipfrac`` (share of tokens where the clipped term is larger), ``approxkl``
    (``0.5 * mean((logprobs - old_logprobs)**2)``) and ``ratio`` (mean ratio).
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).to(loss.dtype), mask),
            "approxkl": 0.5 * masked_mean(log_ratio**2, mask),
            "ratio": masked_mean(ratio, mask),
        }
    return loss, stats


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_range: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss: ``0.5 *`` masked mean of ``max((v - R)**2, (old_v + clamp(v - old_v, -c, c) - R)**2)``.

    Stats (detached): ``clipfrac`` (share of tokens where the clipped term is larger).
    """
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped_loss > unclipped_loss).to(loss.dtype), mask)}
    return loss, stats
