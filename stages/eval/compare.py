"""From per-prompt numbers to the evaluation's figures: each policy's scores, length, EOS rate and KL, its win rate
against the reference under each scorer, and the over-optimization curve. Pure: no models here."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline.stats import describe, sampled_kl, win_rate

# A drop of the gold score after its peak counts as a turn down when it exceeds this many standard errors.
TURN_DOWN_STDERRS = 2.0


@dataclass
class Answers:
    """One policy's responses to the held-out prompts under one decoding, and what was measured on them."""

    completions: list[str]
    scores: dict[str, list[float]]  # scorer name -> one score per prompt
    lengths: list[int]  # response tokens
    ended: list[bool]  # ended with a stop token
    logprobs: list[float] | None = None  # log pi(response) under the policy, at the sampling temperature
    reference_logprobs: list[float] | None = None  # ... under the reference
    notes: list[str] = field(default_factory=list)


def policy_figures(answers: Answers) -> dict:
    """Mean and spread of each scorer and of the length, the EOS rate, and KL(policy || reference) per response
    when the log-probabilities were measured."""
    figures = {
        "scores": {name: describe(values) for name, values in answers.scores.items()},
        "length": describe(answers.lengths),
        "eos_rate": sum(answers.ended) / len(answers.ended) if answers.ended else math.nan,
    }
    if answers.logprobs is not None and answers.reference_logprobs is not None:
        figures["kl"] = sampled_kl(answers.logprobs, answers.reference_logprobs)
    if answers.notes:
        figures["notes"] = list(answers.notes)
    return figures


def compare(
    answers: dict[str, Answers], reference: str, confidence: float, resamples: int, seed: int
) -> dict[str, dict]:
    """Every policy's figures; every other policy's win rate against ``reference``, per scorer, with its bootstrap
    interval (ties count half)."""
    result = {}
    for name, policy in answers.items():
        figures = policy_figures(policy)
        if name != reference:
            figures["win_rate"] = {
                scorer: win_rate(values, answers[reference].scores[scorer], confidence, resamples, seed)
                for scorer, values in policy.scores.items()
            }
        result[name] = figures
    return result


def overoptimization(points: Sequence[dict], proxy: str, gold: str | None, start: dict | None = None) -> dict:
    """The over-optimization curve (Gao et al. 2022) from one point per snapshot, ``{update, kl, kl_stderr,
    scores: {scorer: describe}}``, in update order: proxy and gold mean against sqrt(KL), the snapshot with the best
    gold score, and whether the gold score turned down after it (its last value below the peak by more than
    ``TURN_DOWN_STDERRS`` combined standard errors). ``start``: the same for the reference policy (KL 0)."""
    curve = []
    for point in sorted(points, key=lambda p: p["update"]):
        row = {
            "update": point["update"],
            "kl": point["kl"],
            "kl_stderr": point.get("kl_stderr"),
            "sqrt_kl": math.sqrt(max(point["kl"], 0.0)),
            "proxy": point["scores"][proxy]["mean"],
            "proxy_stderr": point["scores"][proxy]["stderr"],
        }
        if gold is not None:
            row["gold"] = point["scores"][gold]["mean"]
            row["gold_stderr"] = point["scores"][gold]["stderr"]
        curve.append(row)
    result: dict = {"proxy": proxy, "gold": gold, "points": curve}
    if start is not None:
        result["start"] = {
            "kl": 0.0,
            "sqrt_kl": 0.0,
            "proxy": start["scores"][proxy]["mean"],
            **({"gold": start["scores"][gold]["mean"]} if gold is not None else {}),
        }
    if gold is not None and curve:
        best = max(range(len(curve)), key=lambda i: curve[i]["gold"])
        peak, last = curve[best], curve[-1]
        drop = peak["gold"] - last["gold"]
        noise = math.sqrt(peak["gold_stderr"] ** 2 + last["gold_stderr"] ** 2)
        result.update(
            best_gold_update=peak["update"],
            best_gold=peak["gold"],
            best_gold_sqrt_kl=peak["sqrt_kl"],
            gold_drop_after_peak=drop,
            gold_turned_down=bool(best < len(curve) - 1 and drop > TURN_DOWN_STDERRS * noise),
            proxy_rose_after_gold_peak=bool(last["proxy"] > peak["proxy"]),
        )
    return result
