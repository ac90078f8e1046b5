"""`rlhf export`: the PPO policy as a plain model that transformers alone loads and generates with, PPO's value head
beside it, a model card recording where it came from and what it scored; a learned prompt with its template."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from pipeline import cli
from pipeline.errors import EXIT_USER_ERROR
from tests.ppo_testing import ppo_argv, run_ppo

LOAD_AND_GENERATE = """
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
inputs = tokenizer("How was the hotel?", return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
print(output.shape[1] - inputs["input_ids"].shape[1])
"""


def earlier_stage(run_dir: Path, name: str, inputs: dict, summary: dict) -> None:
    """A completed stage's record, as the SFT and RM stages leave it (only what a model card reads)."""
    folder = run_dir / name
    folder.mkdir(parents=True)
    manifest = {
        "command": [f"/repo/stages/{name}.py", "--run", "r"],
        "inputs": {key: {"path": path, "sha256": "ab" * 32} for key, path in inputs.items()},
        "config": {"training": {"learning_rate": 0.001, "seed": 0}},
        "versions": {"torch": "2.13.0"},
        "git_revision": "abc123",
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "summary.json").write_text(json.dumps(summary))


@pytest.fixture(scope="module")
def run(sft_model, tmp_path_factory) -> Path:
    """A run with SFT and RM records and a real (short) PPO stage."""
    runs = tmp_path_factory.mktemp("export-runs")
    earlier_stage(runs / "r", "sft", {"base_model": "build/tiny-base", "dataset": "data/demo/sft_train.jsonl"},
                  {"initial_eval_loss": 7.5, "eval_loss": 1.49})  # fmt: skip
    earlier_stage(runs / "r", "rm", {"dataset": "data/demo/prefs_train.jsonl"},
                  {"eval_accuracy": 0.82, "eval_accuracy_ci95": [0.787, 0.849], "eval_rows": 600})  # fmt: skip
    run_ppo(ppo_argv(runs, "r", sft_model, learning_rate=5e-3))
    return runs / "r"


def test_exported_policy_loads_with_transformers_alone_and_generates(run: Path, tmp_path: Path):
    cli.main(["export", "--runs_dir", str(run.parent), "--run", "r"])
    exported = run / "export" / "ppo"

    result = subprocess.run(
        [sys.executable, "-c", LOAD_AND_GENERATE, str(exported)], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.strip().splitlines()[-1]) > 0  # it generated tokens
    # The merged weights are the PPO policy's.
    ids = torch.randint(3, 200, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mine = AutoModelForCausalLM.from_pretrained(exported)(input_ids=ids).logits
        stage = AutoModelForCausalLM.from_pretrained(run / "ppo" / "model")(input_ids=ids).logits
    torch.testing.assert_close(mine, stage, atol=1e-5, rtol=1e-5)
    assert (exported / "value" / "adapter_config.json").is_file()
    assert (exported / "value" / "value_head.safetensors").is_file()
    assert not (run / "export" / "ppo.partial").exists()


def test_model_card_records_base_data_configs_and_headline_figures(run: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the stages ran: the base model folder is there
    (tmp_path / "build" / "tiny-base").mkdir(parents=True)
    cli.main(["export", "--runs_dir", str(run.parent), "--run", "r"])
    card = (run / "export" / "ppo" / "README.md").read_text()

    assert card.startswith("---\nlibrary_name: transformers\n") and "pipeline_tag: text-generation" in card
    assert "base_model:" not in card  # a local path is no hub reference for the metadata...
    assert "- Base model: `build/tiny-base`" in card  # ...but the card names it
    for data in ("data/demo/sft_train.jsonl", "data/demo/prefs_train.jsonl", "data/demo/prompts_train.jsonl"):
        assert f"- Data: `{data}`" in card, data
    summary = json.loads((run / "ppo" / "summary.json").read_text())
    assert "- SFT: held-out loss 7.500 -> 1.490" in card
    assert "- Reward model: held-out pairwise accuracy 0.820 (95% CI 0.787-0.849) on 600 pairs" in card
    assert f"-> {summary['score']:.3f}" in card and f"KL to SFT {summary['kl']:.2f} nats" in card
    for section in (
        "## Training configuration",
        "### sft",
        "### rm",
        "### ppo",
        "## Value head",
        "value_head.safetensors",
    ):
        assert section in card, section
    assert "| kl_coef | `0.05` |" in card and "Every setting (manifest.json)" in card
    assert "Command: `python -m stages.sft --run r`" in card


def test_learned_prompt_exports_with_its_template_and_task(tmp_path: Path):
    folder = tmp_path / "runs" / "r" / "prompt_opt"
    folder.mkdir(parents=True)
    task = {"task_model": "all-MiniLM-L6-v2", "task_model_path": "/models/minilm", "kind": "embedding",
            "template": "{prompt} {input}", "verbalizers": [" terrible", " great"],
            "classes": ["neg", "pos"]}  # fmt: skip
    selected = {"text": " Absolutely VERY", "token_ids": [5, 6], "train_reward": 2.0, "dev_accuracy": 0.9}
    summary = {"algorithm": "ppo", "selected_prompt": selected | {"test_accuracy": 0.88}, "test_accuracy": 0.88,
               "baselines": {"manual_prompt": {"prompt": " It was", "test_accuracy": 0.7}}, "task": task}  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "prompts.jsonl").write_text(json.dumps(selected) + "\n")

    cli.main(["export", "--runs_dir", str(tmp_path / "runs"), "--run", "r", "--stage", "prompt_opt"])
    exported = tmp_path / "runs" / "r" / "export" / "prompt_opt"
    prompt = json.loads((exported / "prompt.json").read_text())
    assert prompt["prompt"] == " Absolutely VERY" and prompt["template"] == "{prompt} {input}"
    assert prompt["verbalizers"] == [" terrible", " great"] and prompt["classes"] == ["neg", "pos"]
    assert prompt["task_model"] == "all-MiniLM-L6-v2" and prompt["candidates"] == [selected]
    card = (exported / "README.md").read_text()
    assert "base_model: all-MiniLM-L6-v2" in card and "`' great'` -> pos" in card
    assert "Test accuracy 0.88" in card and "Baseline manual prompt: test accuracy 0.7" in card


@pytest.mark.parametrize(
    ("stage", "message"),
    [("ppo", "stage 'ppo' of run 'r' is not complete: run `make ppo RUN=r` first"), ("value", "cannot be exported")],
)
def test_export_refuses_what_it_cannot_export(tmp_path: Path, stage: str, message: str, capsys):
    (tmp_path / "r").mkdir()
    with pytest.raises(SystemExit) as exited:
        cli.main(["export", "--runs_dir", str(tmp_path), "--run", "r", "--stage", stage])
    assert exited.value.code == EXIT_USER_ERROR
    assert message in capsys.readouterr().err
