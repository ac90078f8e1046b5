"""A PPO run killed with SIGKILL and resumed with --resume_from_checkpoint latest ends exactly where an
uninterrupted run of the same seed ends: same weights, same per-update metrics and samples after the resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from pipeline.metrics import read_metrics
from tests.conftest import REPO, subprocess_env
from tests.ppo_testing import ppo_argv, run_ppo, tiny_reward_adapter, tiny_reward_model

pytestmark = pytest.mark.slow

UPDATES, SAVE_STEPS, KILL_AFTER = 8, 4, 5
# Adaptive KL with a short horizon moves beta every update, so a controller that restarted would show.
OPTIONS = {
    "total_episodes": 8 * UPDATES,
    "save_strategy": "steps",
    "save_steps": SAVE_STEPS,
    "sample_every": 1,
    "kl_control": "adaptive",
    "kl_target": 0.5,
    "kl_horizon": 40,
}
# Per value layout: the saved weights compared, and what a checkpoint's tensor names may be besides LoRA weights.
ONE_BASE_WEIGHTS = (
    "adapter/adapter_model.safetensors",
    "value/adapter_model.safetensors",
    "value/value_head.safetensors",
)
WEIGHTS = {
    "adapter": ONE_BASE_WEIGHTS,
    "reward-adapter": ONE_BASE_WEIGHTS,
    "separate": ("adapter/adapter_model.safetensors", "value/adapter_model.safetensors"),
}
VALUE_HEAD = {
    "adapter": "value_head.",
    "reward-adapter": "value_head.",
    "separate": "value_model.base_model.model.score.modules_to_save.",
}
# Everything an update logs that depends on the state carried across the resume (not throughput figures).
CARRIED = ("objective/scores", "objective/kl", "objective/kl_coef", "lr", "loss/policy_avg", "loss/value_avg")


def logged_updates(metrics_file: Path) -> list[int]:
    return [record["step"] for record in read_metrics(metrics_file)]


def kill_after_update(
    argv: list[str], metrics_file: Path, update: int, timeout: float = 240, module: str = "stages.ppo"
) -> None:
    """Start the stage ``module`` in a subprocess and SIGKILL it as soon as ``update`` has been logged."""
    process = subprocess.Popen(
        [sys.executable, "-m", module, *argv],
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + timeout
    try:
        while update not in (logged_updates(metrics_file) if metrics_file.exists() else []):
            assert process.poll() is None, f"the run ended before update {update}: {process.stderr.read()[-2000:]}"
            assert time.time() < deadline, "timed out waiting for the run"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL


@pytest.mark.parametrize("layout", ["adapter", "reward-adapter", "separate"])
def test_killed_and_resumed_run_matches_an_uninterrupted_run(sft_model, tiny_base, tmp_path, layout):
    """'reward-adapter': one base with the reward adapter on it and the critic started from it (not checkpointed:
    it is frozen, and loaded again from the reward model's folder); 'separate': a LoRA value model started from the
    reward model."""
    options = dict(OPTIONS)
    if layout == "separate":
        reward_model = tiny_reward_model(tiny_base, tmp_path / "rm")
        options.update(value_model="separate", value_adapter_layers=0, reward="rm", reward_model_path=reward_model)
    if layout == "reward-adapter":
        reward_adapter = tiny_reward_adapter(sft_model, tmp_path / "rm-adapter")
        options.update(reward="rm", reward_model_path=reward_adapter, value_adapter_layers=1)
    uninterrupted = run_ppo(ppo_argv(tmp_path, "whole", sft_model, **options))

    argv = ppo_argv(tmp_path, "killed", sft_model, **options)
    work = tmp_path / "killed" / ".ppo.partial"
    kill_after_update(argv, work / "metrics.jsonl", KILL_AFTER)
    checkpoints = sorted(p.name for p in (work / "checkpoints").iterdir())
    assert checkpoints == [f"checkpoint-{SAVE_STEPS}"], checkpoints
    # Checkpoints hold what PPO trains (adapters, value head), not the frozen base weights.
    saved = load_file(work / "checkpoints" / f"checkpoint-{SAVE_STEPS}" / "model.safetensors")
    assert saved and all("lora_" in name or name.startswith(VALUE_HEAD[layout]) for name in saved)
    assert not any(".reward." in name for name in saved)
    assert any(name.startswith(VALUE_HEAD[layout]) for name in saved)

    resumed = run_ppo([*argv, "--resume_from_checkpoint", "latest"])

    final_whole, final_killed = tmp_path / "whole" / "ppo", tmp_path / "killed" / "ppo"
    for name in WEIGHTS[layout]:
        expected, actual = load_file(final_whole / name), load_file(final_killed / name)
        assert expected.keys() == actual.keys(), name
        worst = max((expected[k] - actual[k]).abs().max().item() for k in expected)
        assert worst <= 1e-5, (name, worst)
    # Updates logged by the killed run after its checkpoint are redone, not duplicated.
    assert [r["step"] for r in resumed] == list(range(1, UPDATES + 1))
    for before, after in zip(uninterrupted, resumed, strict=True):
        for key in CARRIED:
            assert after[key] == pytest.approx(before[key], rel=1e-6, abs=1e-7), (after["step"], key)
    betas = [r["objective/kl_coef"] for r in resumed]
    assert len(set(betas[SAVE_STEPS:])) == UPDATES - SAVE_STEPS, "beta did not move after the resume"
    samples = [(s["update"], s["completion"]) for s in read_metrics(final_killed / "samples.jsonl")]
    assert samples == [(s["update"], s["completion"]) for s in read_metrics(final_whole / "samples.jsonl")]
