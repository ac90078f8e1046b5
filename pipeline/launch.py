"""``python -m pipeline.launch [accelerate launch options] -m stages.<name> [stage options]``.

``accelerate launch``, run in this process, with one difference: a stage that stopped on bad input (its
``error: ...`` line printed, exit code 2) ends the launch with exit code 2 and nothing after its message, with one
process or several. accelerate's own command ends such a run with a traceback of its launcher (and torch elastic's
failure report with several processes) and exit code 1. Crashes keep those reports.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from collections.abc import Iterable

from accelerate.commands.launch import launch_command, launch_command_parser
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from pipeline.errors import EXIT_USER_ERROR

# How torch elastic stops the other processes once one has failed.
_STOPPED_BY_LAUNCHER = {-signal.SIGTERM, -signal.SIGKILL}


def stopped_on_user_error(exit_codes: Iterable[int]) -> bool:
    """Whether the failed processes of a launch stopped on bad input: one at least exited with code 2 and every
    other one did the same or was stopped by the launcher because of it."""
    codes = set(exit_codes)
    return EXIT_USER_ERROR in codes and codes <= {EXIT_USER_ERROR, *_STOPPED_BY_LAUNCHER}


class _ShutdownLog(logging.Filter):
    """Holds back torch elastic's lines about stopping the processes after one has failed ("Sending process ...
    closing signal", "failed (exitcode: ...)") until the launch is over; :meth:`discard` drops them, after bad input.
    """

    LOGGER = "torch.distributed.elastic.multiprocessing.api"
    MESSAGES = ("failed (exitcode", "Sending process", "Unable to shutdown process")

    def __init__(self) -> None:
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith(self.MESSAGES):
            self.held.append(record)
            return False
        return True

    def discard(self) -> None:
        self.held.clear()

    def __enter__(self) -> _ShutdownLog:
        logging.getLogger(self.LOGGER).addFilter(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        logger = logging.getLogger(self.LOGGER)
        logger.removeFilter(self)
        for record in self.held:
            logger.handle(record)


def main(argv: list[str] | None = None) -> None:
    """Launch like ``accelerate launch`` with ``argv`` (default ``sys.argv[1:]``); exit code 2 on bad input."""
    args = launch_command_parser().parse_args(argv)
    quiet, args.quiet = args.quiet, False  # accelerate's --quiet would report every failure as exit code 1
    with _ShutdownLog() as shutdown_log:
        try:
            launch_command(args)
            return
        except subprocess.CalledProcessError as error:  # one process
            if error.returncode != EXIT_USER_ERROR:
                if quiet:
                    sys.exit(1)
                raise
        except ChildFailedError as error:  # several processes (torch elastic)
            if not stopped_on_user_error(failure.exitcode for failure in error.failures.values()):
                raise
        shutdown_log.discard()
    sys.exit(EXIT_USER_ERROR)


if __name__ == "__main__":
    main()
