"""Entry points run as processes forked from the test process: ``python train.py ARGS`` and ``torchrun
--nproc_per_node=N train.py ARGS`` without a new interpreter. A new interpreter spends ~5 s importing torch, timm and
torchvision on the machines this suite runs on (2 cores); a fork starts in milliseconds with everything imported.

What a child runs is what the script runs: ``utils.errors.run_cli(module.main)`` with ``sys.argv`` set, in its own
session (signals reach it alone), in the repository, stdout and stderr to a log file; its exit code is that of
``run_cli``. Ranks get the environment torchrun gives (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), so the process group is made by the same code over the same
backend (gloo). What only torchrun or a new interpreter does (forwarding a signal to the workers, ending the others
when one fails, the interpreter's exit clean-up) stays tested through them.

Forking is safe here because the suite computes on one thread per process (tests/conftest.py): a process that forks
after OpenMP ran with several threads leaves its children waiting on threads that do not exist.
"""
from __future__ import annotations

import importlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


STARTED: list[Forked] = []  # this test's children: tests/conftest.py kills those still running when it ends


class Forked:
    """A forked entry point (or a test's own process), with what the tests use of :class:`subprocess.Popen`."""

    def __init__(self, entry: str | Callable[[], object], args: list[str], log: Path,
                 env: dict[str, str] | None = None) -> None:
        """``entry``: a module whose ``main`` runs (an entry point, ``sys.argv`` = its script and ``args``), or the
        function a test's own process runs."""
        if torch.get_num_threads() != 1:
            raise RuntimeError("forking after multi-threaded OpenMP work can hang the children: tests/conftest.py "
                               "sets one thread per test process")
        # imported here, in the parent: the children start with it
        main = importlib.import_module(entry).main if isinstance(entry, str) else entry
        script = f"{entry.replace('.', '/')}.py" if isinstance(entry, str) else entry.__name__
        log.touch()  # there when this returns (the caller reads it), written by the child
        sys.stdout.flush()
        sys.stderr.flush()
        self.returncode: int | None = None
        self.pid = os.fork()
        STARTED.append(self)
        if self.pid == 0:  # the child: never returns into the test process's stack
            code = 1
            try:
                os.setsid()
                os.chdir(REPO)
                out = open(log, "a", buffering=1)
                os.dup2(out.fileno(), 1)
                os.dup2(out.fileno(), 2)
                sys.stdout = sys.stderr = out
                logging.root.handlers.clear()  # as a new interpreter's (pytest's capture handlers are the parent's)
                logging.root.setLevel(logging.WARNING)
                os.environ.update(env or {})
                sys.argv = [script, *args]
                from utils.errors import run_cli
                try:
                    run_cli(main)
                    code = 0
                except SystemExit as done:
                    code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
            except BaseException:
                import traceback
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                os._exit(code)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float = 300) -> int:
        end = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > end:
                self.kill()
                raise TimeoutError(f"pid {self.pid} still running after {timeout:g} s")
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL to this process alone (as Popen.kill): its DataLoader workers end by their own means."""
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ranks(module: str, args: list[str], log: Path, nproc: int = 2, env: dict[str, str] | None = None
          ) -> list[Forked]:
    """``torchrun --standalone --nproc_per_node=nproc`` of an entry point: ``nproc`` forked ranks of one job, their
    output in one log (as torchrun's)."""
    port = str(free_port())
    return [Forked(module, args, log, {**(env or {}), "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(nproc),
                                       "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1",
                                       "MASTER_PORT": port}) for r in range(nproc)]


def run_ranks(module: str, args: list[str], log: Path, nproc: int = 2, timeout: float = 300,
              env: dict[str, str] | None = None) -> int:
    """Run a job of ``nproc`` forked ranks to its end: its exit code (the first failing rank's). Every rank must end
    by itself within ``timeout`` seconds (torchrun would end the others when one fails; waiting for them shows a
    rank left waiting in a collective)."""
    procs, end = ranks(module, args, log, nproc, env), time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs):
            if time.monotonic() > end:
                raise TimeoutError(f"{module} {' '.join(args)[:200]}: still running after {timeout:g} s; "
                                   f"{log}: {log.read_text()[-2000:]}")
            time.sleep(0.02)
        return next((p.returncode for p in procs if p.returncode), 0)
    finally:
        for p in procs:
            p.kill()
