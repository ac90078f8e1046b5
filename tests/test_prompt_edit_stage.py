"""The prompt-editing stage in one process on the tiny policy and a tiny embedding task model: the run folder and its
contract with the report, the baselines (RLPrompt's prompt from the run's prompt-optimization stage, or absent), the
command that applies the policy to a file, and an exact resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

import stages.prompt_edit.__main__ as edit_stage
from pipeline.report import REPORT
from stages.prompt_edit import edit
from stages.prompt_edit.trainer import PromptEditTrainer
from tests.prompt_edit_testing import edit_argv, small_split, stage_records

RUN = "r"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("edit-data")
    return {
        "train": small_split("train.jsonl", 20, folder / "train.jsonl"),
        "test": small_split("test.jsonl", 6, folder / "test.jsonl"),
    }


def options(files: dict[str, Path], tiny_bert: Path, **extra) -> dict:
    return {
        "dataset_name": files["train"],
        "eval_dataset_name": files["test"],
        "task_model": tiny_bert,
        **extra,
    }


@pytest.fixture(scope="module")
def finished(tiny_base, tiny_bert, files, tmp_path_factory) -> Path:
    """A finished run whose prompt-optimization stage selected a prompt; every test query in edits.jsonl."""
    runs = tmp_path_factory.mktemp("runs")
    prompt_opt = runs / RUN / "prompt_opt"
    prompt_opt.mkdir(parents=True)
    selected = {"selected_prompt": {"text": " overall it was"}, "test_accuracy": 0.7,
                "task": {"verbalizers": [" bad", " good"], "classes": ["negative", "positive"]}}  # fmt: skip
    (prompt_opt / "summary.json").write_text(json.dumps(selected))
    edit_stage.main(edit_argv(runs, RUN, tiny_base, **options(files, tiny_bert, sample_queries=12)))
    return runs


def test_the_run_folder_holds_what_the_report_reads(finished):
    folder = finished / RUN / "prompt_edit"
    assert not (finished / RUN / ".prompt_edit.partial").exists()
    for name in ("manifest.json", "metrics.jsonl", "summary.json", "edits.jsonl", "environment.json"):
        assert (folder / name).is_file(), name
    assert (folder / "adapter" / "adapter_config.json").is_file()
    for plot in ("score_gain", "kl", "edit_counts", "edit_kinds", "dev_accuracy"):
        assert (folder / "plots" / f"{plot}.png").is_file(), plot
    summary, metrics, rows = stage_records(finished, RUN)
    assert len(metrics) == 2 and all("edits/mean" in m and "dev/accuracy" in m for m in metrics)
    assert summary["updates"] == 2 and summary["splits"] == {"train": 8, "dev": 8, "test": 12}
    assert 0 <= summary["mean_edits"] <= summary["mean_actions"] <= 3
    kinds = summary["edit_kinds"]
    assert sum(kinds.values()) == pytest.approx(1.0 if summary["mean_edits"] else 0.0)
    assert set(summary["train_score_gain"]) == {"policy", "random_edits"}
    assert len(rows) == 12
    for row in rows:
        assert set(row) == {"query", "initial_prompt", "initial_score", "edits", "final_prompt", "prediction", "label"}
        assert all(set(e) == {"action", "changed", "prompt_after", "score_after"} for e in row["edits"])
        prompts = [row["initial_prompt"]] + [e["prompt_after"] for e in row["edits"]]
        assert [e["changed"] for e in row["edits"]] == [a != b for a, b in zip(prompts, prompts[1:], strict=False)]
        assert row["final_prompt"] == (row["edits"][-1]["prompt_after"] if row["edits"] else row["initial_prompt"])
    # edits.jsonl holds every test query here, so its predictions give the summary's accuracy
    hits = sum(row["prediction"] == row["label"] for row in rows)
    assert summary["test_accuracy"] == pytest.approx(hits / len(rows))
    page = (finished / RUN / REPORT).read_text()
    assert "Sample edits of test queries" in page and "random edits" in page


def test_baselines_include_the_prompt_rlprompt_selected(finished):
    summary, _, _ = stage_records(finished, RUN)
    baselines = summary["baselines"]
    assert set(baselines) == {"initial_prompt", "random_edits", "rlprompt"}
    rlprompt = baselines["rlprompt"]
    assert rlprompt["prompt"] == " overall it was" and rlprompt["verbalizers"] == [" bad", " good"]
    assert 0 <= rlprompt["test_accuracy"] <= 1 and rlprompt["test_accuracy_in_prompt_opt"] == 0.7
    assert len(baselines["random_edits"]["test_accuracy"]) == 2


def test_without_a_prompt_optimization_stage_rlprompt_is_reported_absent(tmp_path):
    absent = edit_stage.rlprompt_prompt(str(tmp_path), "nothing", ["negative", "positive"])
    assert set(absent) == {"absent"} and "python -m stages.prompt_opt --run nothing" in absent["absent"]
    other = tmp_path / "other" / "prompt_opt"
    other.mkdir(parents=True)
    (other / "summary.json").write_text(json.dumps({"task": {"classes": ["sports", "world"]}}))
    absent = edit_stage.rlprompt_prompt(str(tmp_path), "other", ["negative", "positive"])
    assert "classifies ['sports', 'world'], not ['negative', 'positive']" in absent["absent"]


def test_the_command_applies_the_policy_as_the_stage_did(finished, files, capsys):
    out = finished / "edited.jsonl"
    edit.main(["--runs_dir", str(finished), "--run", RUN, "--input", str(files["test"]), "--output", str(out)])
    summary, _, rows = stage_records(finished, RUN)
    edited = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["text"] for e in edited] == [r["query"] for r in rows]
    assert [e["prediction"] for e in edited] == [r["prediction"] for r in rows]
    assert [e["final_prompt"] for e in edited] == [r["final_prompt"] for r in rows]
    assert [e["edits"] for e in edited] == [[edit["action"] for edit in r["edits"]] for r in rows]
    assert f"accuracy {summary['test_accuracy']:.3f}" in capsys.readouterr().out


class Crash(Exception):
    pass


@pytest.mark.slow
def test_a_run_stopped_after_a_checkpoint_resumes_exactly(tiny_base, tiny_bert, files, tmp_path, monkeypatch):
    settings = options(files, tiny_bert, total_episodes=32, save_strategy="steps", save_steps=2)
    edit_stage.main(edit_argv(tmp_path, "whole", tiny_base, **settings))

    end_update = PromptEditTrainer._end_update

    def crash_after_three(self, metrics, *args):
        end_update(self, metrics, *args)
        if self.progress.update == 3:
            raise Crash

    monkeypatch.setattr(PromptEditTrainer, "_end_update", crash_after_three)
    with pytest.raises(Crash):
        edit_stage.main(edit_argv(tmp_path, "cut", tiny_base, **settings))
    assert not (tmp_path / "cut" / "prompt_edit").exists()
    monkeypatch.setattr(PromptEditTrainer, "_end_update", end_update)
    collect, collected = PromptEditTrainer.collect, []

    def counting(self, rows, timer):
        collected.append(self.progress.update + 1)
        return collect(self, rows, timer)

    monkeypatch.setattr(PromptEditTrainer, "collect", counting)
    edit_stage.main(edit_argv(tmp_path, "cut", tiny_base, **settings, resume_from_checkpoint="latest"))
    assert collected == [3, 4], "the resumed run did not start after its checkpoint"

    whole, cut = (stage_records(tmp_path, run) for run in ("whole", "cut"))
    carried = ("objective/raw_scores", "loss/policy_avg", "loss/value_avg", "edits/mean", "dev/accuracy", "lr")
    assert [m["step"] for m in cut[1]] == [1, 2, 3, 4]
    assert [[m[k] for k in carried] for m in cut[1]] == [[m[k] for k in carried] for m in whole[1]]
    assert cut[2] == whole[2] and cut[0]["test_accuracy"] == whole[0]["test_accuracy"]
    weights = [
        load_file(tmp_path / run / "prompt_edit" / "adapter" / "adapter_model.safetensors") for run in ("whole", "cut")
    ]
    assert weights[0].keys() == weights[1].keys()
    assert all((weights[0][k] == weights[1][k]).all() for k in weights[0])
    shutil.rmtree(tmp_path)


LEARNING = {"num_shots": 48, "max_edits": 4, "per_device_train_batch_size": 16, "num_ppo_epochs": 4,
            "total_episodes": 16 * 40, "dev_every": 10, "sample_queries": 0}  # fmt: skip


@pytest.mark.slow
def test_the_policy_learns_edits_that_raise_the_training_score_more_than_random_edits(tiny_base, tmp_path):
    """With the demo's task model, initial prompt, pools and training settings, 40 updates on 96 training queries.

    Seeds 0-2 (the tiny test policy): the greedy edits' training score gain 0.28 / 0.30 / 0.57 against -0.76 / -0.43
    / 0.06 for as many random edits; the sampled episodes' gain, mean of the first five updates against the last
    five: -0.24 -> 0.24, -0.18 -> 0.52, 0.20 -> 0.40.
    """
    test_file = small_split("test.jsonl", 20, tmp_path / "test.jsonl")
    edit_stage.main(edit_argv(tmp_path, RUN, tiny_base, eval_dataset_name=test_file, **LEARNING))
    summary, metrics, _ = stage_records(tmp_path, RUN)
    gain = summary["train_score_gain"]
    assert gain["policy"] > 0.2 and gain["policy"] > gain["random_edits"] + 0.4, gain
    first, last = (sum(m["objective/raw_scores"] for m in part) / 5 for part in (metrics[:5], metrics[-5:]))
    assert last > first + 0.15, (first, last)
