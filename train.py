"""Train AHIQ with the official protocol (Lao et al., CVPRW 2022; defaults in options/train_options.py).

Only ``deform_net`` and ``regressor`` train: Adam + CosineAnnealingLR stepped every iteration, MSE on the training
MOS min-max normalised over the list (data/label_norm.py), one random crop per sample, flipped up-down with p=0.5
(official; ``--flip_axis``). Validation every ``--val_freq`` epochs averages ``--num_avg_val`` fixed windows.
Files in ``{checkpoints_dir}/{name}``: ``best.pth`` (SRCC or PLCC improved) and ``epoch_N.pth`` (every
``--save_interval``) with the weights, ``last.pth`` (every epoch and on SIGINT/SIGTERM) with everything an exact
resume needs, log.txt, opt_train.txt/.json and TensorBoard events. ``--resume`` continues exactly; ``torchrun
--nproc_per_node=K`` runs DDP. Other datasets (``--dataset``, ``--data_root``, CSV labels) and content-disjoint
splits (``--split_file``: train on the 'train' part, validate on the 'val' part of one label file) come from
data/datasets.py and data/splits.py; the model's configuration (models/config.py) is saved in every checkpoint.
"""
from __future__ import annotations

import utils.interrupt  # noqa: F401 - first: Ctrl-C while the libraries import is one line

# isort: split

import glob
import logging
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import NoReturn

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from data.label_norm import require_scores
from data.pair_dataset import PairDataset
from data.sampler import EpochSampler
from data.workers import end_workers, make_loader
from engine.loop import ScoringStopped, predict, reference_shards, train_one_epoch
from engine.runtime import (
    backbone_source,
    configure_device,
    dataset_name,
    load_dataset,
    policy_of,
    process_group,
    save_options,
)
from models import AHIQ, Checkpoint, build_from_config, read_checkpoint
from models.config import check_backbones
from options.policy import RESULT
from options.train_options import TrainConfig, parse_train_options
from utils.checkpoint import find_checkpoint, load_checkpoint, load_head_weights, meta_of, save_weights
from utils.distributed import (
    DistInfo,
    backend_for,
    barrier,
    failed_elsewhere,
    gather_arrays,
    reduce_step,
    worst_outcome,
)
from utils.errors import AHIQError, StopRequest, run_cli
from utils.files import FolderLock, remove_stale_temporaries, require_path
from utils.logger import EpochLog, Scalars, close_file_logs, setup_logging
from utils.metrics import METRIC_NAMES, improves, iqa_metrics, metrics_line
from utils.plots import optional_figure, scatter_figure
from utils.records import file_digest, require_same

log = logging.getLogger("ahiq.train")


@dataclass
class TrainState:
    epoch: int = 0  # next epoch to run
    step: int = 0  # batches of that epoch already done (mid-epoch resume)
    global_step: int = 0
    best_srcc: float = -1.0  # validation metrics of the epoch best.pth holds (official start: -1)
    best_plcc: float = -1.0
    best_epoch: int = 0  # the epoch best.pth holds, counted from 1 (0: none yet)
    world_size: int = 1  # processes the run had when saved: the rest of an epoch is sharded over them


def rng_state() -> dict:
    """The host generators. No CUDA generator state: nothing in training draws from it (crops and flips come from
    seeded numpy generators, no layer has dropout), and it would tie a checkpoint to the GPUs visible when saved."""
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state`; the CUDA states older checkpoints hold (one per GPU then visible) are ignored, so a
    run resumes on a node with fewer or more GPUs."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Validation:
    dataset: PairDataset
    indices: list[int]  # this rank's shard
    name: str  # what the validation data is called in TensorBoard: the preset with --data_root, else the list's name


def build_loaders(opt: TrainConfig, info: DistInfo, crop_size: int
                  ) -> tuple[PairDataset, DataLoader, EpochSampler, Validation]:
    split = opt.split(create=True)
    policy = policy_of(opt, crop_size, n_ensemble=opt.num_avg_val, batch_size=opt.val_batch_size)  # validation's
    train_set = load_dataset(opt, "train", "train", policy, split, flip_axis=opt.flip_axis)  # crops drawn per sample
    require_scores(train_set.raw_scores, opt.train_list, "training (labels are min-max normalised over the list)",
                   "give a score on every row")
    if split.active:  # a split divides one dataset: validation is the 'val' part of the training labels
        val_set = load_dataset(opt, "train", "val", policy, split)
    else:
        require_path(opt.val_list, "validation label file (--val_list)", "give your validation labels with --val_list "
                     "FILE (and --val_ref_path/--val_dis_path), or split the training labels by reference with "
                     "--split_file FILE (made if missing; docs/datasets.md)")
        same = [os.path.realpath(p) for p in (opt.train_list, opt.train_ref_path, opt.train_dis_path)]
        if same == [os.path.realpath(p) for p in (opt.val_list, opt.val_ref_path, opt.val_dis_path)]:
            raise AHIQError(f"{opt.train_list}: training and validation would use the same images; pass a "
                            "--val_list, or split the data by reference with --split_file FILE (docs/datasets.md)")
        val_set = load_dataset(opt, "val", "val", policy, split)
    source = f"{opt.train_list} ({split.describe()}, part val)" if split.active else opt.val_list
    require_scores(val_set.raw_scores, source, "validation (SRCC/PLCC)", "validate on a scored list")
    sampler = EpochSampler(len(train_set), opt.seed, info.rank, info.world_size)
    train_loader = make_loader(train_set, batch_size=opt.batch_size, sampler=sampler, drop_last=opt.drop_last,
                               num_workers=opt.num_workers, pin_memory=info.device.startswith("cuda"),
                               persistent_workers=opt.num_workers > 0)  # ended by train(), on every path
    validated = list(range(len(val_set) - (len(val_set) % opt.batch_size if opt.drop_last else 0)))
    if len(validated) < 2:
        raise AHIQError(f"{source}: --drop_last leaves {len(validated)} of its {len(val_set)} images in whole "
                        f"batches of {opt.batch_size}; validation needs two or more: drop --drop_last")
    shard = reference_shards(validated, val_set.reference_key, info.world_size)[info.rank]
    listed = opt.train_list if split.active else opt.val_list
    return train_set, train_loader, sampler, Validation(val_set, shard, dataset_name(opt, listed))


def validate(model: AHIQ, val: Validation, info: DistInfo, opt: TrainConfig, amp_dtype: torch.dtype | None,
             stop: Callable[[], bool] | None = None) -> tuple[dict, np.ndarray, np.ndarray]:
    out, outcome, failure = None, "done", None
    try:
        out = predict(model, val.dataset, val.indices, opt.val_batch_size, opt.num_workers, opt.crops_per_forward,
                      amp_dtype, progress=info.is_main, desc="validate", stop=stop)
    except ScoringStopped:
        outcome = "stopped"
    except AHIQError as err:  # a damaged validation image of this rank's share
        outcome, failure = "failed", err
    # the ranks agree before they gather: a rank asked to stop (or failed) after another had finished its share must
    # not leave it waiting in the gather
    outcome = worst_outcome(outcome, info)
    if outcome == "failed":
        raise failure or failed_elsewhere()
    if outcome == "stopped":
        raise ScoringStopped()
    index, preds, labels = gather_arrays(info, out.index, out.preds, out.labels)
    order = np.argsort(index, kind="stable")
    return iqa_metrics(preds[order], labels[order]), preds[order], labels[order]


def checkpoint_path(opt: TrainConfig) -> str | None:
    """The file a run continues from: last.pth with --resume, epoch_N.pth with --load_epoch N, else none."""
    if opt.resume:
        path = os.path.join(opt.run_dir, "last.pth")
        if not os.path.isfile(path):
            epochs = sorted(glob.glob(os.path.join(opt.run_dir, "epoch_*.pth")), key=os.path.getmtime)
            others = glob.glob(os.path.join(opt.run_dir, "*.pth"))
            hint = (f"; continue from the weights of {os.path.basename(epochs[-1])} with --load_epoch "
                    f"{os.path.basename(epochs[-1])[6:-4]} (no optimizer state)" if epochs else
                    "; it holds weights only (no training state): start a new run with another --name" if others else
                    "; start without --resume")
            raise AHIQError(f"{path}: nothing to resume from{hint}")
        return path
    if opt.load_epoch >= 0:
        return find_checkpoint(opt.run_dir, opt.load_epoch)
    existing = sorted(glob.glob(os.path.join(opt.run_dir, "*.pth")))
    if existing:
        resumable = os.path.isfile(os.path.join(opt.run_dir, "last.pth"))
        raise AHIQError(f"{opt.run_dir}: already holds checkpoints ({os.path.basename(existing[0])}, ...); "
                        + ("pass --resume to continue that run, or choose another --name" if resumable else
                           "choose another --name (no last.pth to resume from)") + " (nothing was overwritten)")
    return None


def make_scaler(amp_dtype: torch.dtype | None) -> torch.amp.GradScaler | None:
    """fp16 autocast needs loss scaling (its range is small); bf16 and fp32 do not."""
    return torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None


def restore(ckpt: dict, path: str, model: AHIQ, optimizer, scheduler, scaler: torch.amp.GradScaler | None,
            exact: bool, allow_other_backbones: bool = False) -> TrainState:
    """Weights (on the backbones they were trained with, unless ``allow_other_backbones``) and, for an exact resume
    (``last.pth``), the optimizer, scheduler, loss scale and RNG states."""
    if not allow_other_backbones:
        check_backbones(model, ckpt, path)
    load_head_weights(model, ckpt, path)
    if not exact:  # --load_epoch: epoch_N.pth holds weights only
        log.warning("%s: starting from its weights at epoch %s; the optimizer and LR schedule start afresh (use "
                    "--resume with last.pth to continue exactly)", path, int(ckpt.get("epoch", -1)) + 1)
        return TrainState(epoch=int(ckpt.get("epoch", -1)) + 1)
    if "train_state" not in ckpt or "optimizer_state_dict" not in ckpt:
        raise AHIQError(f"{path}: has no training state to resume from (weights only)")
    optimizer.load_state_dict(ckpt["optimizer_state_dict"])
    scheduler.load_state_dict(ckpt["scheduler_state_dict"])
    saved_scaler = ckpt.get("scaler_state_dict")
    if scaler is not None and saved_scaler:
        scaler.load_state_dict(saved_scaler)
    elif scaler is not None:
        log.warning("%s: saved without fp16 loss scaling; the loss scale starts afresh", path)
    elif saved_scaler:
        log.warning("%s: saved with fp16 loss scaling (--amp --amp_dtype fp16), resumed without it", path)
    state = dict(ckpt["train_state"])
    set_rng_state(state.pop("rng"))
    return TrainState(**state)


class Saver:
    """Rank 0's checkpoint files: ``last.pth`` holds everything an exact resume needs; ``best.pth`` and
    ``epoch_N.pth`` hold the weights and their metadata only (no optimizer state: a third of the size)."""

    def __init__(self, opt, model: AHIQ, optimizer, scheduler, scaler, train_set: PairDataset) -> None:
        self.opt, self.model, self.optimizer, self.scheduler, self.scaler = opt, model, optimizer, scheduler, scaler
        self.last_written: float | None = None  # when this process last wrote last.pth
        self.meta = {"label_norm": train_set.norm.to_dict(), "dataset": dataset_name(opt, opt.train_list),
                     "train_list": opt.train_list,
                     "split": {"file": opt.split_file, "index": opt.split_index, "column": opt.split_column},
                     "inputs": input_digests(opt), "best_metric": opt.best_metric}

    def __call__(self, name: str, state: TrainState, loss: float, full: bool = False) -> str:
        path = os.path.join(self.opt.run_dir, name)
        extra = {}
        if full:
            extra = {"optimizer_state_dict": self.optimizer.state_dict(),
                     "scheduler_state_dict": self.scheduler.state_dict(),
                     "scaler_state_dict": self.scaler.state_dict() if self.scaler is not None else None,
                     "train_state": {**asdict(state), "rng": rng_state()},
                     "options": self.opt.to_dict()}
        meta = {**self.meta, "epochs_trained": state.epoch}  # counted from 1; the official "epoch" from 0
        if state.best_epoch:  # the validation that chose best.pth (best.pth: its own epoch's)
            meta["best_validation"] = {"epoch": state.best_epoch, "srcc": _finite(state.best_srcc),
                                       "plcc": _finite(state.best_plcc)}
        save_weights(path, self.model, meta=meta, epoch=state.epoch - 1, loss=float(loss), **extra)
        if name == "last.pth":
            self.last_written = time.monotonic()
        return path


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def run_config(opt: TrainConfig, resume_from: str | None) -> Checkpoint:
    """The checkpoint this run continues (read once) and the architecture of this run: the checkpoint's (switches
    given must agree), else the switches' (their defaults in options/ with those given)."""
    checkpoint = read_checkpoint(resume_from, opt.given_switches, opt.model_switches)
    if resume_from is not None and opt.resume:
        check_resume_options(checkpoint.state.get("options") or {}, opt, resume_from)
        check_resume_inputs(checkpoint.state, opt, resume_from)
    return checkpoint


def input_digests(opt: TrainConfig) -> dict[str, str]:
    """sha256 of the files whose contents decide the result under the same paths: the label lists and the split
    file (a list edited in place would move the label range and the samples under a resumed run)."""
    files = {"train_list": opt.train_list, "val_list": None if opt.split().active else opt.val_list,
             "split_file": opt.split_file}
    out = {}
    for key, path in files.items():
        if path and os.path.isfile(path):
            out[key] = file_digest(path)
    return out


def check_resume_inputs(ckpt: dict, opt: TrainConfig, path: str) -> None:
    """A resumed run reads the same label lists and split file it started with (same contents, not just paths)."""
    require_same({"inputs": meta_of(ckpt).get("inputs") or {}}, {"inputs": input_digests(opt)}, path,
                 "reads other label files than when it started", "restore the file (the labels a run trains on "
                 "must not change under it), or start a new run with another --name")


def check_resume_options(saved: dict, opt: TrainConfig, path: str) -> None:
    """Every option that changes results (policy RESULT, options/) must be what the run was started with."""
    require_same({"options": saved}, {"options": dict(sorted(opt.values(RESULT).items()))}, path,
                 "was trained with other options",
                 "resume with the same ones (only --n_epoch may grow) or start a new run with another --name")


def main(argv: list[str] | None = None) -> TrainState:
    opt = parse_train_options(argv)
    with process_group(opt.run) as info:
        return run(opt, info)


def run(opt: TrainConfig, info: DistInfo) -> TrainState:
    """Train in ``opt.run_dir``, which this process owns (a lock) while it runs. A run folder this call made is
    removed again when the run fails before it starts training (bad data or options): no half-made folder is left."""
    new = info.is_main and not os.path.exists(opt.run_dir)
    lock = FolderLock(opt.run_dir, "train.py") if info.is_main else None
    try:
        return train(opt, info)
    finally:
        close_file_logs(opt.run_dir)  # the run's log.txt is the run's: what follows (protocol.py's next split) is not
        if lock:
            lock.release()
        if new and not os.path.exists(os.path.join(opt.run_dir, "opt_train.json")):  # written once training starts
            shutil.rmtree(opt.run_dir, ignore_errors=True)


def train(opt: TrainConfig, info: DistInfo) -> TrainState:
    stale = remove_stale_temporaries(opt.run_dir) if info.is_main else []
    setup_logging(opt.run_dir, info.is_main)
    if stale:
        log.warning("%s: removed %d temporary file(s) of an interrupted save", opt.run_dir, len(stale))
    resume_from = checkpoint_path(opt)
    checkpoint = run_config(opt, resume_from)
    config, ckpt = checkpoint.config, checkpoint.state
    seed_everything(opt.seed)
    device = info.device
    amp_dtype = configure_device(opt.run, device)
    train_set, train_loader, sampler, val = build_loaders(opt, info, config.crop_size)
    model = build_from_config(config, backbone_source(opt), opt.deform_impl, opt.seed).to(device)
    if opt.compile_mode:  # in place: the same modules, parameters and state-dict keys (checkpoints, DDP, resume)
        model.compile(mode=opt.compile_mode)
    params = [p for part in model.trainable_parts().values() for p in part.parameters()]
    # fused on CUDA: one kernel for every parameter's update (the CPU keeps the loop it has always run)
    optimizer = torch.optim.Adam(params, lr=opt.learning_rate, weight_decay=opt.weight_decay,
                                 fused=device.startswith("cuda") or None)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=opt.T_max, eta_min=opt.eta_min)
    scaler = make_scaler(amp_dtype)
    state = TrainState()
    if resume_from:
        state = restore(ckpt, resume_from, model, optimizer, scheduler, scaler, opt.resume, opt.allow_other_backbones)
        resumed_loss = float(ckpt.get("loss", float("nan")))
        if state.step and state.world_size != info.world_size:
            raise AHIQError(f"{resume_from}: stopped after step {state.step} of epoch {state.epoch + 1} with "
                            f"{state.world_size} process(es), and the rest of that epoch is sharded over them; "
                            f"resume with {state.world_size} process(es) (NPROC x NNODES), or from an epoch boundary")
    state.world_size = info.world_size
    del ckpt, checkpoint
    net = model
    if info.enabled:
        net = DistributedDataParallel(model, device_ids=[device] if device.startswith("cuda") else None,
                                      broadcast_buffers=False)
    scalars = epochs = None
    if info.is_main:
        save_options(opt, "train")
        scalars = Scalars(opt.run_dir, opt.name, opt.to_dict(), opt.wandb)
        epochs = EpochLog(opt.run_dir, state.epoch)
        log.info("training on %d pairs, validating on %d (%s), %d process(es) on %s%s%s", len(train_set),
                 len(val.dataset), opt.split().describe(), info.world_size, device,
                 f", DDP over {backend_for(device)}" if info.enabled else "",
                 f"; continuing from {resume_from} at epoch {state.epoch + 1}" if resume_from else "")
    if info.is_main:
        log.info("model: %s", ", ".join(f"{k} {v}" for k, v in asdict(config).items()))
    save = Saver(opt, model, optimizer, scheduler, scaler, train_set)
    if info.is_main and opt.resume and state.step == 0:
        for path in complete_epoch_files(save, state, resumed_loss):
            log.warning("%s: written now; the run had stopped after last.pth and before it", path)
    lr = optimizer.param_groups[0]["lr"]

    def on_step(loss: float, step_lr: float) -> None:
        nonlocal lr
        state.global_step, lr = state.global_step + 1, step_lr
        if scalars and (state.global_step - 1) % opt.log_every == 0:
            scalars.add({"train/loss": loss, "train/lr": step_lr}, state.global_step)

    try:
        with StopRequest() as stop:
            while state.epoch < opt.n_epoch:
                start = time.perf_counter()
                sampler.set_epoch(state.epoch, skip=state.step * opt.batch_size)
                try:
                    result = train_one_epoch(net, train_loader, optimizer, scheduler, device, amp_dtype, scaler,
                                             lambda loss: reduce_step(loss, stop.signal is not None, info), on_step,
                                             info.is_main, desc=f"epoch {state.epoch + 1}/{opt.n_epoch}",
                                             every=opt.log_every)
                except AHIQError as err:
                    if err.kind != "diverged":
                        raise
                    raise AHIQError(f"{err} {resume_hint(opt.run_dir)}", kind="diverged") from None
                step_ms = (time.perf_counter() - start) * 1e3 / max(1, len(result.losses))
                loss = float(np.mean(result.losses)) if result.losses else float("nan")
                if result.interrupted:
                    state.step += len(result.losses)
                    stop_run(save, state, loss, info, f"{stop.signal or 'another rank'} after step {state.step} of "
                                                      f"epoch {state.epoch + 1}")
                state.epoch, state.step = state.epoch + 1, 0
                log.info("epoch %d: train loss %.5f (%d steps, %.1f ms a step)", state.epoch, loss, len(result.losses),
                         step_ms)
                try:
                    metrics = validate_epoch(model, val, info, opt, amp_dtype, state, scalars,
                                             lambda: stop.signal is not None) \
                        if state.epoch % opt.val_freq == 0 else None
                except ScoringStopped:  # acted on at the next validation batch, not after the next training step
                    stop_run(save, state, loss, info, f"{stop.signal} during the validation of epoch {state.epoch} "
                                                      "(its weights are saved; its validation is skipped)")
                except AHIQError as err:  # e.g. a validation image damaged after its header: keep the epoch
                    if not info.is_main or err.kind == "diverged":  # diverged weights are not worth keeping
                        raise
                    path = save("last.pth", state, loss, full=True)
                    raise AHIQError(f"{err} (validation of epoch {state.epoch}; the epoch's weights are saved in "
                                    f"{path}: fix the file and continue with --resume)") from None
                if info.is_main:  # the epoch's row first: a resume drops rows after its last.pth
                    epochs.append({"epoch": state.epoch, "step": state.global_step, "train_loss": loss, "lr": lr,
                                   **{f"val_{k}": (metrics or {}).get(k) for k in METRIC_NAMES},
                                   "best": bool(metrics and metrics["improved"]),
                                   "step_ms": step_ms, "seconds": time.perf_counter() - start})
                    finish_epoch(save, state, loss)
    finally:  # the workers persist over epochs and end with the run, also on a stop or an error
        end_workers(train_loader)
        if scalars:
            scalars.close()
    if state.best_epoch:
        log.info("done: best.pth holds epoch %d (validation SRCC %.4f, PLCC %.4f; --best_metric %s); checkpoints in %s",
                 state.best_epoch, state.best_srcc, state.best_plcc, opt.best_metric, opt.run_dir)
    else:
        log.info("done: no validation gave SRCC/PLCC, so there is no best.pth; checkpoints in %s", opt.run_dir)
    return state


def resume_hint(run_dir: str) -> str:
    """Where a run that failed can continue from: its last.pth when there is one, else nowhere (say so)."""
    last = os.path.join(run_dir, "last.pth")
    if os.path.isfile(last):
        return f"with --resume from {last} (its last saved epoch)"
    return "by starting again: no last.pth was written yet, so there is nothing to resume"


def stop_run(save: Saver, state: TrainState, loss: float, info: DistInfo, what: str) -> NoReturn:
    """Rank 0 saves last.pth and says so; every rank waits for it, then exits with code 3."""
    if info.is_main:
        path = save("last.pth", state, loss, full=True)
        log.warning("stopped by %s; saved %s; continue with --resume", what, path)
    barrier(info)  # torchrun ends the other ranks once one exits: keep them until last.pth is written
    sys.exit(3)


def finish_epoch(save: Saver, state: TrainState, loss: float) -> None:
    """Rank 0's files after an epoch: last.pth first (a crash after it is resumed, and the resume writes what
    follows it: :func:`complete_epoch_files`), then :func:`epoch_files`. With --save_last_every S, last.pth only
    when S seconds have passed since it was last written, after this process's first epoch (the folder can always
    be resumed) and after the last epoch: a crash then resumes from an earlier epoch and replays the ones after it
    exactly (rewriting their files with the same contents)."""
    every, last = save.opt.save_last_every, save.last_written
    if every <= 0 or last is None or state.epoch >= save.opt.n_epoch or time.monotonic() - last >= every:
        save("last.pth", state, loss, full=True)
    for name in epoch_files(state, save.opt.save_interval):
        save(name, state, loss)


def epoch_files(state: TrainState, save_interval: int) -> list[str]:
    """The weight files an epoch ends with after last.pth: best.pth when it is the best epoch (validation improved
    under --best_metric), epoch_N.pth on schedule."""
    due = [("best.pth", state.best_epoch == state.epoch > 0),
           (f"epoch_{state.epoch}.pth", state.epoch > 0 and state.epoch % save_interval == 0)]
    return [name for name, wanted in due if wanted]


def complete_epoch_files(save: Saver, state: TrainState, loss: float) -> list[str]:
    """On an exact resume at an epoch boundary, the :func:`epoch_files` a crash left unwritten (last.pth holds that
    epoch's weights). Returns the files written."""
    done = []
    for name in epoch_files(state, save.opt.save_interval):
        path = os.path.join(save.opt.run_dir, name)
        if not os.path.isfile(path) or _epochs_in(path) != state.epoch:
            done.append(save(name, state, loss))
    return done


def _epochs_in(path: str) -> int | None:
    return meta_of(load_checkpoint(path)).get("epochs_trained")


def validate_epoch(model: AHIQ, val: Validation, info: DistInfo, opt: TrainConfig, amp_dtype: torch.dtype | None,
                   state: TrainState, scalars: Scalars | None, stop: Callable[[], bool] | None = None) -> dict:
    """Validate, log, update the bests in ``state``; ``improved`` when the epoch beats the best by --best_metric (then
    best.pth is saved and the bests become this epoch's metrics). Scalars go per step with the dataset
    (``val/<dataset>/srcc``)."""
    metrics, preds, labels = validate(model, val, info, opt, amp_dtype, stop)
    if not np.isfinite(preds).all():  # every rank holds the gathered predictions: all stop here alike
        best = f"best.pth holds epoch {state.best_epoch}" if state.best_epoch else "no best.pth was written"
        raise AHIQError(f"epoch {state.epoch}: {int(np.sum(~np.isfinite(preds)))} of {len(preds)} validation "
                        f"predictions are NaN or infinite: the model diverged (this epoch was not saved; {best}); "
                        f"start again with a lower --learning_rate than {opt.learning_rate:g}", kind="diverged")
    srcc, plcc = (-math.inf if metrics[k] is None else metrics[k] for k in ("srcc", "plcc"))  # None: undefined
    improved = improves(opt.best_metric, srcc, plcc, state.best_srcc, state.best_plcc)
    if improved:  # the bests are the chosen epoch's metrics (official: both move)
        state.best_srcc = srcc if metrics["srcc"] is not None else state.best_srcc
        state.best_plcc = plcc if metrics["plcc"] is not None else state.best_plcc
        state.best_epoch = state.epoch
    log.info("epoch %d: %s%s", state.epoch, metrics_line(metrics),
             f"  (best so far by {opt.best_metric}: best.pth)" if improved else "")
    if scalars:  # one step axis for training and validation, named for the validation data actually used
        scalars.add({f"val/{val.name}/{k}": v for k, v in metrics.items() if k in METRIC_NAMES and v is not None},
                    state.global_step)
        figure = optional_figure(lambda: scatter_figure(preds, labels, metrics), "the TensorBoard scatter figure")
        if figure is not None:
            scalars.figure(f"val/{val.name}/scatter", figure, state.global_step)
    return {**metrics, "improved": improved}


if __name__ == "__main__":
    run_cli(main)
