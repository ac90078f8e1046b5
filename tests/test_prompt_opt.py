"""The prompt-optimization stage (RLPrompt) end to end: run folder, PPO and soft Q-learning, each task-model kind,
learning, two processes, resume, bad input, and the classify command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import stages.prompt_opt.__main__ as stage
from pipeline.errors import PipelineError
from pipeline.metrics import read_metrics
from stages.ppo.core import zscore
from stages.prompt_opt import classify, compare
from tests.conftest import REPO, subprocess_env
from tests.prompt_opt_testing import prompt_opt_argv, small_test_split
from tests.task_model_testing import bpe_tokenizer, save, tiny_causal_lm, tiny_masked_lm


@pytest.fixture(scope="module")
def test_file(tmp_path_factory) -> Path:
    return small_test_split(tmp_path_factory.mktemp("sentiment"))


@pytest.fixture(scope="module", params=["ppo", "sql"])
def finished(request, tiny_base, test_file, tmp_path_factory) -> tuple[Path, list[dict]]:
    """A completed two-update run of each algorithm: (stage folder, its metrics)."""
    runs = tmp_path_factory.mktemp("runs")
    stage.main(prompt_opt_argv(runs, "r", tiny_base, test_file, algorithm=request.param))
    folder = runs / "r" / "prompt_opt"
    return folder, read_metrics(folder / "metrics.jsonl")


def test_run_folder_summary_and_prompts(finished):
    folder, records = finished
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["updates"] == 2 and [r["step"] for r in records] == [1, 2]
    assert (folder / "adapter" / "adapter_config.json").is_file() and (folder / "manifest.json").is_file()
    for plot in ("reward", "dev_accuracy", "kl", "time"):
        assert (folder / "plots" / f"{plot}.png").is_file(), plot
    prompts = read_metrics(folder / "prompts.jsonl")
    selected = summary["selected_prompt"]
    assert prompts[0]["text"] == selected["text"] and len(selected["token_ids"]) == 5
    assert [p["dev_accuracy"] for p in prompts] == sorted((p["dev_accuracy"] for p in prompts), reverse=True)
    baselines = summary["baselines"]
    assert baselines["empty_prompt"]["prompt"] == "" and baselines["random_prompts"]["count"] == 3
    assert baselines["manual_prompt"]["prompt"] == "Sentiment of this review:"
    assert 0 <= summary["test_accuracy"] <= 1 and summary["splits"] == {"train": 8, "dev": 8, "test": 24}
    assert summary["task"]["kind"] == "embedding" and summary["task"]["verbalizers"] == [" terrible", " great"]
    assert all("dev/accuracy" in r and "time/reward" in r and "reward/prompts_scored" in r for r in records)
    assert summary["prompts_scored_per_second"] > 0


def test_rewards_are_z_scored_over_the_step_and_ppo_starts_at_ratio_one(finished):
    folder, records = finished
    assert all(abs(r["objective/scores"]) < 1e-4 or r.get("loss/sql") for r in records)  # z-scores average 0
    if "first/ratio" in records[0]:
        assert all(abs(r["first/ratio"] - 1) < 1e-6 for r in records)


def test_classify_a_file_with_the_selected_prompt(finished, test_file, capsys):
    folder, _ = finished
    summary = json.loads((folder / "summary.json").read_text())
    out = folder.parent / "predictions.jsonl"
    classify.main(
        ["--runs_dir", str(folder.parent.parent), "--run", "r", "--input", str(test_file), "--output", str(out)]
    )
    rows = read_metrics(out)
    assert len(rows) == 24 and {r["prediction"] for r in rows} <= {"negative", "positive"}
    hits = sum(r["prediction"] == r["label"] for r in rows)
    assert hits / 24 == pytest.approx(summary["test_accuracy"], abs=1e-6)
    assert f"accuracy {hits / 24:.3f}" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["masked", "causal"])
def test_masked_and_causal_task_models_run_in_the_stage(kind, tiny_base, test_file, tmp_path):
    tokenizer = bpe_tokenizer("roberta" if kind == "masked" else "bos")
    model = tiny_masked_lm(tokenizer) if kind == "masked" else tiny_causal_lm(tokenizer)
    folder = save(model, tokenizer, tmp_path / kind)
    stage.main(
        prompt_opt_argv(tmp_path, kind, tiny_base, test_file, task_model=folder, task_model_kind=kind, total_episodes=8)
    )
    summary = json.loads((tmp_path / kind / "prompt_opt" / "summary.json").read_text())
    assert summary["task"]["kind"] == kind
    assert "<mask>" in summary["task"]["template"] if kind == "masked" else "{prompt}" in summary["task"]["template"]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"verbalizers": [" terrible"]}, r"verbalizers: 1 given for 2 classes"),
        ({"template": "{prompt} review"}, r"no \{input\} slot"),
        ({"task_model_kind": "masked", "template": "{input} {prompt} ."}, r"<mask>|masked"),
        ({"task_model_kind": "masked"}, r"masked"),  # MiniLM is an encoder without a masked-LM head
        ({"num_shots": 500}, r"fewer than|only"),
        ({"classes": ["negative", "neutral"]}, r"positive"),
        ({"prompt_length": 0}, r"prompt_length must be at least 1"),
        ({"allowed_tokens": "missing-file.txt"}, r"allowed_tokens: cannot read"),
    ],
)
def test_bad_input_stops_before_anything_is_written(options, message, tiny_base, test_file, tmp_path):
    with pytest.raises(PipelineError, match=message):
        stage.main(prompt_opt_argv(tmp_path, "bad", tiny_base, test_file, **options))
    assert not (tmp_path / "bad" / "prompt_opt").exists()


def test_a_dataset_with_one_class_is_refused(tiny_base, test_file, tmp_path):
    rows = [json.loads(line) for line in test_file.read_text().splitlines()]
    one_class = write_rows(tmp_path / "one.jsonl", [row for row in rows if row["label"] == "positive"] * 4)
    with pytest.raises(PipelineError, match=r"one\.jsonl \(training split\) has only one class \(positive\)"):
        stage.main(prompt_opt_argv(tmp_path, "bad", tiny_base, test_file, dataset_name=one_class))
    assert not (tmp_path / "bad" / "prompt_opt").exists()


def test_compare_table_counts_wins_per_algorithm(tmp_path):
    found = [
        {"run": "a", "algorithm": "ppo", "seed": 0, "prompt": "x", "learned": 0.8, "empty": 0.6, "manual": 0.7,
         "random mean": 0.65, "best random on dev": 0.85},
        {"run": "b", "algorithm": "ppo", "seed": 1, "prompt": "y", "learned": 0.9, "empty": 0.6, "manual": 0.7,
         "random mean": 0.65, "best random on dev": 0.8},
    ]  # fmt: skip
    text = compare.table(found)
    assert "| mean | ppo | 2 runs | | 0.850 | 0.600 | 0.700 | 0.650 | 0.825 |" in text
    assert "2/2 above empty, 2/2 above manual, 2/2 above random mean, 1/2 above best random on dev" in text


@pytest.mark.slow
def test_the_learned_prompt_beats_random_prompts(tiny_base, test_file, tmp_path):
    """PPO on the demo's 16-shot train set: the mean reward of the sampled prompts rises clearly, and the prompt it
    selects scores well above the random prompts' mean on the train and the dev examples."""
    options = {"num_shots": 16, "per_device_train_batch_size": 16, "total_episodes": 16 * 24, "dev_every": 8}
    stage.main(prompt_opt_argv(tmp_path, "learn", tiny_base, test_file, random_prompts=20, **options))
    folder = tmp_path / "learn" / "prompt_opt"
    records = read_metrics(folder / "metrics.jsonl")
    first = sum(r["objective/raw_scores"] for r in records[:3]) / 3
    last = sum(r["objective/raw_scores"] for r in records[-3:]) / 3
    assert last > first + 15, (first, last)  # the gap reward is 200 x Gap when right: +15 is a clear move
    summary = json.loads((folder / "summary.json").read_text())
    random_dev = summary["baselines"]["best_random_on_dev"]["dev_accuracy"]
    assert summary["selected_prompt"]["dev_accuracy"] >= random_dev
    assert summary["test_accuracy"] > summary["baselines"]["random_prompts"]["test_accuracy_mean"] + 0.05


@pytest.mark.slow
def test_two_processes_z_score_over_both_and_stay_in_sync(tiny_base, test_file, tmp_path):
    records = tmp_path / "records"
    records.mkdir()
    launch = [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1"),
        *("--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no"),
    ]
    argv = prompt_opt_argv(tmp_path, "ddp", tiny_base, test_file)
    result = subprocess.run(
        [*launch, "-m", "tests.prompt_opt_testing", *argv],
        cwd=REPO,
        env={**subprocess_env(), "PROMPT_OPT_RECORD_DIR": str(records)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((records / f"rank-{i}.json").read_text()) for i in range(2)]
    assert ranks[0]["trained_after"] == ranks[1]["trained_after"] != ranks[0]["trained_before"]
    for step0, step1 in zip(ranks[0]["steps"], ranks[1]["steps"], strict=True):
        both = torch.tensor(step0["raw"] + step1["raw"])
        for rank_step in (step0, step1):  # each process's scores are z-scored with the mean and std of both
            expected = zscore(torch.tensor(rank_step["raw"]), both, 1e-4)
            torch.testing.assert_close(torch.tensor(rank_step["shaped"]), expected, atol=1e-5, rtol=1e-5)
        assert abs(sum(step0["shaped"]) / len(step0["shaped"])) > 1e-3  # so a per-process z-score would differ
    summary = json.loads((tmp_path / "ddp" / "prompt_opt" / "summary.json").read_text())
    assert summary["updates"] == 1  # 16 episodes = one update of 8 prompts on each of 2 processes


@pytest.mark.slow
def test_killed_and_resumed_run_ends_as_an_uninterrupted_one(tiny_base, test_file, tmp_path):
    from tests.test_ppo_resume import kill_after_update

    options = {"total_episodes": 48, "save_strategy": "steps", "save_steps": 2, "dev_every": 2}
    whole = prompt_opt_argv(tmp_path, "whole", tiny_base, test_file, **options)
    stage.main(whole)
    argv = prompt_opt_argv(tmp_path, "killed", tiny_base, test_file, **options)
    work = tmp_path / "killed" / ".prompt_opt.partial"
    kill_after_update(argv, work / "metrics.jsonl", 3, module="stages.prompt_opt")
    stage.main([*argv, "--resume_from_checkpoint", "latest"])
    ends = [json.loads((tmp_path / run / "prompt_opt" / "summary.json").read_text()) for run in ("whole", "killed")]
    assert ends[0]["selected_prompt"] == ends[1]["selected_prompt"]
    assert ends[0]["test_accuracy"] == ends[1]["test_accuracy"]
    prompts = [read_metrics(tmp_path / run / "prompt_opt" / "prompts.jsonl") for run in ("whole", "killed")]
    assert prompts[0] == prompts[1]
    keep = ("objective/raw_scores", "objective/kl", "dev/accuracy", "loss/policy_avg")
    logged = [read_metrics(tmp_path / run / "prompt_opt" / "metrics.jsonl") for run in ("whole", "killed")]
    assert [[r.get(k) for k in keep] for r in logged[0]] == [[r.get(k) for k in keep] for r in logged[1]]
