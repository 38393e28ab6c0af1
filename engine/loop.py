"""The training step loop and the one scoring loop (test.py, validation in train.py, predict.py, the API, protocol.py).

A scoring batch holds B images with their crops (K each for an ensemble, one per window of the image for the grid),
as uint8. Each distinct (reference image, window) goes through the reference side of the model once
(:class:`models.ahiq.ReferenceFeatures`) and is kept while distorted images still need it; each distinct distorted
(image, window) goes through the rest, in chunks of at most ``crops_per_forward``, and each image's score is the mean
over its crops (as in the official test). The same forward gives the patch maps (``keep_maps``). A training batch
holds one crop per image; the loss is the MSE to the min-max normalised MOS.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from data.pair_dataset import PairDataset
from data.workers import end_workers, make_loader
from models import AHIQ
from models.ahiq import ReferenceFeatures, check_maps
from utils.device import autocast
from utils.errors import AHIQError

log = logging.getLogger("ahiq.engine")


def to_unit(x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """uint8 crops to float [0, 1] on ``device`` (the copy happens while still uint8: 4x less to transfer)."""
    x = x.to(device, non_blocking=True)
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


class ChunkSize:
    """Crop pairs per model forward; halved (and kept smaller for the rest of the run) when CUDA runs out of memory,
    so ``--crops_per_forward`` can be set high and the largest size that fits is found automatically."""

    def __init__(self, size: int) -> None:
        self.size = size

    def shrink(self) -> bool:
        if self.size == 1:
            return False
        self.size //= 2
        log.warning("out of GPU memory: continuing with %d crop pairs per forward (--crops_per_forward)", self.size)
        return True


class ReferenceCache:
    """Reference features by key (reference image, window): ``key[0]`` names the reference. All of a reference's
    windows are kept while distorted images of it are still ahead.

    ``uses`` counts, per reference, the distorted images of the work ahead (known without decoding anything: the
    windows themselves are drawn in the loader's workers); a reference's features are freed once its count reaches
    zero. Without counts everything is freed at the end of the batch (nothing is shared across batches)."""

    def __init__(self, uses: Counter | None = None) -> None:
        self.features: dict[Hashable, ReferenceFeatures] = {}
        self.uses = uses
        self._held: dict[Hashable, list[Hashable]] = {}  # per reference, the keys of its features

    def put(self, key: Hashable, features: ReferenceFeatures) -> None:
        self.features[key] = features
        self._held.setdefault(key[0], []).append(key)

    def release(self, keys: list[Hashable], counts: list[int]) -> None:
        """The batch's images are done: ``counts[b]`` consecutive ``keys`` are image b's crops."""
        if self.uses is None:
            self.features.clear()
            self._held.clear()
            return
        for start in np.cumsum([0, *counts[:-1]]).tolist():
            ref = keys[start][0]
            self.uses[ref] -= 1
            if self.uses[ref] <= 0:
                for key in self._held.pop(ref, []):
                    self.features.pop(key, None)


def _in_chunks(n: int, chunk: ChunkSize, run: Callable[[slice], None], device: torch.device) -> None:
    """``run`` over slices of at most ``chunk.size`` of range(n); a slice that runs out of CUDA memory is retried at
    half the size (kept smaller for the rest of the run)."""
    start = 0
    while start < n:
        stop = min(start + chunk.size, n)
        try:
            run(slice(start, stop))
        except torch.OutOfMemoryError:
            if not chunk.shrink():
                raise
        else:
            start = stop
            continue
        if device.type == "cuda":  # here, out of the except block, the failed chunk's tensors are released
            torch.cuda.empty_cache()


@dataclass
class BatchScores:
    """Scores of a batch: (B,) per image, and with ``keep_maps`` the patch maps of every crop, (N, h, w) in crop
    order (``w`` None with mean pooling)."""

    scores: torch.Tensor
    f: torch.Tensor | None = None
    w: torch.Tensor | None = None


def _first_rows(keys: list[Hashable]) -> tuple[list[int], list[int]]:
    """The first row of each distinct key, and for every row the position of its key among them."""
    first: dict[Hashable, int] = {}
    rows: list[int] = []
    inverse = []
    for i, key in enumerate(keys):
        if key not in first:
            first[key] = len(rows)
            rows.append(i)
        inverse.append(first[key])
    return rows, inverse


@torch.inference_mode()
def score_batch(model: AHIQ, dis: torch.Tensor, ref: torch.Tensor, counts: list[int], keys: list[Hashable],
                cache: ReferenceCache, chunk: ChunkSize, amp_dtype: torch.dtype | None = None,
                dis_keys: list[Hashable] | None = None, keep_maps: bool = False,
                on_crops: Callable[[int], None] | None = None) -> BatchScores:
    """Scores of B images from their N crops (N, 3, S, S), uint8 or [0, 1] float: ``counts[b]`` consecutive crops
    per image, each image's score the mean over its crops (as in the official test).

    ``keys[n]`` names the reference crop of ``ref[n]`` (reference image and window): the reference features of a
    key not in ``cache`` are computed once, in chunks, and every distorted crop with that key is scored against
    them. ``dis_keys[n]`` names the distorted crop (image and window): a window drawn twice for one image is scored
    once and counted twice. ``on_crops(k)``: called as each chunk of distorted crops is done (k crops; progress).
    The result equals scoring every pair on its own (beyond float rounding). The cache is then released for this
    batch's keys.
    """
    device = model.device
    missing = [i for i in _first_rows(keys)[0] if keys[i] not in cache.features]  # a row per key to compute
    unique, inverse = _first_rows(dis_keys if dis_keys is not None else list(range(len(keys))))
    # one copy of the batch to the device (asynchronous from the loader's pinned memory) and one of the rows to
    # take, then every chunk is indexed on the device: no pageable copy, no wait per chunk
    dis, ref = dis.to(device, non_blocking=True), ref.to(device, non_blocking=True)
    rows_at = torch.tensor(missing + unique, dtype=torch.long).to(device, non_blocking=True)
    missing_at, unique_at = rows_at[:len(missing)], rows_at[len(missing):]

    def references(rows: slice) -> None:
        with autocast(device, amp_dtype):
            feats = model.reference(to_unit(ref[missing_at[rows]], device))
        for j, i in enumerate(missing[rows]):
            cache.put(keys[i], feats[j:j + 1])

    copies = Counter(inverse)  # how many crops each computed row stands for
    scores = torch.empty(len(unique), device=device)  # read back once, at the end of the batch
    f_maps: list[torch.Tensor] = []
    w_maps: list[torch.Tensor] = []

    def distorted(rows: slice) -> None:
        feats = ReferenceFeatures.cat([cache.features[keys[i]] for i in unique[rows]])
        with autocast(device, amp_dtype):
            f, w = model.score_maps(to_unit(dis[unique_at[rows]], device), feats)
        f, w = f.float(), None if w is None else w.float()  # pooled in fp32: a score is never rounded to bf16
        scores[rows] = model.pool(f, w).flatten()
        if keep_maps:
            f_maps.append(f[:, 0])
            if w is not None:
                w_maps.append(w[:, 0])
        if on_crops is not None:
            on_crops(sum(copies[j] for j in range(rows.start, rows.stop)))

    _in_chunks(len(missing), chunk, references, device)
    _in_chunks(len(unique), chunk, distorted, device)
    cache.release(keys, list(counts))
    per_crop = scores.cpu()[inverse]
    out = BatchScores(torch.stack([part.mean() for part in per_crop.split(list(counts))]))
    if keep_maps:
        out.f = torch.cat(f_maps).cpu()[inverse]
        out.w = torch.cat(w_maps).cpu()[inverse] if w_maps else None
    return out


@torch.inference_mode()
def score_batch_per_call(model: AHIQ, dis: torch.Tensor, ref: torch.Tensor, amp_dtype: torch.dtype | None = None
                         ) -> torch.Tensor:
    """(B,) scores of (B, K, 3, S, S) crop stacks the way the released test.py computes them with ``bn_stats``
    batch: per crop index, the B reference crops in one model call and the B distorted crops in another, the
    ResNet's BatchNorm normalising with the statistics of each call (:meth:`models.AHIQ.batch_statistics`). Nothing
    is shared or chunked: the calls are the statistics."""
    device = model.device
    dis, ref = dis.to(device, non_blocking=True), ref.to(device, non_blocking=True)
    total = torch.zeros(dis.shape[0], dtype=torch.float64, device=device)  # read back once
    with model.batch_statistics(), autocast(device, amp_dtype):
        for k in range(dis.shape[1]):
            feats = model.reference(to_unit(ref[:, k], device))
            total += model.score(to_unit(dis[:, k], device), feats).double().flatten()
    return (total.cpu() / dis.shape[1]).float()


def score_crops(model: AHIQ, dis: torch.Tensor, ref: torch.Tensor,
                crops_per_forward: int | ChunkSize | None = None, amp_dtype: torch.dtype | None = None,
                bn_stats: str = "running", keep_maps: bool = False) -> BatchScores:
    """Scores of (B, K, 3, S, S) crop stacks whose references are all distinct (the Python API on tensors,
    benchmarks), ``crops_per_forward`` crop pairs per forward (None: all at once); ``keep_maps``: with every crop's
    patch maps (not with ``bn_stats`` batch)."""
    check_maps(bn_stats, keep_maps)
    if bn_stats == "batch":
        return BatchScores(score_batch_per_call(model, dis, ref, amp_dtype))
    b, k = dis.shape[:2]
    chunk = crops_per_forward if isinstance(crops_per_forward, ChunkSize) else ChunkSize(crops_per_forward or b * k)
    keys = [(i, j) for i in range(b) for j in range(k)]
    return score_batch(model, dis.flatten(0, 1), ref.flatten(0, 1), [k] * b, keys, ReferenceCache(), chunk,
                       amp_dtype, keep_maps=keep_maps)


def collate_crops(items: list[dict]) -> dict:
    """A scoring batch whose images may have different numbers of crops: the crops of all images in one (N, 3, S, S)
    stack, ``counts`` crops per image."""
    return {"dis": torch.cat([it["dis"] for it in items]), "ref": torch.cat([it["ref"] for it in items]),
            "counts": [len(it["dis"]) for it in items], "name": [it["name"] for it in items],
            "windows": [it["windows"] for it in items],
            "label": torch.tensor([it["label"] for it in items], dtype=torch.float64),
            "index": torch.tensor([it["index"] for it in items])}


class ScoringStopped(Exception):
    """Raised by :func:`predict` between batches when its ``stop`` callable says so (a stop signal in training)."""


@dataclass
class Predictions:
    index: np.ndarray  # position of each image in the dataset's list
    names: list[str]
    preds: np.ndarray
    labels: np.ndarray  # NaN where the list has no score
    maps: dict[int, BatchScores] | None = None  # with keep_maps: per image, the patch maps of its crops (f, w)


def grouped_by_reference(indices: list[int], reference_of: Callable[[int], Hashable]) -> list[int]:
    """``indices`` reordered so that the images of one reference follow each other (references in order of first
    appearance, list order within one): each reference's features are then computed once and freed early."""
    groups: dict[Hashable, list[int]] = {}
    for i in indices:
        groups.setdefault(reference_of(i), []).append(i)
    return [i for group in groups.values() for i in group]


def reference_shards(indices: list[int], reference_of: Callable[[int], Hashable], world: int) -> list[list[int]]:
    """``indices`` split over ``world`` ranks by whole reference groups (largest first, each to the rank with the
    fewest images so far; deterministic), so no rank recomputes another's reference windows; each shard in index
    order. Shard sizes differ by at most the largest group."""
    groups: dict[Hashable, list[int]] = {}
    for i in indices:
        groups.setdefault(reference_of(i), []).append(i)
    shards: list[list[int]] = [[] for _ in range(world)]
    for group in sorted(groups.values(), key=len, reverse=True):
        min(shards, key=len).extend(group)
    return [sorted(s) for s in shards]


def predict(model: AHIQ, dataset: PairDataset, indices: list[int] | None, batch_size: int,
            num_workers: int, crops_per_forward: int, amp_dtype: torch.dtype | None = None,
            progress: bool = True, desc: str = "scoring", bn_stats: str = "running", keep_maps: bool = False,
            stop: Callable[[], bool] | None = None,
            on_batch: Callable[[list[int], list[float]], None] | None = None) -> Predictions:
    """Predictions for the images ``indices`` of ``dataset`` (default: all), returned in the order of ``indices``.

    ``bn_stats`` running (default): the images are loaded grouped by reference, so each (reference, window) is
    computed once for all its distorted images (:func:`score_batch`) and freed after the last of them: a list that
    never repeats a reference costs what scoring each pair on its own costs. ``batch``: the released test.py's
    computation, batches of ``batch_size`` in list order, two model calls per batch and crop index
    (:func:`score_batch_per_call`); an incomplete last batch (which the released loader drops) is scored the same
    way, with the statistics of its own crops. ``keep_maps``: also the patch maps of every crop (running only).
    ``stop``: checked after every batch; when it returns True, :class:`ScoringStopped` is raised. ``on_batch``:
    given each finished batch's dataset indices and scores (a job's record of its progress, engine/jobs.py).
    """
    indices = list(range(len(dataset))) if indices is None else list(indices)
    was_training = model.training
    model.eval()
    device = model.device
    check_maps(bn_stats, keep_maps)
    released = bn_stats == "batch"
    order = indices if released else grouped_by_reference(indices, dataset.reference_key)
    cache = ReferenceCache(Counter(dataset.reference_key(i) for i in order))
    chunk = ChunkSize(crops_per_forward)  # shrinks once for the whole loop if memory runs out
    loader = make_loader(Subset(dataset, order), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                         pin_memory=device.type == "cuda", collate_fn=collate_crops)
    done: dict[int, tuple[str, float, float]] = {}
    maps: dict[int, BatchScores] = {}
    total = sum(map(dataset.crop_count, order)) if not released else None  # in crops: a long grid moves too
    bar = tqdm(total=total, desc=desc, unit="crop", disable=not progress, dynamic_ncols=True, leave=False)
    batches = iter(loader)
    try:
        for batch in batches:
            index, counts = batch["index"].tolist(), batch["counts"]
            if released:  # fixed ensembles: every image has the same number of crops
                stack = (len(counts), counts[0], *batch["dis"].shape[1:])
                scores = score_batch_per_call(model, batch["dis"].view(stack), batch["ref"].view(stack), amp_dtype)
                bar.update(sum(counts))
            else:
                drawn = list(zip(index, batch["windows"]))  # each image's windows, drawn in the loader's workers
                keys = [(dataset.reference_key(i), top, left) for i, windows in drawn for top, left in windows]
                dis_keys = [(i, top, left) for i, windows in drawn for top, left in windows]
                out = score_batch(model, batch["dis"], batch["ref"], counts, keys, cache, chunk, amp_dtype,
                                  dis_keys=dis_keys, keep_maps=keep_maps, on_crops=bar.update)
                scores = out.scores
                if keep_maps:
                    bounds = np.cumsum([0, *counts])
                    for j, (i, lo, hi) in enumerate(zip(index, bounds[:-1], bounds[1:])):
                        maps[i] = BatchScores(out.scores[j], out.f[lo:hi], None if out.w is None else out.w[lo:hi])
            scores = scores.tolist()
            for i, name, score, label in zip(index, batch["name"], scores, batch["label"].tolist()):
                done[i] = (name, score, label)
            if on_batch is not None:
                on_batch(index, scores)
            if stop is not None and stop():
                raise ScoringStopped()
    finally:  # workers ended, the bar erased and the model's mode put back, also when a batch fails or a stop comes
        end_workers(batches)
        bar.close()
        model.train(was_training)
    rows = [done[i] for i in indices]
    return Predictions(np.asarray(indices, dtype=np.int64), [r[0] for r in rows],
                       np.asarray([r[1] for r in rows], dtype=np.float64), np.asarray([r[2] for r in rows]),
                       maps if keep_maps else None)


@dataclass
class StepResult:
    losses: list[float]
    interrupted: bool


# loss -> a function giving (loss averaged over ranks, stop now), read once the backward pass is queued
StepSync = Callable[[torch.Tensor], Callable[[], tuple[float, bool]]]


def train_one_epoch(model: torch.nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, device: str, amp_dtype: torch.dtype | None,
                    scaler: torch.amp.GradScaler | None, sync: StepSync, on_step: Callable[[float, float], None],
                    progress: bool = True, desc: str = "train", every: int = 1) -> StepResult:
    """One pass over ``loader``; the LR scheduler steps every iteration (official). The progress bar shows the
    loss of the first step and of every ``every``-th after.

    ``sync`` is the one exchange between ranks per step (:func:`utils.distributed.reduce_step`), started before
    backward and read after it: the loss averaged over ranks and whether any rank was asked to stop, so every rank
    stops at the same step and a non-finite loss stops all of them before the optimizer step.
    """
    model.train()
    losses: list[float] = []
    bar = tqdm(loader, desc=desc, disable=not progress, dynamic_ncols=True, leave=False)
    for batch in bar:
        dis, ref = to_unit(batch["dis"][:, 0], device), to_unit(batch["ref"][:, 0], device)
        label = batch["label"].to(device, non_blocking=True).float()  # converted on the device: the copy stays async
        with autocast(device, amp_dtype):
            pred = model(dis, ref)
        loss = F.mse_loss(pred.float().view(-1), label)
        pending = sync(loss)
        optimizer.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        mean_loss, stop = pending()
        if not math.isfinite(mean_loss):
            raise AHIQError(f"the training loss became {mean_loss} at step {len(losses) + 1} of this epoch (no weight "
                            "was changed by it); lower --learning_rate, or drop --amp / use --amp_dtype bf16, then "
                            "continue", kind="diverged")  # the caller says from where
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        losses.append(mean_loss)
        on_step(mean_loss, lr)
        if (len(losses) - 1) % every == 0:
            bar.set_postfix(loss=f"{mean_loss:.4f}")
        if stop:
            return StepResult(losses, True)
    return StepResult(losses, False)
