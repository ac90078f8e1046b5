"""User-facing errors: one clear message, a non-zero exit, no traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn

EXIT_USER_ERROR = 2


class PipelineError(Exception):
    """An error caused by the user's input (config, data, model path); its message says what to do."""


def fail(message: str) -> NoReturn:
    """Print ``message`` as an error and exit with :data:`EXIT_USER_ERROR`."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


def run_main(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run a stage's ``main``, turning :class:`PipelineError` into a one-line message and exit code 2."""
    try:
        main(argv)
    except PipelineError as error:
        fail(str(error))
