"""DataLoader worker processes: how they are set up, and how they end.

Every loader of this project is made by :func:`make_loader`. Its workers leave stops to the main process (they
ignore SIGTERM/SIGINT: a SLURM ``scancel`` signals every process of a job, and a worker killed by it would break the
checkpoint save in progress) and die with it. Since they ignore SIGTERM, Python's own clean-up at exit (which ends
daemonic children with ``terminate()``, a SIGTERM, then joins them) would wait for them forever; so the workers are
ended explicitly (:func:`end_workers`) when a run, a validation or a scoring pass ends, on every path, and a guard
at exit ends whatever is left within :data:`EXIT_GRACE_S` seconds, killing it if it must, in one line.
"""
from __future__ import annotations

import atexit
import ctypes
import multiprocessing
import os
import signal
import sys
import time
import weakref
from typing import Any

from torch.utils.data import DataLoader
from torch.utils.data import _utils as torch_data_utils

EXIT_GRACE_S = 3.0  # how long the exit guard waits for workers before it kills them
JOIN_S = 0.5  # how long ending a loader waits for each busy worker

_loaders: weakref.WeakSet = weakref.WeakSet()  # loaders with workers, for the exit guard
_guard_installed = False


def make_loader(dataset, **kwargs: Any) -> DataLoader:
    """A DataLoader whose workers are set up by :func:`own_process_group` and ended at exit at the latest."""
    global _guard_installed
    loader = DataLoader(dataset, worker_init_fn=own_process_group, **kwargs)
    if loader.num_workers > 0:
        _loaders.add(loader)
        if not _guard_installed:
            atexit.register(_end_workers_at_exit)
            _guard_installed = True
    return loader


def end_workers(source: DataLoader | Any) -> None:
    """End the worker processes of a loader's persistent iterator, or of an iterator of a loader, now (they read
    no more data; a persistent loader starts new ones if it is iterated again). Nothing to do without workers."""
    iterator = getattr(source, "_iterator", None) if isinstance(source, DataLoader) else source
    shutdown = getattr(iterator, "_shutdown_workers", None)  # only multi-process iterators have workers
    if shutdown is not None:
        # PyTorch's shutdown posts each worker its end, then waits for each in turn (twice, with a SIGTERM the
        # workers ignore in between) MP_STATUS_CHECK_INTERVAL seconds: 10 s a busy worker. A worker still busy
        # after JOIN_S ends on its own once its batch is done (its end is posted); the exit guard kills the rest.
        saved, torch_data_utils.MP_STATUS_CHECK_INTERVAL = torch_data_utils.MP_STATUS_CHECK_INTERVAL, JOIN_S
        try:
            shutdown()
        finally:
            torch_data_utils.MP_STATUS_CHECK_INTERVAL = saved
    if isinstance(source, DataLoader):
        source._iterator = None


def _end_workers_at_exit() -> None:
    """The guard: end the workers of loaders still alive, then give any worker left :data:`EXIT_GRACE_S` seconds
    and kill it, saying so in one line (without it, a worker that ignores SIGTERM holds the exit forever)."""
    for loader in list(_loaders):
        try:
            end_workers(loader)
        except Exception:  # noqa: BLE001 - at exit, a worker's state is not worth a traceback; the kill follows
            pass
    left = [p for p in multiprocessing.active_children() if p.daemon]
    deadline = time.monotonic() + EXIT_GRACE_S
    for p in left:
        p.join(max(0.0, deadline - time.monotonic()))
    stuck = [p for p in left if p.is_alive()]
    for p in stuck:
        p.kill()
        p.join(1.0)
    if stuck:
        sys.stderr.write(f"warning: {len(stuck)} DataLoader worker process(es) still running at exit were killed "
                         f"after {EXIT_GRACE_S:g} s\n")
        sys.stderr.flush()


def own_process_group(_worker_id: int) -> None:
    """``worker_init_fn`` of every DataLoader: the main process owns every stop, and a worker never outlives it.

    - Its own process group: torchrun and a terminal's Ctrl-C signal a whole process group, which no longer holds
      the workers.
    - SIGTERM and SIGINT ignored: SLURM (cgroup process tracking: ``scancel``, the time limit) and ``kill`` of every
      process of a job signal each process, workers included. A worker killed by it would make the main process
      raise "DataLoader worker ... killed by signal" wherever it is, a checkpoint save included; ignored, the
      trainer finishes the step, saves last.pth and ends its workers (:func:`end_workers`).
    - Killed with its parent (Linux: ``PR_SET_PDEATHSIG``): when the main process dies without ending them (``kill
      -9``, an OOM kill), the workers get SIGKILL at once instead of polling for it every 5 seconds while they hold
      memory and open files.
    """
    if hasattr(os, "setpgid"):  # POSIX; elsewhere there are no process-group signals to avoid
        os.setpgid(0, 0)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()


PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """SIGKILL to this process when its parent ends (Linux); nothing elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl (another libc): the DataLoader's own 5 s watchdog remains
        return
    if os.getppid() != parent:  # the parent ended before the request took effect
        os._exit(1)
