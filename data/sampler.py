"""The training sampler: a seeded shuffle per epoch, sharded over ranks, that can start in the middle of an epoch.

It yields ``(epoch, index)`` keys, so the dataset draws each sample's crop from (seed, epoch, index) even in
persistent worker processes, and resuming after ``step`` batches replays exactly the rest of the epoch.
"""
from __future__ import annotations

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
