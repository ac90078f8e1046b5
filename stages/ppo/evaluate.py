"""Held-out comparison of the trained policy with the reference (SFT) policy: score, gold score, KL, length."""

from __future__ import annotations

import math

import torch
from accelerate.utils import gather_object
from datasets import Dataset

from reward_models.base import Episodes
from stages.ppo.modeling import last_logits, position_ids_from
from stages.ppo.sampling import token_logprobs


def _mean_and_stderr(values: list[float]) -> tuple[float, float]:
    tensor = torch.tensor(values, dtype=torch.float64)
    stderr = tensor.std().item() / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return tensor.mean().item(), stderr


@torch.no_grad()
def sequence_kl(trainer, episodes: Episodes) -> torch.Tensor:
    """``sum_t log pi(y_t) - log pi_ref(y_t)`` of each episode under the sampling distribution: on the policy's own
    samples, an unbiased estimate of KL(pi || pi_ref) per response."""
    model, args, rules = trainer.unwrapped(), trainer.args, trainer.sampler.rules
    mask, responses = episodes.response_mask, episodes.responses
    batch = (episodes.input_ids, episodes.attention_mask, position_ids_from(episodes.attention_mask))
    keep = responses.shape[1] + 1
    with trainer.computing():
        logprobs = token_logprobs(model.policy_logits(*batch, keep)[:, :-1], responses, args.temperature, rules)
        with model.reference_policy() as reference:
            ref_logits = last_logits(reference, *batch, keep)[:, :-1]
        ref_logprobs = token_logprobs(ref_logits, responses, args.temperature, rules)
    return ((logprobs - ref_logprobs) * mask).sum(1)


def evaluate_policies(trainer, prompts: Dataset) -> dict:
    """Sample from the policy and from the reference on ``prompts`` and compare them. Each process takes a shard of
    the prompts; results are gathered."""
    accelerator = trainer.accelerator
    rows = prompts.shard(accelerator.num_processes, accelerator.process_index, contiguous=True)[:]
    report: dict = {"num_prompts": len(prompts)}
    for name, reference in (("policy", False), ("reference", True)):
        episodes = trainer.sample(rows, reference=reference)
        per_row = {
            "score": trainer.score(episodes).totals.tolist(),
            "response_length": episodes.response_mask.sum(1).tolist(),
            "eos_rate": episodes.ended.float().tolist(),
        }
        gold = trainer.score(episodes, gold=True)
        if gold is not None:
            per_row["gold_score"] = gold.totals.tolist()
        if not reference:
            per_row["kl"] = sequence_kl(trainer, episodes).tolist()
        section = {}
        for key, values in per_row.items():
            mean, stderr = _mean_and_stderr(gather_object(values))
            section[key] = mean
            section[f"{key}_stderr"] = stderr
        section["examples"] = [
            {"prompt": p, "completion": c} for p, c in zip(episodes.prompts[:3], episodes.completions[:3], strict=True)
        ]
        report[name] = section
    report["score_gain"] = report["policy"]["score"] - report["reference"]["score"]
    if trainer.gold is not None:
        report["gold_gain"] = report["policy"]["gold_score"] - report["reference"]["gold_score"]
    return report
