"""User-facing errors: one clear message, a non-zero exit, no traceback (but the user's own code's)."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

EXIT_USER_ERROR = 2


class PipelineError(Exception):
    """An error caused by the user's input (config, data, model path); its message says what to do."""


class UserCodeError(PipelineError):
    """An exception raised inside the user's own code (a reward function, say): its traceback is shown, since it
    points into their code, and then the message naming which of their pieces failed."""


def fail(message: str) -> NoReturn:
    """Print ``message`` as an error and exit with :data:`EXIT_USER_ERROR`."""
    close_progress_bars()
    sys.stderr.write(f"error: {message}\n")  # one write: several processes' lines do not mix
    sys.stderr.flush()
    sys.exit(EXIT_USER_ERROR)


def run_main(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run a stage's ``main``, turning :class:`PipelineError` into a one-line message and exit code 2."""
    try:
        main(argv)
    except PipelineError as error:
        if isinstance(error, UserCodeError) and error.__cause__ is not None:
            close_progress_bars()
            traceback.print_exception(error.__cause__, file=sys.stderr)
        fail(str(error))


def close_progress_bars() -> None:
    """Close the open tqdm progress bars (transformers' and datasets' are tqdm), innermost first, so that what is
    printed next starts on a line of its own and no bar is drawn again after it when the process exits."""
    tqdm = sys.modules.get("tqdm")
    if tqdm is None:  # never imported: no bar is open
        return
    for bar in sorted(tqdm.tqdm._instances, key=lambda bar: abs(bar.pos), reverse=True):
        bar.close()
