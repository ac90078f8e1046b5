"""Pure helpers shared by both sides of the benchmark (standard library only: it also runs in the reference venv)."""

from __future__ import annotations

import resource
import sys
from bisect import bisect_left
from collections.abc import Mapping, Sequence


def rusage_maxrss_mb(maxrss: int) -> float:
    """``ru_maxrss`` in MiB (Linux reports KiB, macOS bytes)."""
    return maxrss / (1024 * 1024) if sys.platform == "darwin" else maxrss / 1024


def own_peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return rusage_maxrss_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def update_times(records: Sequence[Mapping[str, float]]) -> list[float]:
    """Seconds since training start at the end of each update.

    Uses ``elapsed_s`` where a record has it; otherwise derives it from the cumulative ``episode`` / ``eps``
    (episodes per second since start), which is coarser because TRL logs ``eps`` as an integer.
    """
    times = []
    for record in records:
        if "elapsed_s" in record:
            times.append(float(record["elapsed_s"]))
        elif record.get("eps"):
            times.append(float(record["episode"]) / float(record["eps"]))
        else:
            raise ValueError(f"update record has neither 'elapsed_s' nor a non-zero 'eps': {dict(record)}")
    return times


def steady_episodes_per_second(records: Sequence[Mapping[str, float]]) -> float | None:
    """Episodes per second over the updates after the first (warm-up excluded); None with fewer than two updates."""
    if len(records) < 2:
        return None
    times = update_times(records)
    episodes = float(records[-1]["episode"]) - float(records[0]["episode"])
    seconds = times[-1] - times[0]
    return episodes / seconds if seconds > 0 else None


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start), same length as ``values``."""
    if window < 1:
        raise ValueError("window must be >= 1")
    averaged = []
    for index in range(len(values)):
        chunk = values[max(0, index - window + 1) : index + 1]
        averaged.append(sum(chunk) / len(chunk))
    return averaged


def score_at_kl(kls: Sequence[float], scores: Sequence[float], target_kl: float) -> float | None:
    """A run's score linearly interpolated at ``target_kl`` along its (KL, score) points ordered by KL.

    Points with equal KL are averaged. Returns None when ``target_kl`` lies outside the run's KL range:
    a score is never extrapolated.
    """
    if len(kls) != len(scores):
        raise ValueError(f"{len(kls)} KL values but {len(scores)} scores")
    by_kl: dict[float, list[float]] = {}
    for kl, score in zip(kls, scores, strict=True):
        by_kl.setdefault(float(kl), []).append(float(score))
    xs = sorted(by_kl)
    ys = [sum(by_kl[x]) / len(by_kl[x]) for x in xs]
    if not xs or not xs[0] <= target_kl <= xs[-1]:
        return None
    right = bisect_left(xs, target_kl)
    if xs[right] == target_kl:
        return ys[right]
    left = right - 1
    fraction = (target_kl - xs[left]) / (xs[right] - xs[left])
    return ys[left] + fraction * (ys[right] - ys[left])


def common_kl_grid(kls_a: Sequence[float], kls_b: Sequence[float], points: int) -> list[float]:
    """``points`` evenly spaced KL values over the range both runs covered; empty when the ranges do not overlap."""
    low = max(min(kls_a), min(kls_b))
    high = min(max(kls_a), max(kls_b))
    if points < 1 or low > high:
        return []
    if points == 1 or low == high:
        return [high]
    step = (high - low) / (points - 1)
    return [low + index * step for index in range(points)]
