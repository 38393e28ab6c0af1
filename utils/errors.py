"""User-facing errors and the command-line wrapper that turns them into one-line messages.

Every problem caused by input (a file, an option, a checkpoint) raises :class:`AHIQError` with a message that
names the file and says what to do. Entry points run through :func:`run_cli`, which prints that message on one
line and exits non-zero, without a traceback. Programming errors keep their traceback.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable

_WORKER_PREFIX = "Caught AHIQError"


class AHIQError(Exception):
    """An error the user can fix: the message names the file or option and what to do.

    ``source``: the file (or option) at fault, written before the message; ``kind``: a name a caller may act on
    (e.g. ``"label_range"``, ``"missing_matplotlib"``). Callers decide by these, never by the message's text.
    """

    def __init__(self, message: str, *, source: str | None = None, kind: str | None = None) -> None:
        # A DataLoader worker re-raises our error wrapped in its traceback text; keep only our own message.
        if message.startswith(_WORKER_PREFIX):
            message = message.rsplit("AHIQError: ", 1)[-1].strip()
        self.message, self.source, self.kind = message, source, kind
        super().__init__(f"{source}: {message}" if source else message)

    def at(self, source: str) -> AHIQError:
        """The same error, said of ``source`` (a file the caller knows and the raiser did not)."""
        return AHIQError(self.message, source=source, kind=self.kind)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, said in one line (with what was finished, when the code that was stopped knows) and with
    the shell's exit code for the signal (130, 143)."""

    def __init__(self, message: str = "interrupted", code: int = 130) -> None:
        super().__init__(message)
        self.message, self.code = message, code


def _terminated(signum, _frame) -> None:
    raise Interrupted("stopped by SIGTERM", 128 + signum)


class StopRequest:
    """While in its ``with`` block, SIGINT/SIGTERM only set :attr:`signal` (its name): a loop finishes its current
    step (train.py: save last.pth; test.py: record the batch) and stops; the handlers that were there before are put
    back when the block ends (protocol.py trains and tests several runs)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal: str | None = None
        self._before: dict = {}

    def __enter__(self) -> StopRequest:
        self._before = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._before.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame) -> None:
        self.signal = signal.Signals(signum).name


def run_cli(main: Callable[[], object]) -> None:
    """Run an entry point. An :class:`AHIQError` (the project's own checks and file operations name the file) or
    Ctrl-C ends it with a one-line message and exit code 2/130; any other OS error (from a library: CUDA, shared
    memory, a codec) is printed with its cause and where it was raised, exit code 1. ``AHIQ_DEBUG=1`` shows the
    full traceback of any of them."""
    debug = os.environ.get("AHIQ_DEBUG", "") not in ("", "0")
    before = {}
    if threading.current_thread() is threading.main_thread():
        before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C raises again (utils/interrupt.py)
        signal.signal(signal.SIGTERM, _terminated)  # train.py's loop takes it over while it trains (StopRequest)
    try:
        _run(main, debug)
    finally:  # an entry point run in-process (the tests, a notebook) leaves the handlers it found
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _run(main: Callable[[], object], debug: bool) -> None:
    try:
        main()
    except AHIQError as err:
        if debug:
            raise
        _say(f"error: {err}")
        sys.exit(2)
    except OSError as err:
        if debug:
            raise
        _say(f"error: {describe(err)}; rerun with AHIQ_DEBUG=1 for the full traceback")
        sys.exit(1)
    except KeyboardInterrupt as err:
        _say(f"error: {err.message if isinstance(err, Interrupted) else 'interrupted'}")
        sys.exit(err.code if isinstance(err, Interrupted) else 130)


def describe(err: BaseException) -> str:
    """An exception, its cause and where it was raised, on one line."""
    where = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
    text = f"{type(err).__name__}: {err}"
    if where is not None:
        text += f" (raised in {where.filename}:{where.lineno}, {where.name})"
    cause = err.__cause__ or err.__context__
    if cause is not None:
        text += f", caused by {type(cause).__name__}: {cause}"
    return text


def _say(line: str) -> None:
    """One line to stderr in one write: the processes of a torchrun job share the stream, and their lines must not
    interleave (print writes the line and its end separately)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
