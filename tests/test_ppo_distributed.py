"""The PPO stage under ``accelerate launch`` with two CPU processes (DDP over gloo): it completes, the two
processes end with identical trained weights, and logged metrics cover both processes; in both value layouts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipeline.metrics import read_metrics
from tests.conftest import REPO, subprocess_env
from tests.ppo_testing import ppo_argv, tiny_reward_adapter, tiny_reward_model

pytestmark = pytest.mark.slow

PROCESSES, LOCAL_BATCH, UPDATES = 2, 8, 2


@pytest.mark.parametrize("layout", ["adapter", "reward-adapter", "separate"])
def test_two_processes_stay_in_sync_and_metrics_cover_both(sft_model, tiny_base, tmp_path, layout):
    """'adapter': one base; 'reward-adapter': one base with the reward adapter on it and the critic started from it;
    'separate': a LoRA value model started from the reward model."""
    options = {}
    if layout == "separate":
        reward_model = tiny_reward_model(tiny_base, tmp_path / "rm")
        options = {
            "value_model": "separate",
            "value_adapter_layers": 0,
            "reward": "rm",
            "reward_model_path": reward_model,
        }
    if layout == "reward-adapter":
        reward_adapter = tiny_reward_adapter(sft_model, tmp_path / "rm-adapter")
        options = {"reward": "rm", "reward_model_path": reward_adapter, "value_adapter_layers": 1}
    launch = [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1"),
        *("--num_processes", str(PROCESSES), "--mixed_precision", "no", "--dynamo_backend", "no"),
    ]
    argv = ppo_argv(
        tmp_path,
        "r",
        sft_model,
        total_episodes=PROCESSES * LOCAL_BATCH * UPDATES,
        save_strategy="steps",
        save_steps=1,
        save_total_limit=1,
        **options,
    )
    records_dir = tmp_path / "records"
    records_dir.mkdir()
    result = subprocess.run(
        [*launch, "-m", "tests.ppo_testing", *argv],
        cwd=REPO,
        env={**subprocess_env(), "PPO_RECORD_DIR": str(records_dir)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]

    ranks = [json.loads((records_dir / f"rank-{i}.json").read_text()) for i in range(PROCESSES)]
    assert [r["process_index"] for r in ranks] == list(range(PROCESSES))
    assert all(r["num_processes"] == PROCESSES and r["wrapped"] == "DistributedDataParallel" for r in ranks)
    assert ranks[0]["trainable_after"] != ranks[0]["trainable_before"], "training changed nothing"
    assert len({r["trainable_after"] for r in ranks}) == 1, "the processes' trained weights differ"

    final = tmp_path / "r" / "ppo"
    metrics = read_metrics(final / "metrics.jsonl")
    assert [m["episode"] for m in metrics] == [PROCESSES * LOCAL_BATCH * (u + 1) for u in range(UPDATES)]
    local = [[r["local_rollouts"][u] for r in ranks] for u in range(UPDATES)]
    assert all(rollout["episodes"] == LOCAL_BATCH for per_rank in local for rollout in per_rank)
    # Scores differ between the processes in some update, so the mean below is not one process's figure.
    assert any(len({rollout["scores"] for rollout in per_rank}) > 1 for per_rank in local)
    for logged, per_rank in zip(metrics, local, strict=True):
        assert logged["objective/scores"] == pytest.approx(sum(r["scores"] for r in per_rank) / PROCESSES, abs=1e-6)
        assert logged["val/num_eos_tokens"] == pytest.approx(sum(r["num_eos"] for r in per_rank))

    checkpoint = final / "checkpoints" / f"checkpoint-{UPDATES}"
    assert all((checkpoint / f"random_states_{i}.pkl").is_file() for i in range(PROCESSES))
    summary = json.loads((final / "summary.json").read_text())
    assert summary["updates"] == UPDATES and summary["evaluation"]["num_prompts"] == 8
