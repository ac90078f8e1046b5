"""The PPO update's policy objective: the clipped surrogate from recomputed logprobs, and an entropy bonus that is
built with gradients only when it is part of the loss."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from stages.ppo.config import PPOArguments
from stages.ppo.core import policy_loss
from stages.ppo.sampling import token_logprobs
from stages.ppo.update import policy_objective

B, T, VOCAB = 4, 6, 500


def minibatch() -> tuple[torch.Tensor, SimpleNamespace]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(B, T, VOCAB, generator=generator, requires_grad=True)
    responses = torch.randint(0, VOCAB, (B, T), generator=generator)
    batch = SimpleNamespace(
        responses=responses,
        logprobs=token_logprobs(logits.detach(), responses, 0.7) + 0.01 * torch.randn(B, T, generator=generator),
        advantages=torch.randn(B, T, generator=generator),
        response_mask=torch.ones(B, T),
    )
    return logits, batch


def saved_for_backward(compute) -> tuple[int, torch.Tensor]:
    """Bytes autograd keeps for the backward of ``compute()``, and its result."""
    saved = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = compute()
    return sum(saved), result


def test_entropy_keeps_nothing_for_backward_when_it_is_not_in_the_loss():
    """Bug: the entropy was built with gradients even at entropy_coef 0, keeping a float32 copy of the full logits
    (B x T x vocabulary) for a backward that never used it."""
    logits, batch = minibatch()
    args = PPOArguments(output_dir="unused", temperature=0.7, entropy_coef=0.0)
    bare, surrogate = saved_for_backward(
        lambda: policy_loss(
            token_logprobs(logits, batch.responses, 0.7), batch.logprobs, batch.advantages, batch.response_mask, 0.2
        )[0]
    )
    with_entropy_logged, (loss, stats) = saved_for_backward(lambda: policy_objective(logits, batch, args, None))
    assert with_entropy_logged == bare, (with_entropy_logged, bare)
    torch.testing.assert_close(loss, surrogate)
    assert stats["policy/entropy_avg"] > 0 and not stats["policy/entropy_avg"].requires_grad

    bonus = PPOArguments(output_dir="unused", temperature=0.7, entropy_coef=0.01)
    with_bonus, (loss_with_bonus, _) = saved_for_backward(lambda: policy_objective(logits, batch, bonus, None))
    assert with_bonus >= bare + B * T * VOCAB * 4  # at least one more float32 copy of the logits
    torch.testing.assert_close(loss_with_bonus, surrogate - 0.01 * stats["policy/entropy_avg"])
    (gradient,) = torch.autograd.grad(loss_with_bonus - loss, logits)
    assert gradient.abs().sum() > 0  # the bonus does reach the logits when it is in the loss
