"""The RM stage (stages/rm.py) from a tiny SFT run: run folder, held-out accuracy, LoRA, margins, two processes."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from pipeline.config import DataArguments
from pipeline.datasets import load_preference_data
from pipeline.errors import PipelineError
from reward_models.learned import LearnedReward
from stages import rm, sft
from tests.conftest import DEMO_DATA, REPO, subprocess_env
from tests.stage_runs import PNG_MAGIC, complete_stages, read_json, read_metrics, rm_args, sft_args


@pytest.fixture(scope="module")
def runs(tiny_base: Path, tmp_path_factory) -> Path:
    """A runs folder whose run 'base' holds a tiny SFT stage (256 demo rows, one epoch)."""
    runs = tmp_path_factory.mktemp("runs")
    sft.main(sft_args(runs, "base", tiny_base))
    return runs


@pytest.fixture(scope="module")
def sft_model(runs: Path) -> Path:
    return runs / "base" / "sft" / "model"


@pytest.fixture(scope="module")
def default_rm(runs: Path) -> Path:
    """An RM run that finds its base itself: run 'demo' has the SFT stage and no --model_name_or_path is given."""
    shutil.copytree(runs / "base" / "sft", runs / "demo" / "sft")
    rm.main(rm_args(runs, "demo"))
    return runs / "demo" / "rm"


def held_out_pairs(count: int):
    _, rows = load_preference_data(
        DataArguments(
            dataset_name=str(DEMO_DATA / "prefs_train.jsonl"),
            eval_dataset_name=str(DEMO_DATA / "prefs_eval.jsonl"),
            max_eval_samples=count,
        )
    )
    return rows


def accuracy_of(model_dir: Path, count: int) -> float:
    """Held-out pairwise accuracy of a saved reward model, scored independently of the stage."""
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    rows = held_out_pairs(count)
    reward = LearnedReward(model, AutoTokenizer.from_pretrained(model_dir), max_length=128)
    return (reward(rows["prompt"], rows["chosen"]) > reward(rows["prompt"], rows["rejected"])).float().mean().item()


def test_default_base_is_the_runs_sft_model(default_rm: Path, sft_model: Path) -> None:
    manifest = read_json(default_rm / "manifest.json")
    assert manifest["inputs"]["base_model"]["path"] == str(default_rm.parent / "sft" / "model")
    assert manifest["config"]["model"]["model_name_or_path"] is None


def test_rm_folder_summary_and_plots(default_rm: Path) -> None:
    """The demo config trains a LoRA adapter (which PPO puts on the policy's base) and merges it into model/."""
    assert sorted(path.name for path in default_rm.iterdir()) == [
        "adapter",
        "manifest.json",
        "metrics.jsonl",
        "model",
        "plots",
        "summary.json",
    ]
    plots = ("reward_distribution", "loss", "accuracy", "calibration", "accuracy_by_margin", "reward_vs_length")
    for plot in plots:
        assert (default_rm / "plots" / f"{plot}.png").read_bytes().startswith(PNG_MAGIC)
    summary = read_json(default_rm / "summary.json")
    assert (summary["train_rows"], summary["eval_rows"], summary["lora"]) == (256, 64, True)
    targets = set(read_json(default_rm / "adapter" / "adapter_config.json")["target_modules"])
    assert "embed_tokens" in targets and "q_proj" in targets
    assert 0.0 <= summary["eval_accuracy"] <= 1.0 and summary["eval_reward_std"] > 0
    assert [path.name for path in default_rm.parent.iterdir() if path.name.startswith(".")] == []


def test_rm_summary_diagnoses_the_held_out_pairs(default_rm: Path) -> None:
    summary = read_json(default_rm / "summary.json")
    diagnostics = summary["diagnostics"]
    low, high = summary["eval_accuracy_ci95"]
    assert low < summary["eval_accuracy"] == diagnostics["accuracy"] < high and diagnostics["pairs"] == 64
    assert summary["eval_calibration_error"] == diagnostics["calibration"]["ece"]
    assert sum(bucket["count"] for bucket in diagnostics["calibration"]["bins"]) == 64
    assert sum(bucket["count"] for bucket in diagnostics["accuracy_by_predicted_margin"]) == 64
    # The demo pairs carry their gold judge's scores: accuracy by the true margin, and against the gold order.
    assert sum(bucket["count"] for bucket in diagnostics["accuracy_by_true_margin"]) == 64
    assert 0 <= diagnostics["true_order_accuracy"] <= 1
    length = diagnostics["length_correlation"]
    assert length["unit"] == "characters" and -1 <= length["pearson"] <= 1
    assert summary["warnings"] == ([length["warning"]] if length["warning"] else [])


def test_a_run_repeats_exactly(runs: Path, sft_model: Path) -> None:
    """The score head starts random: it is drawn after seeding, so the same seed gives the same reward model."""
    for run in ("seed-a", "seed-b"):
        rm.main(rm_args(runs, run, "--model_name_or_path", str(sft_model), train_rows=32, eval_rows=16))
    first, second = (load_file(runs / run / "rm" / "model" / "model.safetensors") for run in ("seed-a", "seed-b"))
    assert first.keys() == second.keys() and all(torch.equal(first[name], second[name]) for name in first)


def test_a_gold_score_that_is_no_number_is_named_before_training(runs: Path, sft_model: Path, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (DEMO_DATA / "prefs_eval.jsonl").read_text().splitlines()[:8]]
    rows[3]["gold_rejected"] = "high"
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    extra = ["--model_name_or_path", str(sft_model), "--eval_dataset_name", str(held_out)]
    message = r"held_out.jsonl, held-out row 3, column 'gold_rejected' should be a number"
    with pytest.raises(PipelineError, match=message):
        rm.main(rm_args(runs, "bad-gold", *extra))
    assert not (runs / "bad-gold").exists()


def test_saved_reward_model_reproduces_the_summary(default_rm: Path) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(default_rm / "model")
    tokenizer = AutoTokenizer.from_pretrained(default_rm / "model")
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert accuracy_of(default_rm / "model", 64) == pytest.approx(
        read_json(default_rm / "summary.json")["eval_accuracy"]
    )


def test_reward_model_learns_the_demo_preferences(runs: Path, sft_model: Path) -> None:
    # 2048 pairs, one epoch of 64 steps, the demo config's LoRA adapter. Measured held-out accuracy on 256 pairs:
    # 0.65-0.71 over seeds 0-2 (0.70-0.74 with a full fine-tune).
    extra = ["--model_name_or_path", str(sft_model), "--learning_rate", "1e-3", "--per_device_train_batch_size", "32"]
    rm.main(rm_args(runs, "learn", *extra, train_rows=2048, eval_rows=256))
    stage = runs / "learn" / "rm"
    summary = read_json(stage / "summary.json")
    assert summary["eval_accuracy"] > 0.62
    assert summary["eval_margin"] > 0
    # TRL's own evaluation of the same pairs agrees with the stage's (up to float ties).
    trl_accuracy = [record["eval_accuracy"] for record in read_metrics(stage) if "eval_accuracy" in record][-1]
    assert abs(trl_accuracy - summary["eval_accuracy"]) <= 2 / 256


@pytest.mark.parametrize("quantized", [False, True], ids=["lora", "qlora"])
def test_lora_reward_model_saves_score_head_and_merges(quantized: bool, runs: Path, sft_model: Path) -> None:
    extra = ["--model_name_or_path", str(sft_model), "--use_peft", "true", "--learning_rate", "3e-3"]
    run = "qlora" if quantized else "lora"
    rm.main(rm_args(runs, run, *extra, *(["--load_in_4bit", "true"] if quantized else [])))
    stage = runs / run / "rm"
    summary = read_json(stage / "summary.json")
    assert summary["lora"] is True
    adapter_config = read_json(stage / "adapter" / "adapter_config.json")
    assert adapter_config["task_type"] == "SEQ_CLS" and "score" in adapter_config["modules_to_save"]
    assert read_json(runs / run / "rm" / "manifest.json")["config"]["model"]["load_in_4bit"] is quantized
    # LoRA's B matrices start at zero: non-zero ones show that gradients reached the adapter.
    adapter = load_file(stage / "adapter" / "adapter_model.safetensors")
    lora_b = [tensor for name, tensor in adapter.items() if "lora_B" in name]
    assert lora_b and all(tensor.abs().sum() > 0 for tensor in lora_b)

    merged = AutoModelForSequenceClassification.from_pretrained(stage / "model")
    with_adapter = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(sft_model, num_labels=1), stage / "adapter"
    )
    tokenizer = AutoTokenizer.from_pretrained(stage / "model")
    batch = tokenizer(["Rate the bar in Berlin: The view was lovely.</s>"], return_tensors="pt")
    with torch.no_grad():
        # Equal only if the trained score head travelled in the adapter (a fresh head is randomly initialized).
        torch.testing.assert_close(merged.eval()(**batch).logits, with_adapter.eval()(**batch).logits)
    # The summary scored the trained model as it ran; with 4-bit weights that is not the full-precision merge.
    tolerance = 4 / 64 if quantized else 1 / 64
    assert abs(accuracy_of(stage / "model", 64) - summary["eval_accuracy"]) <= tolerance


def test_margin_column_and_center_rewards_coefficient(runs: Path, sft_model: Path, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs_with_margin.jsonl"
    with open(DEMO_DATA / "prefs_train.jsonl", encoding="utf-8") as source, open(pairs, "w") as out:
        for _, line in zip(range(128), source, strict=False):
            row = json.loads(line)
            out.write(json.dumps({key: row[key] for key in ("prompt", "chosen", "rejected")} | {"margin": 10.0}) + "\n")
    extra = [
        "--model_name_or_path",
        str(sft_model),
        "--dataset_name",
        str(pairs),
        "--center_rewards_coefficient",
        "0.5",
        # A full fine-tune here, so that the RM stage runs without LoRA too (the demo config trains LoRA).
        "--use_peft",
        "false",
    ]
    rm.main(rm_args(runs, "margin", *extra))
    stage = runs / "margin" / "rm"
    # The loss is -log sigmoid(r_chosen - r_rejected - margin): about 10 for a margin of 10, against log 2 without.
    assert read_json(stage / "summary.json")["train_loss"] > 5
    assert read_json(stage / "summary.json")["lora"] is False and not (stage / "adapter").exists()
    assert read_json(stage / "manifest.json")["config"]["training"]["center_rewards_coefficient"] == 0.5


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_processes_write_one_complete_stage(tmp_path: Path, sft_model: Path) -> None:
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(free_port()), "-m", "stages.rm"]
    args = rm_args(tmp_path, "ddp", "--model_name_or_path", str(sft_model), train_rows=128)
    result = subprocess.run([*launch, *args], cwd=REPO, env=subprocess_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]

    assert complete_stages(tmp_path) == [tmp_path / "ddp" / "rm"]
    assert sorted(path.name for path in (tmp_path / "ddp").iterdir()) == ["report.html", "rm"]
    records = read_metrics(tmp_path / "ddp" / "rm")
    # One job over both processes: 128 rows / (16 per process x 2) = 4 steps, logged once (not 8 steps, twice).
    assert [record["step"] for record in records if "train_loss" in record] == [4]
    assert read_json(tmp_path / "ddp" / "rm" / "summary.json")["eval_rows"] == 64
