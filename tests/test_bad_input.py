"""Bad input to the SFT and RM stages: one "error: ..." line, exit code 2, and no complete stage folder.

Most cases run the stage's entry point (``run_main(main)``, what ``python -m stages.<stage>`` runs) in this
process, where each costs milliseconds; a few run as real subprocesses to check what a user sees on the terminal.
A crash mid-way (not a user error) must leave the previous complete stage untouched and publish nothing new.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
from transformers import AutoTokenizer
from trl import SFTTrainer

from pipeline import cli
from pipeline.errors import EXIT_USER_ERROR, run_main
from pipeline.runs import StageDir
from stages import rm, sft
from tests.conftest import DEMO_DATA, REPO, subprocess_env
from tests.stage_runs import complete_stages, read_json, rm_args, sft_args

RUN = "bad"


@dataclass(frozen=True)
class Inputs:
    """The bad files, tokenizers and configs the cases point at, next to a good base model."""

    folder: Path
    base: Path

    def __truediv__(self, name: str) -> str:
        return str(self.folder / name)


@pytest.fixture(scope="module")
def inputs(tiny_base: Path, tmp_path_factory) -> Inputs:
    folder = tmp_path_factory.mktemp("bad_inputs")
    (folder / "missing_columns.jsonl").write_text('{"question": "How was it?", "answer": " Fine."}\n' * 4)
    (folder / "empty.jsonl").write_text("")
    (folder / "malformed.jsonl").write_text('{"prompt": "How was it?", "completion": " Fine."}\n{"prompt": "Why?", \n')
    for name, pad in (("no_pad", None), ("pad_is_eos", "</s>")):
        shutil.copytree(tiny_base, folder / name)
        tokenizer = AutoTokenizer.from_pretrained(tiny_base)
        tokenizer.pad_token = pad
        tokenizer.save_pretrained(folder / name)
        assert AutoTokenizer.from_pretrained(folder / name).pad_token == pad  # the case tests what it says
    (folder / "not_a_model").mkdir()
    (folder / "not_a_model" / "notes.txt").write_text("weights are elsewhere\n")
    shutil.copytree(tiny_base, folder / "no_tokenizer", ignore=shutil.ignore_patterns("tokenizer*"))
    demo_config = (REPO / "configs" / "demo" / "sft.yaml").read_text()
    (folder / "unknown_key.yaml").write_text(demo_config + "learning_rat: 1.0e-3\n")
    (folder / "wrong_type.yaml").write_text(demo_config + "max_steps: lots\n")
    (folder / "list_for_number.yaml").write_text(demo_config + "max_grad_norm: [1, 2]\n")
    (folder / "broken.yaml").write_text(demo_config + "lr_scheduler_kwargs: {min_lr: [1\n")
    return Inputs(folder, tiny_base)


@dataclass(frozen=True)
class Case:
    """A bad input: which stage, its arguments (from the inputs and a runs folder) and what the message says."""

    stage: ModuleType
    argv: Callable[[Inputs, Path], list[str]]
    says: tuple[str, ...]


def _sft(*extra: str) -> Callable[[Inputs, Path], list[str]]:
    return lambda inputs, runs: sft_args(runs, RUN, inputs.base, *extra)


def _sft_from(option: str, name: str, *extra: str) -> Callable[[Inputs, Path], list[str]]:
    """SFT with ``option`` set to the bad input ``name``."""
    return lambda inputs, runs: sft_args(runs, RUN, inputs.base, option, inputs / name, *extra)


def _sft_config(name: str) -> Callable[[Inputs, Path], list[str]]:
    """SFT with the config file replaced by the bad one ``name`` (later --config wins)."""
    return lambda inputs, runs: sft_args(runs, RUN, inputs.base)[2:] + ["--config", inputs / name]


def _rm(*extra: str) -> Callable[[Inputs, Path], list[str]]:
    return lambda inputs, runs: rm_args(runs, RUN, *extra)


CASES: dict[str, Case] = {
    "unknown_data_format": Case(sft, _sft("--dataset_format", "reviews"), ("unknown dataset_format 'reviews'",)),
    "unrecognized_columns": Case(
        sft,
        _sft_from("--dataset_name", "missing_columns.jsonl"),
        ("missing_columns.jsonl", "columns (question, answer)", "column_mapping"),
    ),
    "missing_columns_for_format": Case(
        sft,
        _sft_from("--dataset_name", "missing_columns.jsonl", "--dataset_format", "prompt_completion"),
        ("lacks column(s) prompt, completion", "its columns are: question, answer"),
    ),
    "sft_data_for_rm": Case(
        rm,
        lambda inputs, runs: rm_args(
            runs, RUN, "--dataset_name", str(DEMO_DATA / "sft_train.jsonl"), "--model_name_or_path", str(inputs.base)
        ),
        ("sft_train.jsonl looks like 'prompt_completion' data", "cannot be used for reward-model"),
    ),
    "empty_dataset": Case(sft, _sft_from("--eval_dataset_name", "empty.jsonl"), ("empty.jsonl' is empty",)),
    "malformed_jsonl": Case(
        sft, _sft_from("--dataset_name", "malformed.jsonl"), ("malformed.jsonl', line 2 is not valid JSON",)
    ),
    "model_path_missing": Case(
        sft, _sft("--model_name_or_path", "/no/such/model"), ("base model path '/no/such/model' does not exist",)
    ),
    "folder_is_not_a_model": Case(
        sft,
        _sft_from("--model_name_or_path", "not_a_model"),
        ("not_a_model' is not a model folder", "no config.json", "tokenizer"),
    ),
    "model_folder_without_tokenizer": Case(
        sft, _sft_from("--model_name_or_path", "no_tokenizer"), ("no_tokenizer' holds no tokenizer", "tokenizer.json")
    ),
    "hub_id_offline": Case(
        sft, _sft("--model_name_or_path", "someone/some-model"), ("'someone/some-model'", "no hub is reachable")
    ),
    "hub_dataset_offline": Case(
        sft, _sft("--eval_dataset_name", "someone/some-data"), ("dataset 'someone/some-data'", "no hub is reachable")
    ),
    "tokenizer_without_pad": Case(
        sft, _sft_from("--model_name_or_path", "no_pad"), ("has no pad token", "--tokenizer_pad_token")
    ),
    "tokenizer_pad_is_eos": Case(
        sft, _sft_from("--model_name_or_path", "pad_is_eos"), ("pads with its EOS token '</s>'", "never learns to stop")
    ),
    "pad_token_option_is_eos": Case(
        sft,
        _sft_from("--model_name_or_path", "no_pad", "--tokenizer_pad_token", "</s>"),
        ("pads with its EOS token",),
    ),
    "pad_token_option_not_in_vocabulary": Case(
        sft,
        _sft_from("--model_name_or_path", "no_pad", "--tokenizer_pad_token", "<nope>"),
        ("tokenizer_pad_token '<nope>' is not in the vocabulary",),
    ),
    "unknown_yaml_key": Case(sft, _sft_config("unknown_key.yaml"), ("unknown setting(s) in", "learning_rat;")),
    "unknown_option": Case(
        sft, _sft("--learnin_rate", "1e-3"), ("unknown setting(s) on the command line: --learnin_rate",)
    ),
    "wrong_type_in_yaml": Case(sft, _sft_config("wrong_type.yaml"), ("wrong_type.yaml", "invalid int value: 'lots'")),
    "list_for_a_number": Case(
        sft, _sft_config("list_for_number.yaml"), ("max_grad_norm: [1, 2] is not a valid value",)
    ),
    "wrong_type_on_command_line": Case(sft, _sft("--num_train_epochs", "many"), ("invalid float value: 'many'",)),
    "broken_yaml": Case(sft, _sft_config("broken.yaml"), ("broken.yaml is not valid YAML", "line")),
    "missing_config": Case(sft, _sft_config("nowhere.yaml"), ("config file not found", "nowhere.yaml")),
    "eval_fraction_above_one": Case(sft, _sft("--eval_fraction", "2"), ("eval_fraction must be between 0 and 1",)),
    "run_name_with_slash": Case(sft, _sft("--run", "team/a"), ("run name 'team/a'", "--runs_dir")),
    "run_name_climbing_out": Case(sft, _sft("--run", ".."), ("run name '..'",)),
    "run_name_absolute": Case(rm, _rm("--run", "/tmp/elsewhere"), ("run name '/tmp/elsewhere'",)),
    "run_name_empty": Case(sft, _sft("--run", ""), ("run name is empty",)),
    "rm_before_sft": Case(rm, _rm(), (f"stage 'sft' of run '{RUN}' is not complete", f"`make sft RUN={RUN}`")),
}


def no_stage_appeared(runs: Path) -> bool:
    """Nothing complete, and no stage or work folder either: user errors stop before the stage starts."""
    return not runs.exists() or (complete_stages(runs) == [] and not any((runs / RUN).glob("*")))


@pytest.mark.parametrize("name", CASES)
def test_user_error_is_one_line_and_exit_code_2(name: str, inputs: Inputs, tmp_path: Path, capsys) -> None:
    case = CASES[name]
    runs = tmp_path / "runs"
    started = time.monotonic()
    with pytest.raises(SystemExit) as exited:
        run_main(case.stage.main, case.argv(inputs, runs))
    seconds = time.monotonic() - started

    assert exited.value.code == EXIT_USER_ERROR
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, errors
    for fragment in case.says:
        assert fragment in errors[0]
    assert no_stage_appeared(runs)
    assert seconds < 5, f"{name} took {seconds:.1f} s to fail"  # no waiting on a hub, no model loading


def test_rm_with_an_incomplete_sft_stage_names_make_sft(inputs: Inputs, tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    (runs / RUN / "sft" / "model").mkdir(parents=True)  # e.g. copied by hand, or a stage that never finished
    (runs / RUN / ".sft.partial").mkdir()
    with pytest.raises(SystemExit) as exited:
        run_main(rm.main, rm_args(runs, RUN))
    assert exited.value.code == EXIT_USER_ERROR
    assert f"run `make sft RUN={RUN}` first" in capsys.readouterr().err
    assert complete_stages(runs) == [] and not (runs / RUN / "rm").exists()


@pytest.mark.parametrize("command", ["report", "export"])
def test_cli_refuses_a_run_outside_runs_dir(command: str, tmp_path: Path, capsys) -> None:
    (tmp_path / "outside" / "ppo").mkdir(parents=True)
    (tmp_path / "outside" / "ppo" / "summary.json").write_text("{}")
    with pytest.raises(SystemExit) as exited:
        cli.main([command, "--runs_dir", str(tmp_path / "runs"), "--run", "../outside"])
    assert exited.value.code == EXIT_USER_ERROR
    assert "run name '../outside' is not a plain folder name" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["outside"]


@pytest.mark.parametrize("name", ["hub_id_offline", "rm_before_sft"])
def test_terminal_shows_one_error_line(name: str, inputs: Inputs, tmp_path: Path) -> None:
    case = CASES[name]
    runs = tmp_path / "runs"
    command = [sys.executable, "-m", case.stage.__name__, *case.argv(inputs, runs)]
    result = subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)

    assert result.returncode == EXIT_USER_ERROR, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and all(fragment in lines[-1] for fragment in case.says)
    assert sum(line.startswith("error: ") for line in lines) == 1
    assert "Traceback" not in result.stderr and "usage:" not in result.stderr
    assert no_stage_appeared(runs)


# ----- a crash mid-way ---------------------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def publish_old_stage(runs: Path) -> Path:
    """A complete SFT stage from an earlier run (content made up: only its survival matters)."""
    stage = StageDir(runs, RUN, "sft")
    work = stage.start()
    (work / "model").mkdir()
    (work / "model" / "model.safetensors").write_bytes(b"old weights")
    return stage.finish({"eval_loss": 1.0}, time.time())


class Crash(RuntimeError):
    pass


def crash(*args, **kwargs):
    raise Crash("the machine went away")


@pytest.mark.parametrize(("where", "previous"), [("training", True), ("after_saving", True), ("after_saving", False)])
def test_crash_leaves_previous_stage_untouched(
    where: str, previous: bool, tiny_base: Path, tmp_path: Path, monkeypatch
) -> None:
    runs = tmp_path / "runs"
    old = publish_old_stage(runs) if previous else None
    before = snapshot(old) if old else {}
    if where == "training":
        monkeypatch.setattr(SFTTrainer, "train", crash)
    else:  # the new model is saved in the work folder, the summary not yet written
        monkeypatch.setattr(sft, "plot_stage_metrics", crash)

    with pytest.raises(Crash):
        sft.main(sft_args(runs, RUN, tiny_base, train_rows=32, eval_rows=16))

    assert complete_stages(runs) == ([old] if old else [])
    if old:
        assert snapshot(old) == before
    if where == "after_saving":
        assert (runs / RUN / ".sft.partial" / "model" / "model.safetensors").is_file()

    monkeypatch.undo()  # the next run starts over and publishes
    sft.main(sft_args(runs, RUN, tiny_base, train_rows=32, eval_rows=16))
    assert complete_stages(runs) == [runs / RUN / "sft"]
    assert read_json(runs / RUN / "sft" / "summary.json")["train_rows"] == 32
    assert sorted(path.name for path in (runs / RUN).iterdir()) == ["report.html", "sft"]  # no partial folder left
