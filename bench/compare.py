"""Side-by-side benchmark of our PPO and trl 1.12.0's PPOTrainer: the orchestrator behind ``make bench``.

Each scenario runs both implementations one after the other, each in its own process with the same model, data,
batch sizes, lengths, reward and seed. Peak memory is the child's ``ru_maxrss`` taken from ``os.wait4``, so it is
measured the same way for both. Episodes per second are taken over the updates after the first (warm-up excluded).

Scenarios:
  speed       a random ~100M-parameter Llama policy and a reward model trained as a LoRA adapter on it
              (runs/bench/random-100m) in float32: episodes/s, memory
  speed-bf16  the same models loaded in bfloat16, with bf16 mixed precision, on both sides (LoRA adapters
              stay float32)
  quality     the demo's SFT policy and LoRA reward model: score reached at matched KL to the reference
Ours runs the one-base layout: policy, reference, value and the reward adapter on one copy of the base, the value
adapter and head started from the reward adapter and head (its critic starts from the reward model, as trl's does).
trl 1.12 gets the same reward model merged into a plain model, as reward model and value model. quality also runs
ours with a value adapter and head started from scratch (ours-zero-critic: --share_reward_base false, so the reward
model is a model of its own and the critic on the policy's base starts with a zero head).
Results go to runs/bench/<scenario>.json, child logs to runs/bench/logs/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.metrics import binned_scores, kl_bin_edges, phase_shares, rusage_maxrss_mb, steady_episodes_per_second
from bench.random_model import REWARD_ADAPTER_DIR, REWARD_DIR
from pipeline.errors import PipelineError, run_main
from pipeline.runs import write_json_atomic

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_PYTHON = ROOT / ".bench-venv-trl112" / "bin" / "python"
OUT = ROOT / "runs" / "bench"
TOKENIZER = ROOT / "build" / "tiny-base"
RANDOM_MODEL = OUT / "random-100m"
DEMO_PROMPTS = ROOT / "data" / "demo" / "prompts_train.jsonl"
DEMO_EVAL_PROMPTS = ROOT / "data" / "demo" / "prompts_eval.jsonl"
DEMO_SFT = ROOT / "runs" / "demo" / "sft" / "model"
DEMO_RM = ROOT / "runs" / "demo" / "rm" / "model"
DEMO_RM_ADAPTER = ROOT / "runs" / "demo" / "rm" / "adapter"
ZERO_CRITIC = "ours-zero-critic"
# Targets the product must show against trl 1.12.0 (ours / trl).
SPEED_TARGET = 1.5
MEMORY_TARGET = 0.6
# The same LoRA on both sides (the demo config's choice of modules).
LORA = {"lora_r": 16, "lora_alpha": 32, "lora_target_modules": "all-linear"}
# Ours: the value adapter and head learn at this multiple of the policy's learning rate (--value_learning_rate). A
# LoRA critic on a few top layers needs a larger step than trl 1.12's fully trained critic, which shares the policy's
# rate; 2x is the demo preset's ratio too (configs/demo/ppo.yaml).
OURS_VALUE_LR_RATIO = 2.0
CHILD_ENV = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}


@dataclass(frozen=True)
class Scenario:
    """One benchmark setting, run identically by both implementations.

    Each update samples ``episodes_per_update`` episodes and each PPO epoch takes ``num_mini_batches`` optimizer
    steps on equal minibatches; the two implementations spell that with different batch options (see
    :func:`ours_batch_flags` and :func:`trl_batch_flags`). ``settings`` are passed to both as they are.
    """

    name: str
    description: str
    policy: Path
    # The reward model merged into a plain model (trl 1.12's reward and value model), and the same reward model as a
    # LoRA adapter on the policy (ours).
    reward: Path
    reward_adapter: Path
    prompts: Path
    episodes_per_update: int
    num_mini_batches: int
    settings: dict[str, float | int | str] = field(default_factory=dict)
    # Ours only: held-out prompts and how many of them our stage evaluates on after training (trl 1.12 has no such
    # step; it runs after the last update, so it is outside episodes/s but inside the process's wall time).
    eval_prompts: Path = DEMO_EVAL_PROMPTS
    eval_prompt_count: int = 200
    # Whether SPEED_TARGET and MEMORY_TARGET apply (the speed scenarios).
    targets: bool = False
    # bf16 mixed precision on both sides (each implementation's own bf16 option).
    bf16: bool = False
    # Ours only: the value adapter on the top N decoder layers (trl 1.12 has no such option; see the README).
    value_adapter_layers: int | None = None
    # One run per seed and side; figures are pooled over the seeds (see ``pool_runs``).
    seeds: tuple[int, ...] = (0,)
    # Further runs of ours with these flags added, each reported as its own side against trl (e.g. another layout).
    ours_variants: dict[str, tuple[str, ...]] = field(default_factory=dict)


def scenarios() -> dict[str, Scenario]:
    """The benchmark's scenarios; both use LoRA r=16, alpha=32 on the policy and fp32."""
    common = {
        "num_ppo_epochs": 4,
        "temperature": 0.7,
        "kl_coef": 0.05,
        "kl_estimator": "k1",
        "missing_eos_penalty": 1.0,
        "response_length": 32,
    }
    return {
        **{
            name: Scenario(
                name=name,
                description=f"random ~100M Llama policy + a LoRA reward model on it in {dtype}, 8 episodes/update, "
                "5 updates",
                policy=RANDOM_MODEL,
                reward=RANDOM_MODEL / REWARD_DIR,
                reward_adapter=RANDOM_MODEL / REWARD_ADAPTER_DIR,
                prompts=DEMO_PROMPTS,
                episodes_per_update=8,
                num_mini_batches=1,
                settings={
                    **common,
                    "learning_rate": 1e-5,
                    "total_episodes": 40,
                    "dtype": dtype,
                },
                eval_prompt_count=16,
                targets=True,
                bf16=dtype == "bfloat16",
                value_adapter_layers=3,  # of 12
                seeds=(0, 1, 2),  # a shared 2-core machine: the median of three runs
            )
            for name, dtype in (("speed", "float32"), ("speed-bf16", "bfloat16"))
        },
        "quality": Scenario(
            name="quality",
            description="demo SFT policy + demo LoRA reward model, 16 episodes/update, 64 updates",
            policy=DEMO_SFT,
            reward=DEMO_RM,
            reward_adapter=DEMO_RM_ADAPTER,
            prompts=DEMO_PROMPTS,
            episodes_per_update=16,
            num_mini_batches=4,
            settings={
                **common,
                "learning_rate": 5e-4,
                "total_episodes": 1024,
            },
            value_adapter_layers=1,  # of the tiny base's 4
            # Single runs differ by about 0.15 in score at matched KL, and trl's reruns of the same seeds by as much;
            # six-run halves of trl's own runs differ by 0.07 (standard deviation), so twelve seeds per side.
            seeds=tuple(range(12)),
            ours_variants={ZERO_CRITIC: ("--share_reward_base", "false")},
        ),
    }


# Our options whose trl 1.12 behaviour is fixed: set to that behaviour whatever the demo config says. Adam's epsilon
# and gradient clipping too: trl 1.12 uses transformers' epsilon (1e-8) and never clips, while our config follows the
# RLHF references (1e-5, clip at 1.0), which learns LoRA adapters more slowly in the first updates.
OURS_AS_TRL112 = {
    "adam_epsilon": 1e-8,
    "max_grad_norm": 0,
    "kl_control": "fixed",
    "normalize_reward": "false",
    "whiten_rewards": "false",
    "logging_steps": 1,
    "sample_every": 0,
    "report_to": "none",
}


def _setting_flags(settings: dict[str, float | int | str]) -> list[str]:
    return [part for key, value in settings.items() for part in (f"--{key}", str(value))]


def ours_batch_flags(scenario: Scenario) -> list[str]:
    """Ours: an update is per_device x accumulation x num_mini_batches episodes; a minibatch is per_device x acc."""
    minibatch = scenario.episodes_per_update // scenario.num_mini_batches
    return _setting_flags(
        {
            "per_device_train_batch_size": minibatch,
            "gradient_accumulation_steps": 1,
            "num_mini_batches": scenario.num_mini_batches,
        }
    )


def trl_batch_flags(scenario: Scenario) -> list[str]:
    """trl 1.12: an update is per_device x accumulation episodes, split into num_mini_batches minibatches.

    Accumulation stays 1: trl 1.12 steps the optimizer inside each micro-batch, so with accumulation > 1 a
    minibatch of one micro-batch would step only every few minibatches.
    """
    return _setting_flags(
        {
            "per_device_train_batch_size": scenario.episodes_per_update,
            "gradient_accumulation_steps": 1,
            "num_mini_batches": scenario.num_mini_batches,
        }
    )


def cuda_available() -> bool:
    """Whether the children will find a GPU (transformers wants ``use_cpu`` for bf16 on a CPU)."""
    import torch

    return torch.cuda.is_available()


def ours_command(scenario: Scenario, run: str, seed: int, extra: list[str] = ()) -> list[str]:
    """Our PPO stage's command line, ``extra`` flags last (they override); it writes runs/<run>/ppo/metrics.jsonl and
    summary.json."""
    return [
        sys.executable,
        "-m",
        "stages.ppo",
        "--config",
        "configs/demo/ppo.yaml",
        "--run",
        run,
        "--sft_model_path",
        str(scenario.policy),
        "--reward_model_path",
        str(scenario.reward_adapter),
        "--dataset_name",
        str(scenario.prompts),
        "--eval_dataset_name",
        str(scenario.eval_prompts),
        "--eval_prompts",
        str(scenario.eval_prompt_count),
        *ours_batch_flags(scenario),
        *_setting_flags(scenario.settings),
        *_setting_flags({"seed": seed}),
        *_setting_flags(OURS_AS_TRL112),
        *_setting_flags({"value_learning_rate": OURS_VALUE_LR_RATIO * float(scenario.settings["learning_rate"])}),
        "--value_model",
        "adapter",
        "--use_peft",
        "true",
        *_setting_flags(LORA),
        *(["--bf16", "true", *([] if cuda_available() else ["--use_cpu", "true"])] if scenario.bf16 else []),
        *(["--value_adapter_layers", str(scenario.value_adapter_layers)] if scenario.value_adapter_layers else []),
        *extra,
    ]


def trl_command(scenario: Scenario, out: Path, seed: int, extra: list[str] = ()) -> list[str]:
    """trl 1.12.0's side (bench/trl112_ppo.py in the reference venv), ``extra`` flags last (they override); value
    model = a copy of the reward model unless ``extra`` names another with ``--value``."""
    return [
        str(REFERENCE_PYTHON),
        "-m",
        "bench.trl112_ppo",
        "--policy",
        str(scenario.policy),
        "--reward",
        str(scenario.reward),
        "--prompts",
        str(scenario.prompts),
        "--lora",
        "--lora_target_modules",
        LORA["lora_target_modules"],
        *trl_batch_flags(scenario),
        *_setting_flags(scenario.settings),
        *_setting_flags({"seed": seed}),
        *(["--bf16"] if scenario.bf16 else []),
        "--out",
        str(out),
        *extra,
    ]


@dataclass
class Measured:
    """What the parent saw of one child process."""

    returncode: int
    wall_s: float
    peak_rss_mb: float
    log: Path
    # 1-minute load average before and after: other work on the machine skews timings (note it with results).
    load: tuple[float, float]


def run_measured(command: list[str], log: Path) -> Measured:
    """Run ``command`` from the repo root with its output in ``log``; peak RSS from the kernel via ``os.wait4``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"$ {' '.join(command)}\n  (log: {log})", flush=True)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    with open(log, "w") as handle:
        child = subprocess.Popen(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, env=os.environ | CHILD_ENV)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so tell Popen not to wait again
    wall = time.perf_counter() - started
    return Measured(child.returncode, wall, rusage_maxrss_mb(usage.ru_maxrss), log, (load_before, os.getloadavg()[0]))


def read_ours(run_dir: Path) -> dict:
    """Our stage's per-update records and summary, in the shape the trl side writes."""
    metrics, summary = run_dir / "metrics.jsonl", run_dir / "summary.json"
    if not summary.exists():
        raise PipelineError(f"{summary} was not written")
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    records = [record for record in records if "objective/kl" in record and "episode" in record]
    return {
        "records": records,
        "total_episodes": records[-1]["episode"] if records else 0,
        "self_reported_peak_mb": json.loads(summary.read_text()).get("peak_memory_mb"),
    }


def read_trl(result: Path) -> dict:
    """The trl side's result file (see bench/trl112_ppo.py)."""
    data = json.loads(result.read_text())
    data["self_reported_peak_mb"] = data.get("cuda_peak_allocated_mb")
    return data


def run_side(side: str, scenario: Scenario, seed: int, extra: list[str] = (), variant: str | None = None) -> dict:
    """Run one implementation on one scenario with one seed; the result carries ``error`` instead of numbers when
    it failed. A ``variant`` of ours gets its own run folder and log."""
    tag = f"{scenario.name}-seed{seed}"
    log = OUT / "logs" / f"{tag}-{variant or side}.log"
    if side == "ours":
        run = f"bench-{tag}" + (f"-{variant}" if variant else "")
        shutil.rmtree(ROOT / "runs" / run, ignore_errors=True)  # a complete stage would otherwise be skipped
        measured = run_measured(ours_command(scenario, run, seed, extra), log)
        reader, source = read_ours, ROOT / "runs" / run / "ppo"
    else:
        source = OUT / f"{tag}-trl112.json"
        source.unlink(missing_ok=True)
        measured = run_measured(trl_command(scenario, source, seed, extra), log)
        reader = read_trl
    result = {
        "seed": seed,
        "wall_s": measured.wall_s,
        "peak_rss_mb": measured.peak_rss_mb,
        "load_average_before_after": measured.load,
        "log": str(measured.log),
    }
    if measured.returncode != 0:
        return {**result, "error": f"exit code {measured.returncode}; see {measured.log}"}
    try:
        data = reader(source)
    except (PipelineError, OSError, ValueError) as error:
        return {**result, "error": f"{error}; see {measured.log}"}
    records = data["records"]
    return {
        **result,
        "episodes_per_second": steady_episodes_per_second(records),
        "phase_shares": phase_shares(records),
        "total_episodes": data["total_episodes"],
        "self_reported_peak_mb": data["self_reported_peak_mb"],
        "records": records,
    }


def pool_runs(runs: list[dict]) -> dict:
    """One side's figures over its seeds: median episodes/s and wall time, the largest peak memory, the per-update
    records of every seed (for the score at matched KL), and the runs themselves; ``error`` if any run failed."""
    errors = [run["error"] for run in runs if "error" in run]
    if errors:
        return {"runs": runs, "error": "; ".join(errors)}

    def largest(key: str) -> float | None:
        values = [run[key] for run in runs if run.get(key) is not None]
        return max(values) if values else None

    rates = [run["episodes_per_second"] for run in runs if run["episodes_per_second"] is not None]
    return {
        "runs": runs,
        "episodes_per_second": statistics.median(rates) if rates else None,
        "wall_s": statistics.median(run["wall_s"] for run in runs),
        "peak_rss_mb": largest("peak_rss_mb"),
        "self_reported_peak_mb": largest("self_reported_peak_mb"),
        "phase_shares": {
            phase: statistics.median(run["phase_shares"].get(phase, 0.0) for run in runs)
            for phase in sorted({phase for run in runs for phase in run.get("phase_shares", {})})
        },
        "records": [record for run in runs for record in run["records"]],
    }


def ratio(ours: float | None, trl: float | None) -> float | None:
    """ours / trl, or None when either is missing or trl is zero."""
    return ours / trl if ours is not None and trl else None


def matched_kl(ours: list[dict], trl: list[dict], width: float = 2.0, min_updates: int = 3) -> dict:
    """Scores of both runs at matched KL: per KL bin of ``width`` nats over the range both runs covered, the mean
    score of each run's updates whose KL fell in it (per-update curves are noisy and KL is not monotonic, so
    updates are pooled by KL rather than read along the curve). Nothing is extrapolated.

    ``difference`` is ours - trl averaged over the bins where both runs have at least ``min_updates`` updates,
    with its standard error.
    """
    curves = {
        name: ([r["objective/kl"] for r in records], [r["objective/scores"] for r in records])
        for name, records in (("ours", ours), ("trl", trl))
    }
    edges = kl_bin_edges(curves["ours"][0], curves["trl"][0], width)
    binned = {name: binned_scores(*curve, edges) for name, curve in curves.items()}
    bins = []
    for index, (low, high) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        cells = {name: dict(zip(("mean", "stderr", "updates"), binned[name][index], strict=True)) for name in binned}
        bins.append({"kl_low": low, "kl_high": high, **cells})
    shared = [b for b in bins if min(b["ours"]["updates"], b["trl"]["updates"]) >= min_updates]
    difference = stderr = None
    if shared:
        difference = sum(b["ours"]["mean"] - b["trl"]["mean"] for b in shared) / len(shared)
        variance = sum(b["ours"]["stderr"] ** 2 + b["trl"]["stderr"] ** 2 for b in shared)
        stderr = math.sqrt(variance) / len(shared)
    return {
        "bin_width": width,
        "min_updates": min_updates,
        "bins": bins,
        "shared_bins": len(shared),
        "difference": difference,
        "difference_stderr": stderr,
    }


def _cell(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _row(label: str, ours: float | None, trl: float | None, digits: int = 2, target: str = "") -> str:
    """One table line; ``target`` like '>= 1.5' or '<= 0.6' on ours/trl is marked met or missed."""
    share = ratio(ours, trl)
    verdict = ""
    if target and share is not None:
        sign, bound = target.split()
        met = share >= float(bound) if sign == ">=" else share <= float(bound)
        verdict = f"target {target}: {'met' if met else 'MISSED'}"
    return f"{label:<30}{_cell(ours, digits):>12}{_cell(trl, digits):>12}{_cell(share):>12}  {verdict}"


def report(scenario: Scenario, sides: dict[str, dict]) -> tuple[str, dict]:
    """The printed table and the derived figures (ratios, matched-KL scores) for one scenario: each of our sides
    ('ours' and its variants) against trl. A variant's figures carry its name as a suffix."""
    trl = sides.get("trl", {})
    lines = [f"\n== {scenario.name}: {scenario.description}"]
    for name, side in sides.items():
        if "error" in side:
            lines.append(f"{name} FAILED: {side['error']}")
    speed_target = f">= {SPEED_TARGET}" if scenario.targets else ""
    memory_target = f"<= {MEMORY_TARGET}" if scenario.targets else ""
    derived = {}
    for name in [name for name in sides if name.startswith("ours")]:
        ours, suffix = sides[name], "" if name == "ours" else f"_{name}"
        derived[f"episodes_per_second_ratio{suffix}"] = ratio(
            ours.get("episodes_per_second"), trl.get("episodes_per_second")
        )
        derived[f"peak_rss_ratio{suffix}"] = ratio(ours.get("peak_rss_mb"), trl.get("peak_rss_mb"))
        lines += [
            f"{'':<30}{name:>12}{'trl 1.12.0':>12}{'ours/trl':>12}",
            _row(
                "episodes/s (after warm-up)",
                ours.get("episodes_per_second"),
                trl.get("episodes_per_second"),
                3,
                speed_target,
            ),
            _row("peak RSS (MiB, os.wait4)", ours.get("peak_rss_mb"), trl.get("peak_rss_mb"), 0, memory_target),
            _row("self-reported peak (MiB)", ours.get("self_reported_peak_mb"), trl.get("self_reported_peak_mb"), 0),
            _row("process wall time (s)", ours.get("wall_s"), trl.get("wall_s"), 1),
        ]
        if ours.get("phase_shares"):
            shares = ", ".join(f"{phase} {share:.0%}" for phase, share in ours["phase_shares"].items())
            outside = 1 - ours["phase_shares"].get("generation", 0.0)
            lines.append(
                f"{name}: update time by phase (median over seeds): {shares}; outside generation {outside:.0%}"
            )
    loads = [
        f"{name} {run['load_average_before_after'][0]:.1f}/{run['load_average_before_after'][1]:.1f}"
        for name, side in sides.items()
        for run in side.get("runs", [])
    ]
    lines.append(f"load average before/after each run (other work on the machine skews timings): {', '.join(loads)}")
    for name, side in sides.items():
        for run in side.get("runs", []):
            if run.get("records"):
                first, last = run["records"][0], run["records"][-1]
                lines.append(
                    f"{name} seed {run['seed']}: score {first['objective/scores']:.3f} -> "
                    f"{last['objective/scores']:.3f}, KL {first['objective/kl']:.3f} -> {last['objective/kl']:.3f} "
                    f"over {len(run['records'])} updates"
                )
    records = {name: side.get("records") for name, side in sides.items()}
    if scenario.name == "quality" and records.get("trl"):
        trl_runs = run_records(sides["trl"])
        for name in [name for name in records if name.startswith("ours") and records[name]]:
            matched = matched_kl(records[name], records["trl"])
            ours_runs = run_records(sides[name])
            if ours_runs and trl_runs:
                matched["run_level"] = permutation_test(ours_runs, trl_runs)
            derived["matched_kl" if name == "ours" else f"matched_kl_{name}"] = matched
            lines += matched_kl_lines(name, matched)
    return "\n".join(lines), derived


def run_records(side: dict) -> list[list[dict]]:
    """One side's per-update records, run by run (one run per seed)."""
    return [run["records"] for run in side.get("runs", []) if run.get("records")]


def permutation_test(ours_runs: list[list[dict]], trl_runs: list[list[dict]], permutations: int = 500) -> dict:
    """The run-level uncertainty of ``matched_kl``'s difference.

    Updates within a run are correlated (one early jump in KL puts several of them in a sparse bin), so the per-bin
    standard errors understate how far the difference moves from one set of runs to another. Here the runs of both
    sides are pooled and split at random into two groups of the sides' sizes, ``permutations`` times (seeded): the
    standard deviation of the differences under that split is the difference's run-level noise, and the share of
    splits at least as far from 0 as the observed difference is a two-sided p-value for "the sides differ".
    """
    observed = matched_kl([r for run in ours_runs for r in run], [r for run in trl_runs for r in run])["difference"]
    runs, generator = ours_runs + trl_runs, random.Random(0)
    null = []
    for _ in range(permutations):
        order = generator.sample(range(len(runs)), len(runs))
        first, second = order[: len(ours_runs)], order[len(ours_runs) :]
        split = matched_kl([r for i in first for r in runs[i]], [r for i in second for r in runs[i]])["difference"]
        if split is not None:
            null.append(split)
    if observed is None or len(null) < 2:
        return {"runs": (len(ours_runs), len(trl_runs)), "null_sd": None, "p_value": None}
    return {
        "runs": (len(ours_runs), len(trl_runs)),
        "null_sd": statistics.stdev(null),
        "p_value": sum(abs(d) >= abs(observed) for d in null) / len(null),
    }


def matched_kl_lines(name: str, matched: dict) -> list[str]:
    """The printed bins and difference of one ``matched_kl`` result (``name`` is our side's label)."""
    lines = [f"{name}: score by KL bin (mean +- stderr over the updates whose KL fell in it, [updates]):"]
    for point in [b for b in matched["bins"] if b["ours"]["updates"] and b["trl"]["updates"]]:
        cells = [
            f"{label} {_cell(cell['mean'], 3)} +- {_cell(cell['stderr'], 3)} [{cell['updates']}]"
            for label, cell in ((name, point["ours"]), ("trl", point["trl"]))
        ]
        lines.append(f"  KL {point['kl_low']:>5.1f}-{point['kl_high']:<5.1f} " + ", ".join(cells))
    shared = f"the {matched['shared_bins']} bins with >= {matched['min_updates']} updates on both sides"
    difference = f"{_cell(matched['difference'], 3)} +- {_cell(matched['difference_stderr'], 3)}"
    lines.append(f"{name} - trl over {shared}: {difference} (standard error from the bins)")
    run_level = matched.get("run_level")
    if run_level and run_level["null_sd"] is not None:
        lines.append(
            f"  run level ({run_level['runs'][0]} vs {run_level['runs'][1]} runs relabelled at random): the difference "
            f"moves by {run_level['null_sd']:.3f} (sd); p = {run_level['p_value']:.2f} that the sides differ this much "
            "by chance"
        )
    return lines


def ensure_inputs(scenario: Scenario, tokenizer: Path) -> None:
    """Stop before any run when an input is missing, naming what makes it; build the random model when needed."""
    for prompts in (scenario.prompts, scenario.eval_prompts):
        if not prompts.exists():
            raise PipelineError(f"{prompts} is missing: it is part of the demo data shipped in data/demo")
    if scenario.policy == RANDOM_MODEL:
        built = RANDOM_MODEL / REWARD_ADAPTER_DIR / "tokenizer.json"
        if not built.exists() or built.read_bytes() != (tokenizer / "tokenizer.json").read_bytes():
            build_random_model(tokenizer)
        return
    for path, target in ((scenario.policy, "make sft"), (scenario.reward, "make rm")):
        if not (path / "config.json").exists():
            raise PipelineError(f"{path} is missing: run `{target}` first (the {scenario.name} scenario needs it)")
    if not (scenario.reward_adapter / "adapter_config.json").exists():
        raise PipelineError(
            f"{scenario.reward_adapter} is missing: the {scenario.name} scenario needs the reward model as a LoRA "
            "adapter on the SFT model; run `make rm` (the demo RM config trains one)"
        )


def build_random_model(tokenizer: Path) -> None:
    """Build runs/bench/random-100m for ``tokenizer`` through a temporary folder."""
    partial = RANDOM_MODEL.with_name(RANDOM_MODEL.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    command = [sys.executable, "-m", "bench.random_model", "--tokenizer", str(tokenizer), "--out", str(partial)]
    command += ["--base_name", str(RANDOM_MODEL)]  # where the policy is once the folder is renamed into place
    subprocess.run(command + ["--params", "100M"], cwd=ROOT, check=True, env=os.environ | CHILD_ENV)
    shutil.rmtree(RANDOM_MODEL, ignore_errors=True)
    partial.rename(RANDOM_MODEL)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--scenarios", default="speed,speed-bf16,quality", help="comma-separated: speed, speed-bf16, quality"
    )
    parser.add_argument("--sides", default="ours,trl", help="comma-separated: ours, trl")
    parser.add_argument("--seeds", help="comma-separated seeds, one run each (default: the scenario's own)")
    parser.add_argument(
        "--no_variants", action="store_true", help="skip our variants (quality's ours-zero-critic): ours and trl only"
    )
    parser.add_argument(
        "--ours_extra",
        default="",
        help="extra flags for our stage, appended last so they override (e.g. '--value_adapter_layers 0')",
    )
    parser.add_argument(
        "--trl_extra",
        default="",
        help="extra flags for bench/trl112_ppo.py, appended last (e.g. '--value runs/demo/sft/model': a value model "
        "initialized from the policy instead of the reward model)",
    )
    parser.add_argument(
        "--tokenizer", type=Path, default=TOKENIZER, help="tokenizer folder for the speed scenario's random model"
    )
    args = parser.parse_args(argv)
    available = scenarios()
    chosen = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    sides = [name.strip() for name in args.sides.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in available] + [s for s in sides if s not in ("ours", "trl")]
    if unknown or not chosen or not sides:
        raise PipelineError(f"unknown or empty --scenarios/--sides {unknown}; scenarios: {', '.join(available)}")
    if (
        any(available[name].policy == RANDOM_MODEL for name in chosen)
        and not (args.tokenizer / "tokenizer.json").exists()
    ):
        raise PipelineError(
            f"{args.tokenizer} has no tokenizer.json: build the tiny base with "
            "`python -m pipeline.tiny_base --data data/demo --out build/tiny-base` or pass --tokenizer"
        )
    for name in chosen:
        ensure_inputs(available[name], args.tokenizer)
    if "trl" in sides:
        subprocess.run(["bash", str(ROOT / "bench" / "setup_reference_env.sh")], check=True)

    failed = False
    extra = {"ours": shlex.split(args.ours_extra), "trl": shlex.split(args.trl_extra)}
    for name in chosen:
        scenario = available[name]
        seeds = [int(seed) for seed in args.seeds.split(",")] if args.seeds else list(scenario.seeds)
        results = {side: pool_runs([run_side(side, scenario, seed, extra[side]) for seed in seeds]) for side in sides}
        if "ours" in sides and not args.no_variants:
            for variant, flags in scenario.ours_variants.items():
                runs = [run_side("ours", scenario, seed, [*extra["ours"], *flags], variant) for seed in seeds]
                results[variant] = pool_runs(runs)
        table, derived = report(scenario, results)
        print(table, flush=True)
        write_json_atomic(
            OUT / f"{name}.json",
            {
                "scenario": name,
                "description": scenario.description,
                "policy": str(scenario.policy),
                "reward": str(scenario.reward),
                "prompts": str(scenario.prompts),
                "settings": scenario.settings,
                "seeds": seeds,
                "ours_value_adapter_layers": scenario.value_adapter_layers,
                "ours_value_learning_rate_ratio": OURS_VALUE_LR_RATIO,
                "ours_extra": args.ours_extra,
                "ours_variants": scenario.ours_variants,
                "trl_extra": args.trl_extra,
                "bf16": scenario.bf16,
                "episodes_per_update": scenario.episodes_per_update,
                "num_mini_batches": scenario.num_mini_batches,
                "lora": LORA,
                "cpu_count": os.cpu_count(),
                "sides": results,
                **derived,
            },
        )
        failed = failed or any("error" in side for side in results.values())
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    run_main(main)
