"""The offline demo end to end (sft -> rm -> ppo with the shipped demo configs): the issues' acceptance figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, subprocess_env

pytestmark = pytest.mark.slow


def _run(*args: str) -> None:
    result = subprocess.run([sys.executable, *args], cwd=REPO, env=subprocess_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def _summary(runs: Path, stage: str) -> dict:
    return json.loads((runs / "demo" / stage / "summary.json").read_text())


def test_demo_sft_rm_ppo(tmp_path: Path) -> None:
    base, runs = tmp_path / "base", tmp_path / "runs"
    _run("-m", "pipeline.tiny_base", "--data", "data/demo", "--out", str(base))
    common = ["--runs_dir", str(runs), "--disable_tqdm", "true"]
    _run("-m", "stages.sft", "--config", "configs/demo/sft.yaml", "--model_name_or_path", str(base), *common)
    _run("-m", "stages.rm", "--config", "configs/demo/rm.yaml", *common)
    _run("-m", "stages.ppo", "--config", "configs/demo/ppo.yaml", *common)

    sft, rm, ppo = _summary(runs, "sft"), _summary(runs, "rm"), _summary(runs, "ppo")
    assert sft["eval_loss"] < 0.5 * sft["initial_eval_loss"]
    # 600 held-out pairs with 10% label noise (ceiling ~0.9, chance 0.5). The LoRA training is not bit-identical
    # from clone to clone (0.79-0.82 seen, on this machine type and on CI), so the bar sits below that spread.
    assert rm["eval_accuracy"] >= 0.75
    # The RM is a LoRA adapter on the SFT model, so PPO holds one base for policy, reference, value and reward,
    # and its critic starts from the reward model.
    assert rm["lora"] is True and ppo["reward_on_policy_base"] is True and ppo["critic_from_reward_model"] is True
    evaluation = ppo["evaluation"]
    # "Clearly above": the gain in mean held-out score exceeds three standard errors of the two means combined.
    for key, gain in (("score", ppo["score_gain"]), ("gold_score", ppo["gold_gain"])):
        stderr = (evaluation["policy"][f"{key}_stderr"] ** 2 + evaluation["reference"][f"{key}_stderr"] ** 2) ** 0.5
        assert gain > 3 * stderr, (key, gain, stderr)
    assert 0 < ppo["kl"] < 50
    assert (runs / "demo" / "ppo" / "plots" / "score.png").is_file()
