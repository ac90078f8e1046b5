"""Evaluation stage: how the run's policies compare on held-out prompts, and whether PPO over-optimized its reward.

Run: ``make eval RUN=<run>`` or ``python -m stages.eval --run <run> [--field value ...]`` (one process; it picks the
GPU when there is one). By default it compares the run's SFT and PPO policies on the PPO stage's held-out prompts,
sampling as PPO sampled (temperature, length, stop tokens) and greedily, under the PPO stage's reward (the proxy)
and its gold scorers; with PPO snapshots (``ppo --snapshot_every N``) it scores each one against sqrt(KL) to the
reference. Writes ``runs/<run>/eval/``: summary.json, samples.jsonl (every prompt with each policy's completion and
scores), plots/, manifest.json; then refreshes the run's report.
"""

from __future__ import annotations

import time
from pathlib import Path

from accelerate import PartialState

from pipeline.config import DataArguments, RunArguments, parse_config
from pipeline.datasets import load_prompt_data
from pipeline.errors import run_main
from pipeline.metrics import append_metrics
from pipeline.report import refresh_report
from pipeline.runs import StageDir
from reward_models.base import completion_text
from stages.eval.compare import Answers, compare, overoptimization, policy_figures
from stages.eval.config import EvalArguments, fill_from_ppo, ppo_manifest
from stages.eval.plots import plot_overoptimization, plot_score_distributions, plot_win_rates
from stages.eval.policies import (
    Decoding,
    Policy,
    decode,
    load_policy,
    resolve_policy,
    response_logprobs,
    same_vocabulary,
)
from stages.eval.scoring import Scorers, build_scorers, reward_model_loader
from stages.eval.snapshots import list_snapshots, snapshot_policies

STAGE = "eval"
SAMPLES = "samples.jsonl"


def answer(
    policy: Policy,
    reference: Policy,
    rows: dict[str, list],
    decoding: Decoding,
    greedy: bool,
    scorers: Scorers,
    seed: int,
) -> Answers:
    """``policy``'s responses to ``rows`` and what is measured on them; sampled responses also get their
    log-probabilities under the policy and the reference (for the KL), where the two share a vocabulary."""
    device = next(policy.model.parameters()).device
    episodes = decode(policy, rows, decoding, greedy, seed, device)
    answers = Answers(
        completions=[completion_text(c) for c in episodes.completions],
        scores=scorers(episodes),
        lengths=[int(n) for n in episodes.response_mask.sum(1).tolist()],
        ended=[bool(e) for e in episodes.ended.tolist()],
    )
    if greedy or policy is reference:
        return answers
    if not same_vocabulary(policy.tokenizer, reference.tokenizer):
        answers.notes.append(f"KL not measured: {policy.name} and {reference.name} have different vocabularies")
        return answers
    answers.logprobs = response_logprobs(policy.model, episodes, decoding.temperature, decoding.batch_size).tolist()
    answers.reference_logprobs = response_logprobs(
        reference.model, episodes, decoding.temperature, decoding.batch_size
    ).tolist()
    return answers


def sample_rows(rows: dict[str, list], answers: dict[str, dict[str, Answers]]) -> list[dict]:
    """One row per decoding and prompt: the prompt, each policy's completion and its scores."""
    table = []
    for decoding, by_policy in answers.items():
        for index, prompt in enumerate(rows["prompt"]):
            table.append(
                {
                    "decoding": decoding,
                    "prompt": prompt,
                    "completions": {name: a.completions[index] for name, a in by_policy.items()},
                    "scores": {
                        name: {scorer: values[index] for scorer, values in a.scores.items()}
                        for name, a in by_policy.items()
                    },
                }
            )
    return table


def headline(sections: dict[str, dict], scorers: Scorers, reference: str) -> dict:
    """The figures a person reads first, for the first compared policy under sampled decoding (else greedy): its
    gold and proxy win rates against the reference with their intervals, and its KL."""
    decoding = "sampled" if "sampled" in sections else next(iter(sections))
    policies = sections[decoding]["policies"]
    name = next(p for p in policies if p != reference)
    figures = policies[name]
    result: dict = {"compared_policy": name, "reference_policy": reference, "headline_decoding": decoding}
    for role, scorer in (("gold", scorers.gold_name), ("proxy", scorers.proxy_name)):
        if scorer is not None:
            result[f"{role}_win_rate"] = figures["win_rate"][scorer]["win_rate"]
            result[f"{role}_win_rate_ci"] = figures["win_rate"][scorer]["ci"]
    if "kl" in figures:
        result["kl"] = figures["kl"]["mean"]
    return result


def snapshot_curve(
    ppo_dir: Path, args: EvalArguments, reference: Policy, rows: dict, decoding: Decoding, scorers: Scorers
) -> dict | None:
    """The over-optimization curve of the PPO stage's snapshots (None without any): each snapshot sampled on
    ``rows`` and scored by the proxy and gold scorers, its KL to the reference estimated from those samples."""
    snapshots = list_snapshots(ppo_dir)
    if not snapshots:
        return None
    points = []
    for policy in snapshot_policies(snapshots, args.dtype, next(reference.model.parameters()).device):
        figures = policy_figures(answer(policy, reference, rows, decoding, False, scorers, args.seed))
        kl = figures.get("kl", {"mean": float("nan"), "stderr": float("nan")})
        update = int(policy.name.rsplit("-", 1)[1])
        points.append({**figures, "update": update, "kl": kl["mean"], "kl_stderr": kl["stderr"]})
        print(f"eval: snapshot {policy.name}: KL {kl['mean']:.2f}, " + _score_text(figures, scorers))
    start = policy_figures(answer(reference, reference, rows, decoding, False, scorers, args.seed))
    curve = overoptimization(points, scorers.proxy_name, scorers.gold_name, start)
    curve.update(kl_to=reference.name, prompts=len(rows["prompt"]), snapshots=[p["update"] for p in points])
    return curve


def _score_text(figures: dict, scorers: Scorers) -> str:
    return ", ".join(f"{name} {figures['scores'][name]['mean']:.3f}" for name in scorers.roles)


def main(argv: list[str] | None = None) -> None:
    """Compare the policies and write ``runs/<run>/eval/``."""
    run_args, data_args, args = parse_config((RunArguments, DataArguments, EvalArguments), argv)
    started = time.time()
    runs_dir = Path(run_args.runs_dir)
    stage = StageDir(runs_dir, run_args.run, STAGE)
    ppo_dir = StageDir(runs_dir, run_args.run, "ppo").final
    fill_from_ppo(args, data_args, ppo_manifest(ppo_dir))
    names = [args.reference, *args.policy_list]
    sources = {name: resolve_policy(name, runs_dir, run_args.run) for name in names}
    device = PartialState().device
    decoding = Decoding(
        args.temperature,
        args.response_length,
        args.max_prompt_length,
        args.stop_token,
        args.stop_token_id,
        args.batch_size,
    )
    reference = load_policy(args.reference, sources[args.reference], args.dtype, device)
    _, prompts = load_prompt_data(data_args, reference.tokenizer)
    rows = prompts.select(range(min(args.num_prompts, len(prompts))))[:]
    load_rm = reward_model_loader(args.reward_model_path, runs_dir, run_args.run, "float32", args.batch_size, device)
    scorers = build_scorers(args.reward, args.reward_weights, args.reward_kwargs, args.gold_reward, load_rm)

    work = stage.start()
    stage.write_manifest(
        {"run": run_args, "data": data_args, "eval": args},
        {f"policy {name}": source for name, source in sources.items()}
        | {"dataset": data_args.eval_dataset_name or data_args.dataset_name},
        started,
    )
    answers: dict[str, dict[str, Answers]] = {name: {} for name in args.decoding_list}
    for name in names:
        policy = reference if name == args.reference else load_policy(name, sources[name], args.dtype, device)
        for decoding_name in args.decoding_list:
            greedy = decoding_name == "greedy"
            answers[decoding_name][name] = answer(policy, reference, rows, decoding, greedy, scorers, args.seed)
        del policy
    sections = {
        name: {"policies": compare(by_policy, args.reference, args.confidence, args.bootstrap_resamples, args.seed)}
        for name, by_policy in answers.items()
    }
    curve = None
    if args.snapshots:
        snapshot_rows = prompts.select(range(min(args.snapshot_prompts or args.num_prompts, len(prompts))))[:]
        curve = snapshot_curve(ppo_dir, args, reference, snapshot_rows, decoding, scorers)

    roles = scorers.roles
    plot_win_rates(sections, args.reference, roles, work / "plots" / "win_rates.png")
    if "sampled" in answers:
        distributions = {name: a.scores for name, a in answers["sampled"].items()}
        plot_score_distributions(distributions, roles, work / "plots" / "score_distributions.png")
    if curve is not None:
        plot_overoptimization(curve, work / "plots" / "overoptimization.png")
    for row in sample_rows(rows, answers):
        append_metrics(work / SAMPLES, row)
    summary = {
        **headline(sections, scorers, args.reference),
        "reference": args.reference,
        "policies": args.policy_list,
        "sources": sources,
        "scorers": roles,
        "proxy": scorers.proxy_name,
        "gold": scorers.gold_name,
        "num_prompts": len(rows["prompt"]),
        "sampling": vars(decoding),
        "seed": args.seed,
        "confidence": args.confidence,
        "decodings": sections,
        "overoptimization": curve,
    }
    stage.finish(summary, started)
    print_summary(summary)
    refresh_report(runs_dir, run_args.run)


def print_summary(summary: dict) -> None:
    """Each compared policy's win rates and KL, per decoding, and the over-optimization finding."""
    level = round(summary["confidence"] * 100)
    for decoding, section in summary["decodings"].items():
        for name, figures in section["policies"].items():
            if name == summary["reference"]:
                continue
            duels = ", ".join(
                f"{scorer} win rate {d['win_rate']:.3f} ({level}% CI {d['ci'][0]:.3f}-{d['ci'][1]:.3f})"
                for scorer, d in figures["win_rate"].items()
            )
            kl = f"; KL {figures['kl']['mean']:.2f}" if "kl" in figures else ""
            print(f"eval ({decoding}): {name} against {summary['reference']}: {duels}{kl}")
    curve = summary["overoptimization"]
    if curve and curve.get("gold"):
        turned = "turned down" if curve["gold_turned_down"] else "did not turn down"
        print(
            f"eval: over-optimization over {len(curve['points'])} snapshots: gold best at update "
            f"{curve['best_gold_update']} (sqrt KL {curve['best_gold_sqrt_kl']:.2f}), and {turned} after it"
        )


if __name__ == "__main__":
    run_main(main)
