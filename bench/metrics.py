"""Pure helpers shared by both sides of the benchmark (standard library only: it also runs in the reference venv)."""

from __future__ import annotations

import math
import resource
import statistics
import sys
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


def phase_shares(records: Sequence[Mapping[str, float]], prefix: str = "time/") -> dict[str, float]:
    """Share of the logged update time spent in each phase (``time/<phase>`` records), over the updates after the
    first (warm-up excluded); empty when the records carry no phases."""
    totals: dict[str, float] = {}
    for record in records[1:]:
        for key, value in record.items():
            if key.startswith(prefix):
                totals[key.removeprefix(prefix)] = totals.get(key.removeprefix(prefix), 0.0) + float(value)
    whole = sum(totals.values())
    return {phase: seconds / whole for phase, seconds in totals.items()} if whole > 0 else {}


def kl_bin_edges(kls_a: Sequence[float], kls_b: Sequence[float], width: float) -> list[float]:
    """Edges of ``width``-wide KL bins, on multiples of ``width``, over the KL range both runs covered (empty when
    the ranges do not overlap)."""
    low, high = max(min(kls_a), min(kls_b)), min(max(kls_a), max(kls_b))
    if width <= 0 or low > high:
        return []
    first, last = math.floor(low / width), math.floor(high / width) + 1
    return [index * width for index in range(first, last + 1)]


def binned_scores(
    kls: Sequence[float], scores: Sequence[float], edges: Sequence[float]
) -> list[tuple[float | None, float | None, int]]:
    """Per KL bin ``[edges[i], edges[i + 1])``: (mean score, its standard error, number of updates) of the updates
    whose KL falls in it; the mean is None for an empty bin and the standard error None below two updates."""
    if len(kls) != len(scores):
        raise ValueError(f"{len(kls)} KL values but {len(scores)} scores")
    binned = []
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = [float(s) for kl, s in zip(kls, scores, strict=True) if low <= kl < high]
        count = len(inside)
        mean = sum(inside) / count if count else None
        stderr = statistics.stdev(inside) / math.sqrt(count) if count > 1 else None
        binned.append((mean, stderr, count))
    return binned
