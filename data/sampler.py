"""The training sampler: a seeded shuffle per epoch, sharded over ranks, that can start in the middle of an epoch;
and the set-up of DataLoader workers.

It yields ``(epoch, index)`` keys, so the dataset draws each sample's crop from (seed, epoch, index) even in
persistent worker processes, and resuming after ``step`` batches replays exactly the rest of the epoch.
:func:`own_process_group` sets up every DataLoader worker (stops belong to the main process; workers die with it).
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler):
    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.seed, self.rank, self.world_size = n, seed, rank, world_size
        self.epoch, self.skip = 0, 0
        self.per_rank = -(-n // world_size)  # every rank the same number of samples (the shuffle wraps around)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Epoch to draw; ``skip`` samples of this rank's share were already used (mid-epoch resume)."""
        self.epoch, self.skip = epoch, skip

    def indices(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        order += order[: self.per_rank * self.world_size - self.n]
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, i) for i in self.indices()[self.skip:]])

    def __len__(self) -> int:
        return self.per_rank - self.skip


def own_process_group(_worker_id: int) -> None:
    """``worker_init_fn`` of every DataLoader: the main process owns every stop, and a worker never outlives it.

    - Its own process group: torchrun and a terminal's Ctrl-C signal a whole process group, which no longer holds
      the workers.
    - SIGTERM and SIGINT ignored: SLURM (cgroup process tracking: ``scancel``, the time limit) and ``kill`` of every
      process of a job signal each process, workers included. A worker killed by it would make the main process
      raise "DataLoader worker ... killed by signal" wherever it is, a checkpoint save included; ignored, the
      trainer finishes the step, saves last.pth and ends its DataLoader, which ends the workers.
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
