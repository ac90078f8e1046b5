"""PPO snapshots and the evaluation stage end to end on the tiny models: snapshots every N updates, the comparison
of policies (scores, win rates with intervals, KL, length, EOS rate, sampled and greedy), the over-optimization
curve with one point per snapshot, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM

import stages.eval.__main__ as eval_stage
import stages.ppo.__main__ as ppo_stage
from pipeline.errors import EXIT_USER_ERROR, PipelineError, run_main
from pipeline.metrics import read_metrics
from tests.ppo_testing import ppo_argv, run_ppo

PROMPTS = 6


@pytest.fixture(scope="module")
def ppo_run(sft_model, tmp_path_factory) -> Path:
    """A finished PPO stage of 3 updates with a snapshot after each (runs dir returned; run 'r')."""
    runs = tmp_path_factory.mktemp("eval-runs")
    run_ppo(ppo_argv(runs, "r", sft_model, snapshot_every=1, learning_rate=5e-3))
    return runs


def eval_argv(runs: Path, reference: Path, *extra: str) -> list[str]:
    return ["--runs_dir", str(runs), "--run", "r", "--reference", str(reference), "--policies", "ppo",
            "--num_prompts", str(PROMPTS), "--bootstrap_resamples", "200", *extra]  # fmt: skip


def test_snapshots_every_n_updates_hold_the_policy_adapter_alone(ppo_run, sft_model, tmp_path):
    snapshots = ppo_run / "r" / "ppo" / "snapshots"
    assert sorted(p.name for p in snapshots.iterdir()) == ["update-1", "update-2", "update-3"]
    for folder in snapshots.iterdir():
        assert sorted(p.name for p in folder.iterdir()) == [
            "README.md",
            "adapter_config.json",
            "adapter_model.safetensors",
        ]
        with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as weights:
            names = list(weights.keys())
        assert names and all("lora_" in n for n in names)
        assert not any(".value." in n or ".reward." in n or "value_head" in n for n in names)
    # The last snapshot is the final policy.
    ids = torch.randint(3, 200, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(sft_model)
        last = PeftModel.from_pretrained(base, snapshots / "update-3")(input_ids=ids).logits
        final = AutoModelForCausalLM.from_pretrained(ppo_run / "r" / "ppo" / "model")(input_ids=ids).logits
    torch.testing.assert_close(last, final, atol=1e-4, rtol=1e-4)

    run_ppo(ppo_argv(tmp_path, "every2", sft_model, snapshot_every=2))
    assert sorted(p.name for p in (tmp_path / "every2" / "ppo" / "snapshots").iterdir()) == ["update-2"]


def test_snapshots_with_full_fine_tuning_are_refused_before_loading(sft_model, tmp_path, capsys):
    options = {"use_peft": "false", "value_model": "separate", "value_adapter_layers": 0, "snapshot_every": 2}
    with pytest.raises(SystemExit) as exited:
        run_main(ppo_stage.main, ppo_argv(tmp_path, "full", sft_model, value_model_path=sft_model, **options))
    assert exited.value.code == EXIT_USER_ERROR
    assert "snapshot_every (2) saves the policy's LoRA adapter" in capsys.readouterr().err
    assert not (tmp_path / "full").exists()


def test_eval_compares_policies_and_traces_one_point_per_snapshot(ppo_run, sft_model):
    eval_stage.main(eval_argv(ppo_run, sft_model))

    folder = ppo_run / "r" / "eval"
    summary = json.loads((folder / "summary.json").read_text())
    # Scorers default to the PPO stage's reward (the proxy) and gold reward.
    assert summary["scorers"] == {"count_i": "proxy", "vader_reward": "gold"}
    assert summary["proxy"] == "count_i" and summary["gold"] == "vader_reward"
    assert summary["sampling"]["temperature"] == 0.7 and summary["sampling"]["response_length"] == 10
    reference = str(sft_model)
    for decoding in ("sampled", "greedy"):
        policies = summary["decodings"][decoding]["policies"]
        assert set(policies) == {reference, "ppo"}
        ppo = policies["ppo"]
        for scorer in ("count_i", "vader_reward"):
            duel = ppo["win_rate"][scorer]
            assert duel["wins"] + duel["ties"] + duel["losses"] == PROMPTS
            assert duel["win_rate"] == pytest.approx((duel["wins"] + 0.5 * duel["ties"]) / PROMPTS)
            assert duel["ci"][0] <= duel["win_rate"] <= duel["ci"][1]
            assert ppo["scores"][scorer]["n"] == PROMPTS
        assert 0 <= ppo["eos_rate"] <= 1 and ppo["length"]["mean"] > 0
        assert "win_rate" not in policies[reference]
    assert "kl" in summary["decodings"]["sampled"]["policies"]["ppo"]
    assert "kl" not in summary["decodings"]["greedy"]["policies"]["ppo"]  # KL is estimated from samples only
    assert (
        summary["gold_win_rate"]
        == summary["decodings"]["sampled"]["policies"]["ppo"]["win_rate"]["vader_reward"]["win_rate"]
    )

    curve = summary["overoptimization"]
    assert [p["update"] for p in curve["points"]] == [1, 2, 3] == curve["snapshots"]
    assert curve["best_gold_update"] in (1, 2, 3) and curve["start"]["kl"] == 0
    for point in curve["points"]:
        assert point["sqrt_kl"] == pytest.approx(max(point["kl"], 0) ** 0.5)
    # The last snapshot is the final policy, so its figures are those of 'ppo' under sampled decoding.
    final = summary["decodings"]["sampled"]["policies"]["ppo"]
    assert curve["points"][-1]["proxy"] == pytest.approx(final["scores"]["count_i"]["mean"])
    assert curve["points"][-1]["kl"] == pytest.approx(final["kl"]["mean"], abs=1e-4)

    samples = read_metrics(folder / "samples.jsonl")
    assert len(samples) == 2 * PROMPTS
    assert set(samples[0]["completions"]) == {reference, "ppo"}
    assert set(samples[0]["scores"]["ppo"]) == {"count_i", "vader_reward"}
    for plot in ("win_rates", "score_distributions", "overoptimization"):
        assert (folder / "plots" / f"{plot}.png").is_file(), plot
    assert (ppo_run / "r" / "report.html").is_file()  # the stage refreshed the run's report


def test_eval_of_a_policy_against_itself_ties_and_has_zero_kl(ppo_run, sft_model, tmp_path):
    same = tmp_path / "same-as-sft"
    shutil.copytree(sft_model, same)
    eval_stage.main(eval_argv(ppo_run, sft_model, "--policies", str(same), "--snapshots", "false"))

    summary = json.loads((ppo_run / "r" / "eval" / "summary.json").read_text())
    for decoding in ("sampled", "greedy"):
        figures = summary["decodings"][decoding]["policies"][str(same)]
        for duel in figures["win_rate"].values():
            assert duel["win_rate"] == 0.5 and duel["ties"] == PROMPTS and duel["ci"] == [0.5, 0.5]
    kl = summary["decodings"]["sampled"]["policies"][str(same)]["kl"]
    assert abs(kl["mean"]) < 1e-5 and kl["std"] < 1e-5
    assert summary["overoptimization"] is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--policies", "./missing/policy"], "policy path './missing/policy' does not exist"),
        (["--policies", "ppo", "--decodings", "beam"], "decodings must be some of"),
        (["--policies", "other:ppo"], "stage 'ppo' of run 'other' is not complete"),
        (["--policies", "ppo", "--gold_reward", "nomodule:f"], "cannot import module 'nomodule'"),
    ],
)
def test_eval_bad_input_is_one_message(ppo_run, sft_model, extra, message, capsys):
    with pytest.raises(SystemExit) as exited:
        run_main(eval_stage.main, eval_argv(ppo_run, sft_model, *extra))
    assert exited.value.code == EXIT_USER_ERROR
    assert message in capsys.readouterr().err


def test_eval_without_prompts_or_ppo_stage_says_what_to_set(tmp_path, sft_model):
    (tmp_path / "r").mkdir()
    with pytest.raises(PipelineError, match="no prompts to evaluate on: set --eval_dataset_name"):
        eval_stage.main(eval_argv(tmp_path, sft_model))
