"""User-facing errors and the command-line wrapper that turns them into one-line messages.

Every problem caused by input (a file, an option, a checkpoint) raises :class:`AHIQError` with a message that
names the file and says what to do. Entry points run through :func:`run_cli`, which prints that message on one
line and exits non-zero, without a traceback. Programming errors keep their traceback.
"""
from __future__ import annotations

import sys
from collections.abc import Callable

_WORKER_PREFIX = "Caught AHIQError"


class AHIQError(Exception):
    """An error the user can fix: the message names the file or option and what to do."""

    def __init__(self, message: str) -> None:
        # A DataLoader worker re-raises our error wrapped in its traceback text; keep only our own message.
        if message.startswith(_WORKER_PREFIX):
            message = message.rsplit("AHIQError: ", 1)[-1].strip()
        super().__init__(message)


def run_cli(main: Callable[[], object]) -> None:
    """Run an entry point; an :class:`AHIQError`, an OS error (a file or folder: permissions, full disk) or Ctrl-C
    ends it with a one-line message and exit code 2/130."""
    try:
        main()
    except AHIQError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:  # a file the user named or a folder they chose (read-only, full disk): no traceback
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}; check the path, its permissions and the free space",
              file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
