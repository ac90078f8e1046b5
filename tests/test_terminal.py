"""What a user sees at the terminal when a stage stops on bad input, through the real commands (subprocesses)."""

from __future__ import annotations

import subprocess
import sys

from pipeline.errors import EXIT_USER_ERROR
from tests.conftest import REPO, subprocess_env


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
