"""The SFT stage (stages/sft.py) on the demo data with the tiny base: run folder, learning, LoRA and QLoRA."""

from __future__ import annotations

import hashlib
import json
import math
from importlib import metadata
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.runs import content_hash
from stages import sft
from tests.conftest import DEMO_DATA
from tests.stage_runs import PNG_MAGIC, read_json, read_metrics, sft_args

TRAIN_ROWS, EVAL_ROWS, BATCH, LOGGING_STEPS = 256, 64, 16, 4


@pytest.fixture(scope="module")
def sft_run(tiny_base: Path, tmp_path_factory) -> Path:
    """One full fine-tuning run: 256 demo rows, one epoch of 16 steps."""
    runs = tmp_path_factory.mktemp("runs")
    sft.main(sft_args(runs, "full", tiny_base, train_rows=TRAIN_ROWS, eval_rows=EVAL_ROWS))
    return runs / "full" / "sft"


def eval_rows(count: int = 32) -> list[dict]:
    with open(DEMO_DATA / "sft_eval.jsonl", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    return rows[-count:]  # the stage evaluated on the first rows; these were neither trained nor evaluated on


@torch.no_grad()
def text_loss(model, tokenizer, rows: list[dict]) -> float:
    """Mean next-token loss of whole demonstrations (prompt + completion + EOS)."""
    texts = [row["prompt"] + row["completion"] + tokenizer.eos_token for row in rows]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return model.eval()(**batch, labels=labels).loss.item()


@torch.no_grad()
def logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(["How was the museum in Kyoto? The staff were"], return_tensors="pt")
    return model.eval()(**batch).logits


def test_run_folder_holds_exactly_the_stage_outputs(sft_run: Path) -> None:
    assert sorted(path.name for path in sft_run.iterdir()) == [
        "manifest.json",
        "metrics.jsonl",
        "model",
        "plots",
        "summary.json",
    ]
    assert (sft_run / "plots" / "loss.png").read_bytes().startswith(PNG_MAGIC)
    # The work folder was renamed into place: nothing hidden is left beside the stage (only the run's report).
    assert sorted(path.name for path in sft_run.parent.iterdir()) == ["report.html", "sft"]


def test_manifest_records_inputs_with_hashes_config_and_versions(sft_run: Path, tiny_base: Path) -> None:
    manifest = read_json(sft_run / "manifest.json")
    assert (manifest["stage"], manifest["run"]) == ("sft", "full")
    inputs = manifest["inputs"]
    for name, file in (("dataset", "sft_train.jsonl"), ("eval_dataset", "sft_eval.jsonl")):
        assert inputs[name]["path"] == str(DEMO_DATA / file)
        assert inputs[name]["sha256"] == hashlib.sha256((DEMO_DATA / file).read_bytes()).hexdigest()
    assert inputs["base_model"] == {"path": str(tiny_base), "sha256": content_hash(tiny_base)}
    for package in ("torch", "trl", "transformers", "peft", "accelerate", "datasets"):
        assert manifest["versions"][package] == metadata.version(package)
    assert manifest["config"]["data"]["max_train_samples"] == TRAIN_ROWS
    assert manifest["config"]["training"]["num_train_epochs"] == 1
    assert manifest["config"]["model"]["model_name_or_path"] == str(tiny_base)
    assert manifest["started"] <= manifest["finished"] and manifest["seconds"] >= 0


def test_metrics_have_one_line_per_logged_step(sft_run: Path) -> None:
    records = read_metrics(sft_run)
    steps = TRAIN_ROWS // BATCH
    assert records[0]["step"] == 0 and math.isfinite(records[0]["initial_eval_loss"])
    assert [r["step"] for r in records if "loss" in r] == list(range(LOGGING_STEPS, steps + 1, LOGGING_STEPS))
    assert all(math.isfinite(r["loss"]) and r["learning_rate"] >= 0 for r in records if "loss" in r)
    assert [r["step"] for r in records if "eval_loss" in r][-1] == steps
    assert records[-1]["eval_loss"] == read_json(sft_run / "summary.json")["eval_loss"]


def test_summary_shows_learning(sft_run: Path) -> None:
    summary = read_json(sft_run / "summary.json")
    assert (summary["train_rows"], summary["eval_rows"], summary["model"], summary["lora"]) == (
        TRAIN_ROWS,
        EVAL_ROWS,
        "model",
        False,
    )
    # Measured: 7.40 -> 6.78 for 16 steps from the random tiny base.
    assert summary["eval_loss"] < summary["initial_eval_loss"] - 0.3
    assert summary["eval_perplexity"] == pytest.approx(math.exp(summary["eval_loss"]))
    assert math.isfinite(summary["train_loss"])


def test_saved_model_loads_and_is_the_trained_one(sft_run: Path, tiny_base: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(sft_run / "model")
    tokenizer = AutoTokenizer.from_pretrained(sft_run / "model")
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    rows = eval_rows()
    assert text_loss(model, tokenizer, rows) < text_loss(base, tokenizer, rows) - 0.2


@pytest.mark.parametrize("quantized", [False, True], ids=["lora", "qlora"])
def test_lora_saves_adapter_and_merged_model(quantized: bool, tiny_base: Path, tmp_path: Path, monkeypatch) -> None:
    loaded = []

    def spy(source, model_args):
        loaded.append(load_causal_lm(source, model_args))
        return loaded[-1]

    load_causal_lm = sft.load_causal_lm
    monkeypatch.setattr(sft, "load_causal_lm", spy)
    extra = ["--use_peft", "true", "--learning_rate", "3e-3"] + (["--load_in_4bit", "true"] if quantized else [])
    sft.main(sft_args(tmp_path, "lora", tiny_base, *extra, eval_rows=32))

    assert getattr(loaded[0], "is_loaded_in_4bit", False) is quantized
    stage = tmp_path / "lora" / "sft"
    summary = read_json(stage / "summary.json")
    assert summary["lora"] is True
    # LoRA starts as the identity, so learning shows as a drop from the base's loss. Measured: 7.40 -> 7.24 with
    # and without 4-bit (bitsandbytes' CPU eval kernel once froze QLoRA at 7.397 -> 7.397).
    assert summary["eval_loss"] < summary["initial_eval_loss"] - 0.05
    adapter_config = read_json(stage / "adapter" / "adapter_config.json")
    assert adapter_config["task_type"] == "CAUSAL_LM" and adapter_config["base_model_name_or_path"] == str(tiny_base)

    tokenizer = AutoTokenizer.from_pretrained(stage / "model")
    merged = AutoModelForCausalLM.from_pretrained(stage / "model")
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), stage / "adapter")
    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    torch.testing.assert_close(logits(merged, tokenizer), logits(with_adapter, tokenizer), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(logits(merged, tokenizer), logits(base, tokenizer), atol=1e-3)
