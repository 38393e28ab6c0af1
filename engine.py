"""The training step loop and the one scoring loop, shared by train.py (validation) and test.py.

A scoring batch holds B images with K ensemble crops each, as uint8. The B*K crop pairs go through the model in
chunks of at most ``crops_per_forward`` pairs, and each image's score is the mean over its K crops (as in the
official test). A training batch holds one crop per image; the loss is the MSE to the min-max normalised MOS.
"""
from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from models import AHIQ

log = logging.getLogger("ahiq.engine")


def to_unit(x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """uint8 crops to float [0, 1] on ``device`` (the copy happens while still uint8: 4x less to transfer)."""
    x = x.to(device, non_blocking=True)
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def autocast(device: torch.device | str, amp_dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on CUDA when asked for; a no-op otherwise."""
    if amp_dtype is None or not str(device).startswith("cuda"):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=amp_dtype)


class ChunkSize:
    """Crop pairs per model forward; halved (and kept smaller for the rest of the run) when CUDA runs out of memory,
    so ``--crops_per_forward`` can be set high and the largest size that fits is found automatically."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"crops per forward must be at least 1, got {size}")
        self.size = size

    def shrink(self) -> bool:
        if self.size == 1:
            return False
        self.size //= 2
        log.warning("out of GPU memory: continuing with %d crop pairs per forward (--crops_per_forward)", self.size)
        return True


@torch.inference_mode()
def score_crops(model: AHIQ, dis: torch.Tensor, ref: torch.Tensor, crops_per_forward: int | ChunkSize = 50,
                amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """(B,) scores of (B, K, 3, S, S) uint8 (or [0,1] float) crop stacks, averaged over the K crops.

    The B*K crop pairs go through the model in chunks; a chunk that runs out of memory is retried at half the size.
    Every crop is scored on its own, so chunking does not change the scores (beyond float rounding).
    """
    chunk = crops_per_forward if isinstance(crops_per_forward, ChunkSize) else ChunkSize(crops_per_forward)
    b, k = dis.shape[:2]
    device = next(model.regressor.parameters()).device
    dis, ref = dis.flatten(0, 1), ref.flatten(0, 1)
    scores: list[torch.Tensor] = []
    start = 0
    while start < b * k:
        stop = start + chunk.size
        try:
            d, r = to_unit(dis[start:stop], device), to_unit(ref[start:stop], device)
            with autocast(device, amp_dtype):
                scores.append(model(d, r).float().flatten())
        except torch.OutOfMemoryError:
            d = r = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if not chunk.shrink():
                raise
            continue
        start = stop
    return torch.cat(scores).view(b, k).mean(dim=1)


@dataclass
class Predictions:
    index: np.ndarray  # position of each image in the dataset's list
    names: list[str]
    preds: np.ndarray
    labels: np.ndarray  # NaN where the list has no score


def predict(model: AHIQ, loader: DataLoader, crops_per_forward: int = 50, amp_dtype: torch.dtype | None = None,
            progress: bool = True, desc: str = "scoring") -> Predictions:
    """Predictions for every image the loader yields, in loader order."""
    was_training = model.training
    model.eval()
    chunk = ChunkSize(crops_per_forward)  # shrinks once for the whole loop if memory runs out
    index, names, preds, labels = [], [], [], []
    for batch in tqdm(loader, desc=desc, disable=not progress, dynamic_ncols=True, leave=False):
        preds.append(score_crops(model, batch["dis"], batch["ref"], chunk, amp_dtype).cpu())
        names.extend(batch["name"])
        labels.append(batch["label"].double())
        index.append(batch["index"])
    model.train(was_training)
    if not names:  # an empty shard (more ranks than validation images)
        return Predictions(np.zeros(0, np.int64), [], np.zeros(0), np.zeros(0))
    return Predictions(torch.cat(index).numpy(), names, torch.cat(preds).double().numpy(),
                       torch.cat(labels).numpy())


@dataclass
class StepResult:
    losses: list[float]
    interrupted: bool


StepSync = Callable[[torch.Tensor], tuple[float, bool]]  # loss -> (loss averaged over ranks, stop now)


def train_one_epoch(model: torch.nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, device: str, amp_dtype: torch.dtype | None,
                    scaler: torch.amp.GradScaler | None, sync: StepSync, on_step: Callable[[float, float], None],
                    progress: bool = True, desc: str = "train") -> StepResult:
    """One pass over ``loader``; the LR scheduler steps every iteration (official).

    ``sync`` is the one exchange between ranks per step (:func:`utils.distributed.reduce_step`): it returns the loss
    averaged over ranks and whether any rank was asked to stop, so every rank stops at the same step and a
    non-finite loss stops all of them before the optimizer step.
    """
    model.train()
    losses: list[float] = []
    bar = tqdm(loader, desc=desc, disable=not progress, dynamic_ncols=True, leave=False)
    for batch in bar:
        dis, ref = to_unit(batch["dis"][:, 0], device), to_unit(batch["ref"][:, 0], device)
        label = batch["label"].to(device, torch.float32, non_blocking=True)
        with autocast(device, amp_dtype):
            pred = model(dis, ref)
        loss = F.mse_loss(pred.float().view(-1), label)
        mean_loss, stop = sync(loss)
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"training loss is {mean_loss}; lower --learning_rate or disable --amp")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        losses.append(mean_loss)
        on_step(mean_loss, lr)
        bar.set_postfix(loss=f"{mean_loss:.4f}")
        if stop:
            return StepResult(losses, True)
    return StepResult(losses, False)
