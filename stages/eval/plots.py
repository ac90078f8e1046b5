"""The evaluation's pictures: win rates with their intervals, score distributions, the over-optimization curve."""

from __future__ import annotations

from pathlib import Path

from pipeline.metrics import pyplot, save_figure


def plot_win_rates(decodings: dict[str, dict], reference: str, roles: dict[str, str], path: Path) -> Path | None:
    """One bar per (policy, scorer) and panel per decoding: the win rate against ``reference`` with its interval;
    the dashed line is a tie (0.5)."""
    panels = {
        decoding: [
            (f"{policy}\n{scorer} ({roles.get(scorer, '')})", duel["win_rate"], duel["ci"])
            for policy, figures in section["policies"].items()
            for scorer, duel in figures.get("win_rate", {}).items()
        ]
        for decoding, section in decodings.items()
    }
    panels = {name: bars for name, bars in panels.items() if bars}
    if not panels:
        return None
    plt = pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for axis, (decoding, bars) in zip(axes[0], panels.items(), strict=True):
        labels, rates, intervals = zip(*bars, strict=True)
        below = [rate - low for rate, (low, _) in zip(rates, intervals, strict=True)]
        above = [high - rate for rate, (_, high) in zip(rates, intervals, strict=True)]
        axis.bar(range(len(rates)), rates, yerr=[below, above], capsize=4, color="tab:blue", alpha=0.8)
        for x, rate in enumerate(rates):
            axis.annotate(f"{rate:.2f}", (x, rate), textcoords="offset points", xytext=(8, 2), fontsize=8)
        axis.axhline(0.5, color="grey", linestyle="--", label="tie with the reference")
        axis.set_xticks(range(len(rates)), labels, fontsize=7)
        axis.set_ylim(0, 1)
        axis.set_ylabel(f"win rate against {reference}")
        axis.set_title(f"{decoding} decoding", fontsize=10)
        axis.legend(fontsize=7, loc="lower right")
    return save_figure(figure, path)


def plot_score_distributions(answers: dict[str, dict[str, list[float]]], roles: dict[str, str], path: Path) -> Path:
    """One panel per scorer with each policy's histogram of scores (``{policy: {scorer: scores}}``)."""
    scorers = list(roles)
    plt = pyplot()
    figure, axes = plt.subplots(1, len(scorers), figsize=(5 * len(scorers), 3.6), squeeze=False)
    for axis, scorer in zip(axes[0], scorers, strict=True):
        for policy, scores in answers.items():
            axis.hist(scores[scorer], bins=30, alpha=0.5, label=policy)
        axis.set_xlabel(f"{scorer} ({roles[scorer]})")
        axis.set_ylabel("responses")
        axis.legend(fontsize=8)
    figure.suptitle("Scores of sampled responses to the held-out prompts", fontsize=10)
    return save_figure(figure, path)


def plot_overoptimization(curve: dict, path: Path) -> Path:
    """Proxy (top) and gold (bottom) mean score of each snapshot, with standard errors, against sqrt(KL to the
    reference) on the left, each point labelled with its update, and against the update on the right; the best gold
    snapshot is starred, the reference is at 0."""
    points = curve["points"]
    panels = [("proxy", curve["proxy"], "tab:blue")]
    if curve["gold"]:
        panels.append(("gold", curve["gold"], "tab:orange"))
    plt = pyplot()
    figure, axes = plt.subplots(len(panels), 2, figsize=(11, 3.2 * len(panels)), sharex="col", squeeze=False)
    updates = [0] + [p["update"] for p in points]
    for row, (role, scorer, color) in enumerate(panels):
        start = [curve["start"][role]] if "start" in curve else []
        for column, xs in enumerate(([p["sqrt_kl"] for p in points], updates[1:])):
            axis = axes[row, column]
            ys, errors = [p[role] for p in points], [p[f"{role}_stderr"] for p in points]
            axis.errorbar(xs, ys, yerr=errors, marker="o", color=color, capsize=3)
            if column == 0:
                for p, x, y in zip(points, xs, ys, strict=True):
                    axis.annotate(str(p["update"]), (x, y), textcoords="offset points", xytext=(3, 5), fontsize=7)
            if start:
                axis.plot([0.0], start, marker="s", color="grey", linestyle="none", label="reference")
            if role == "gold" and "best_gold_update" in curve:
                best_x = curve["best_gold_sqrt_kl"] if column == 0 else curve["best_gold_update"]
                label = f"best gold: update {curve['best_gold_update']}"
                axis.plot([best_x], [curve["best_gold"]], marker="*", markersize=16, color="red", linestyle="none",
                          label=label)  # fmt: skip
            axis.set_ylabel(f"{role}: {scorer}")
            axis.grid(alpha=0.3)
            axis.legend(fontsize=8, loc="lower right")
    axes[-1, 0].set_xlabel("sqrt(KL(policy || reference)) per response, nats^0.5")
    axes[-1, 1].set_xlabel("PPO update of the snapshot")
    axes[0, 0].set_title("Over-optimization: score against sqrt(KL), each point a snapshot", fontsize=10)
    axes[0, 1].set_title("The same snapshots in training order", fontsize=10)
    return save_figure(figure, path)
