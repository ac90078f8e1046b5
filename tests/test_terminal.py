"""What a user sees at the terminal when a stage stops on bad input, through the real commands (subprocesses)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import EXIT_USER_ERROR, fail
from pipeline.launch import stopped_on_user_error
from tests.conftest import REPO, subprocess_env
from tests.stage_runs import sft_args


def last_lines(stderr: str, count: int = 1) -> list[str]:
    """The last ``count`` non-empty lines of ``stderr``, a progress bar's carriage returns counting as line ends."""
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-count:]


def test_error_inside_a_progress_bar_gets_a_line_of_its_own() -> None:
    program = (
        "from tqdm.auto import tqdm\n"
        "from pipeline.errors import PipelineError, run_main\n"
        "def main(argv):\n"
        "    bar = tqdm(total=4, desc='Tokenizing')\n"
        "    bar.update(2)\n"
        "    raise PipelineError('the data is bad')\n"
        "run_main(main)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == EXIT_USER_ERROR
    assert result.stderr.endswith("\nerror: the data is bad\n"), result.stderr  # not on the bar's line, nothing after


class Writes:
    """A stream that records each write."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_error_line_is_one_write_so_that_the_lines_of_several_processes_do_not_mix(monkeypatch) -> None:
    stream = Writes()
    monkeypatch.setattr(sys, "stderr", stream)
    with pytest.raises(SystemExit):
        fail("the data is bad")
    assert stream.writes == ["error: the data is bad\n"]


# ----- a stage stopped by bad input, under each command a user types ---------------------------------------------

ACCELERATE_FLAGS = ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
MISSING_DATA = "error: dataset path 'missing.jsonl' does not exist; check the path"


def launcher(processes: int) -> list[str]:
    """``python -m pipeline.launch`` with ``processes`` processes (two run over gloo on a CPU)."""
    command = [sys.executable, "-m", "pipeline.launch", "--num_processes", str(processes), *ACCELERATE_FLAGS]
    return command + (["--multi_gpu", "--main_process_port", "0"] if processes > 1 else [])


def make(processes: int, stage_args: list[str]) -> list[str]:
    """``make sft`` with the stage's arguments in ARGS. It runs the recipe only: the environment is this one (BIN,
    and -o: .venv is not reinstalled) and the demo inputs the recipe would build first are not needed."""
    keep = ["-o", ".venv/.installed", "-o", "data/demo/prefs_train.jsonl", "-o", "build/tiny-base/config.json"]
    variables = [f"BIN={Path(sys.executable).parent}", "RUN=bad", f"NPROC={processes}"]
    return ["make", "--no-print-directory", *keep, "sft", *variables, f"ARGS={shlex.join(stage_args)}"]


# What the `rlhf` console script runs.
RLHF = [sys.executable, "-c", "import sys; from pipeline.cli import main; sys.exit(main())"]
COMMANDS = {
    "python -m": lambda args: [sys.executable, "-m", "stages.sft", *args],
    "rlhf sft": lambda args: [*RLHF, "sft", *args],
    "rlhf launch": lambda args: [*RLHF, "launch", "--num_processes", "1", *ACCELERATE_FLAGS, "-m", "stages.sft", *args],
    "launch, 1 process": lambda args: [*launcher(1), "-m", "stages.sft", *args],
    "launch, 2 processes": lambda args: [*launcher(2), "-m", "stages.sft", *args],
    "make": lambda args: make(1, args),
    "make NPROC=2": lambda args: make(2, args),
}


@pytest.mark.parametrize("command", COMMANDS)
def test_bad_input_ends_with_the_stage_message_and_exit_code_2(command: str, tiny_base: Path, tmp_path: Path) -> None:
    stage_args = sft_args(tmp_path / "runs", "bad", tiny_base, "--dataset_name", "missing.jsonl")
    if command.startswith("make"):
        stage_args = stage_args[2:]  # the recipe gives --config itself
    result = subprocess.run(
        COMMANDS[command](stage_args), cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )

    assert result.returncode == EXIT_USER_ERROR, result.stderr[-3000:]
    lines = last_lines(result.stderr, 2)
    if command.startswith("make"):  # make always reports a failed recipe in one line of its own, with its code
        # "make[1]:" when the tests themselves run under make (`make test`)
        failed = r"make(\[\d+\])?: \*\*\* \[Makefile:\d+: sft\] Error 2"
        assert re.fullmatch(failed, lines.pop()), result.stderr[-3000:]
    assert lines[-1] == MISSING_DATA, result.stderr[-3000:]
    assert all(line == MISSING_DATA for line in result.stderr.splitlines() if "error: " in line)  # one a process
    assert "Traceback" not in result.stderr and "failed (exitcode" not in result.stderr


CRASH = "import os, sys\nprint('rank', os.environ.get('RANK', '0'), file=sys.stderr)\nraise RuntimeError('boom')\n"


@pytest.mark.parametrize("processes", [1, 2])
def test_a_crash_keeps_its_traceback_and_a_failing_exit_code(processes: int, tmp_path: Path) -> None:
    script = tmp_path / "crash.py"
    script.write_text(CRASH)
    result = subprocess.run(
        [*launcher(processes), str(script)], cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )

    assert result.returncode not in (0, EXIT_USER_ERROR)
    assert "RuntimeError: boom" in result.stderr  # the process's own traceback
    assert ("ChildFailedError" if processes > 1 else "CalledProcessError") in result.stderr  # the launcher's report


BAD_INPUT = [[2], [2, 2], [2, -15], [-15, 2, -9]]  # -15, -9: stopped by the launcher once one process failed
NOT_BAD_INPUT = [[1], [2, 1], [-15], [-9, -15], [137]]


@pytest.mark.parametrize("exit_codes", BAD_INPUT + NOT_BAD_INPUT)
def test_bad_input_only_when_every_failed_process_stopped_on_it(exit_codes: list[int]) -> None:
    assert stopped_on_user_error(exit_codes) is (exit_codes in BAD_INPUT)
