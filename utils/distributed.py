"""torchrun-based data parallelism: process-group setup, the device of each rank, and the two things ranks exchange.

Launch with ``torchrun --nproc_per_node=K train.py ...`` (or ``NPROC=K sh train.sh``; several nodes: ``NNODES``,
``NODE_RANK``, ``MASTER_ADDR``). Without torchrun everything runs in one process and these helpers are no-ops.

The process group is NCCL on GPUs and gloo on the CPU (:func:`backend_for`), with the same set-up code in
production and in the CPU tests. NCCL has no CPU collectives, so every tensor this module hands to a collective is
made on the rank's own device, and :func:`_check_device` refuses any other, on the CPU too: a CPU tensor on a GPU
rank would fail at the first training step. Ranks exchange exactly two things in training: one (loss, stop)
reduction per training step and the validation predictions (two all-gathers per validation); after a stop request
they wait at one barrier for rank 0 to save. A scoring job (engine/jobs.py) exchanges whether any rank was stopped,
once at its end, and then the predictions.
No other module calls ``torch.distributed`` (a test checks this).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from utils.device import use_device
from utils.errors import AHIQError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"  # this rank's device: every collective tensor lives here

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    group: bool = False  # in a process group (several ranks, or one with AHIQ_FORCE_DDP=1)
    owner: bool = True  # this call made the group (and :func:`shutdown` ends it); False: joined one already there

    @property
    def enabled(self) -> bool:
        return self.group


def rank_device(device: str, gpu_ids: list[int], local_rank: int, local_world_size: int) -> str:
    """The device of local rank ``local_rank``: its own GPU (``--gpu_ids`` lists them when it names several, e.g.
    ``2,3``; otherwise GPUs 0..K-1), or the CPU. A GPU that is not there is a one-line error."""
    if not device.startswith("cuda"):
        return device
    ids = gpu_ids if len(gpu_ids) > 1 or local_world_size == 1 else list(range(local_world_size))
    count = torch.cuda.device_count()
    if len(gpu_ids) == 1 and gpu_ids[0] != 0 and local_world_size > 1:
        problem = (f"names one GPU for {local_world_size} processes per node; name one per process (e.g. gpu_ids "
                   "2,3), or leave it out for GPUs 0 to NPROC-1")
    elif len(ids) < local_world_size:
        problem = (f"names {len(ids)} GPUs for {local_world_size} processes per node; name one GPU per process, or "
                   "lower NPROC / --nproc_per_node")
    elif ids[local_rank] >= count:
        problem = (f"process {local_rank} of this node needs GPU {ids[local_rank]}, but this machine has {count} "
                   f"GPU(s) (0-{count - 1}); lower NPROC / --nproc_per_node to at most {count} or fix gpu_ids")
    else:
        return f"cuda:{ids[local_rank]}"
    raise AHIQError(f"gpu_ids {','.join(map(str, gpu_ids))}: {problem}")


def init_distributed(device: str, gpu_ids: list[int] | None = None, timeout_min: float = 60) -> DistInfo:
    """Join the torchrun process group when there is one; returns this rank's info (with its device). Under
    torchrun with one process there is none, unless ``AHIQ_FORCE_DDP=1`` (the GPU check: DDP and NCCL on one GPU).
    A group this process is in already (protocol.py's SLURM job: training, then its tests) is joined, not made
    again. ``timeout_min``: how long a rank waits at a collective for the others before the job fails."""
    check_launch()
    forced = os.environ.get("AHIQ_FORCE_DDP", "") not in ("", "0") and "RANK" in os.environ
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and not forced:
        use_device(device)
        return DistInfo(device=device)
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    device = rank_device(device, gpu_ids or [0], local, local_world)
    if dist.is_initialized():
        return DistInfo(rank, world, local, device, group=True, owner=False)
    kwargs = {"timeout": timedelta(minutes=timeout_min)}
    if device.startswith("cuda"):
        use_device(device)
        kwargs["device_id"] = torch.device(device)
    dist.init_process_group(backend_for(device), **kwargs)
    return DistInfo(rank, world, local, device, group=True)


def check_launch() -> None:
    """``srun python train.py`` (several tasks, no torchrun) starts processes that would each train alone and collide
    on the run folder: refused in one line."""
    tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS", "1") or 1)
    if tasks > 1 and "RANK" not in os.environ:
        raise AHIQError(f"this is one of {tasks} processes srun started without torchrun (SLURM_STEP_NUM_TASKS="
                        f"{tasks}): each would train alone, in the same run folder. Start one task per node that runs "
                        "torchrun (srun --ntasks-per-node=1 torchrun --nproc_per_node=GPUS train.py ...), or use "
                        "protocol.py --launcher slurm")


def backend_for(device: str) -> str:
    """NCCL alone on GPUs (every collective tensor is on the rank's GPU; a gloo group would also connect every rank
    by hostname at start-up, which fails where the hostname resolves to loopback), gloo on the CPU."""
    return "nccl" if device.startswith("cuda") else "gloo"


def shutdown(info: DistInfo, together: bool = False) -> None:
    """Leave the process group this process made. ``together``: every rank ends here (their work done), so they
    first wait for each other: gloo's teardown while a peer still finishes its last collective can hang (seen with
    torch 2.6 and 2.7). After a failure the others may be gone or elsewhere, so nothing waits for them."""
    if info.enabled and info.owner and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank."""
    if info.enabled:
        dist.barrier()


def _check_device(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if tensor.device != torch.device(info.device):
        raise RuntimeError(f"collective on a {tensor.device} tensor from rank {info.rank}, whose device is "
                           f"{info.device}: collective tensors must live on the rank's device (NCCL has no CPU ops)")
    return tensor


def reduce_step(loss: torch.Tensor, stop: bool, info: DistInfo) -> Callable[[], tuple[float, bool]]:
    """The one sync of a training step, started now and read later: the returned function gives the loss averaged
    over ranks and whether any rank was asked to stop. Started before backward and read after it, the exchange (and
    the host's wait for the loss value) overlaps the backward pass instead of stalling before it.

    Every rank gets the same answer, so all stop at the same step and a non-finite loss on one rank stops all.
    """
    if not info.enabled:
        value = loss.detach()
        return lambda: (value.item(), stop)
    value = loss.detach().float().reshape(())
    # the stop flag made on the device by a fill kernel: no host-to-device copy, which would wait for the forward
    t = torch.stack([value, torch.full_like(value, float(stop))])
    work = dist.all_reduce(_check_device(t, info), op=dist.ReduceOp.SUM, async_op=True)

    def result() -> tuple[float, bool]:
        work.wait()
        total, stops = t.tolist()
        return total / info.world_size, stops > 0

    return result


OUTCOMES = ("done", "stopped", "failed")  # of a step every rank takes, in rising order of what the others must know


def worst_outcome(outcome: str, info: DistInfo) -> str:
    """The worst of every rank's ``outcome`` (:data:`OUTCOMES`) of a shared step, so that all ranks act alike: a
    rank that failed (a damaged image of its share) or was asked to stop is known to the others before they meet
    in a gather, which they would otherwise wait in, or crash in when the failed rank exits. Every rank must call
    it once at the same point."""
    if not info.enabled:
        return outcome
    t = torch.full((1,), float(OUTCOMES.index(outcome)), device=info.device)
    dist.all_reduce(_check_device(t, info), op=dist.ReduceOp.MAX)
    return OUTCOMES[int(t.item())]


def failed_elsewhere() -> AHIQError:
    """What a rank says when another rank of its job failed (that rank names the cause)."""
    return AHIQError("another process of this job failed (its error is printed above); this one stopped with it",
                     kind="peer")


def gather_arrays(info: DistInfo, *arrays: np.ndarray) -> list[np.ndarray]:
    """Concatenate 1-D numeric arrays (same length on a rank, any length across ranks) over all ranks, in rank
    order; float64 on the wire, so integer indices below 2**53 and NaN labels come back exactly."""
    if not info.enabled:
        return list(arrays)
    local = torch.from_numpy(np.stack([np.asarray(a, np.float64) for a in arrays], axis=1)).to(info.device)
    count = torch.tensor([local.shape[0]], device=info.device)
    counts = [torch.zeros_like(count) for _ in range(info.world_size)]
    dist.all_gather(counts, _check_device(count, info))
    longest = max(int(c.item()) for c in counts)
    padded = torch.zeros(longest, len(arrays), dtype=torch.float64, device=info.device)
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(info.world_size)]
    dist.all_gather(parts, _check_device(padded, info))
    rows = torch.cat([p[: int(c.item())] for p, c in zip(parts, counts)]).cpu().numpy()
    return [rows[:, i].astype(np.asarray(a).dtype) for i, a in enumerate(arrays)]
