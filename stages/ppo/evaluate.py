"""Held-out comparison of the trained policy with the reference (SFT) policy: score, gold score, KL, length."""

from __future__ import annotations

import math

import torch
from accelerate.utils import gather_object
from datasets import Dataset

from stages.ppo.rollout import decode_completions


def _mean_and_stderr(values: list[float]) -> tuple[float, float]:
    tensor = torch.tensor(values, dtype=torch.float64)
    stderr = tensor.std().item() / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return tensor.mean().item(), stderr


def evaluate_policies(trainer, prompts: Dataset) -> dict:
    """Sample from the policy and from the reference on ``prompts`` and compare them.

    KL is ``sum_t log pi(y_t) - log pi_ref(y_t)`` on the policy's own samples (an unbiased estimate of
    KL(pi || pi_ref) per response). Each process takes a shard of the prompts; results are gathered.
    """
    accelerator = trainer.accelerator
    rows = prompts.shard(accelerator.num_processes, accelerator.process_index, contiguous=True)[:]
    report: dict = {"num_prompts": len(prompts)}
    for name, use_reference in (("policy", False), ("reference", True)):
        input_ids, attention_mask, responses, mask, _, ended = trainer.sample(rows, use_reference=use_reference)
        completions = decode_completions(trainer.processing_class, responses, mask)
        scored = None if use_reference else trainer.forward_scores(input_ids, attention_mask, responses)
        token_scores = (
            scored.reward_scores if scored is not None else trainer.reward_model_scores(input_ids, attention_mask)
        )
        per_row = {
            "score": trainer.score_texts(rows, completions, reward_model_scores=token_scores).tolist(),
            "response_length": mask.sum(1).tolist(),
            "eos_rate": ended.float().tolist(),
        }
        if trainer.gold_fn is not None:
            per_row["gold_score"] = trainer.score_texts(
                rows, completions, gold=True, reward_model_scores=token_scores
            ).tolist()
        if scored is not None:
            per_row["kl"] = ((scored.logprobs - scored.ref_logprobs) * mask).sum(1).tolist()
        section = {}
        for key, values in per_row.items():
            mean, stderr = _mean_and_stderr(gather_object(values))
            section[key] = mean
            section[f"{key}_stderr"] = stderr
        section["examples"] = [
            {"prompt": p, "completion": c} for p, c in zip(rows["prompt"][:3], completions[:3], strict=True)
        ]
        report[name] = section
    report["score_gain"] = report["policy"]["score"] - report["reference"]["score"]
    if trainer.gold_fn is not None:
        report["gold_gain"] = report["policy"]["gold_score"] - report["reference"]["gold_score"]
    return report
