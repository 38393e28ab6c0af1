"""From a frozen run configuration (options/) to what a run uses: its device settings, backbone weights, datasets and
scorer; and the options file it leaves in its run folder.

The one place where option values meet the library (``models/``, ``data/``, ``engine/scorer.py``), shared by train.py,
test.py, predict.py and protocol.py; the library itself takes plain arguments. Every PyTorch scorer is assembled by
:func:`engine.scorer.build_scorer` (the Python API and the hub entry too), an export's by
:func:`engine.scorer.onnx_scorer`.
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from data.datasets import SplitChoice, pair_dataset, read_labels, select_rows
from data.pair_dataset import PairDataset
from data.windows import WindowPolicy
from engine.scorer import Scorer, build_scorer, onnx_scorer
from models import BackboneSource, Checkpoint, read_checkpoint
from options.base_options import RunFields
from options.data_options import window_policy
from utils.checkpoint import choose_checkpoint
from utils.device import amp_dtype, configure_cuda, use_device
from utils.distributed import DistInfo, init_distributed, shutdown
from utils.files import OPTIONS_PREFIX, atomic_write

if TYPE_CHECKING:  # the entry points' configurations (their modules import this one)
    from options.predict_options import PredictConfig
    from options.test_options import TestConfig
    from options.train_options import TrainConfig

    Entry = TrainConfig | TestConfig | PredictConfig  # any entry point's (protocol.py's is a TrainConfig)


def device_of(cfg: RunFields) -> str:
    """The device of a single-process run: the first GPU of --gpu_ids, or the CPU (torchrun gives each rank its own:
    :func:`utils.distributed.init_distributed`)."""
    return f"cuda:{cfg.gpu_list[0]}" if cfg.gpu_list else "cpu"


@contextlib.contextmanager
def process_group(cfg: RunFields) -> Iterator[DistInfo]:
    """This process's place in its torchrun job (alone: a group of one), left when the block ends, however it
    ends (all ranks together when it ends without an error)."""
    info = init_distributed(device_of(cfg), cfg.gpu_list, cfg.dist_timeout)
    try:
        yield info
    except BaseException:
        shutdown(info)
        raise
    shutdown(info, together=True)


def backbone_source(cfg: Entry) -> BackboneSource:
    return BackboneSource(not cfg.no_pretrained, cfg.vit_weights, cfg.resnet_weights,
                          cfg.checkpoints_dir)


def configure_device(cfg: RunFields, device: str) -> torch.dtype | None:
    """The CUDA settings of :func:`utils.device.configure_cuda` (TF32 unless --no_tf32) and the run's GPU made the
    current device (:func:`utils.device.use_device`); returns the autocast dtype of --amp/--amp_dtype on CUDA, or
    None (fp32; --amp on the CPU warns and runs fp32)."""
    configure_cuda(device, cfg.tf32)
    use_device(device)
    return amp_dtype(device, cfg.amp, cfg.amp_dtype)


def phase_files(cfg: TrainConfig | TestConfig, phase: str) -> tuple[str, str, str]:
    """The reference folder, distorted folder and label file of ``phase`` (train, val or test)."""
    if phase == "test":
        return cfg.test_ref_path, cfg.test_dis_path, cfg.test_list
    if phase == "val":
        return cfg.val_ref_path, cfg.val_dis_path, cfg.val_list
    return cfg.train_ref_path, cfg.train_dis_path, cfg.train_list


def load_dataset(cfg: TrainConfig | TestConfig, phase: str, part: str, policy: WindowPolicy,
                 split: SplitChoice | None = None, flip: bool = False, flip_axis: str = "vertical") -> PairDataset:
    """The ``phase`` (train/val/test) folders and label file of the configuration, restricted to ``part`` of
    ``split`` (default: the configuration's), cropped as ``policy`` says (:func:`policy_of`); ``flip_axis``: of the
    training crops' random flip."""
    ref_dir, dis_dir, label_file = phase_files(cfg, phase)
    labels = select_rows(read_labels(label_file, cfg.list_format, cfg.ref_rule), part, split or cfg.split())
    return pair_dataset(ref_dir, dis_dir, labels, cfg.lower_better, policy=policy, flip=flip, flip_axis=flip_axis)


def dataset_name(cfg: TrainConfig | TestConfig, listed: str) -> str:
    """What the data is called in checkpoints, logs, metrics and TensorBoard: the preset's name when its layout is
    used (--data_root) or another preset than the default is named (train.py, test.py and protocol.py then agree),
    else the stem of the label file ``listed`` (your own data is never called 'pipal')."""
    named = cfg.data_root or cfg.dataset != "pipal"
    return cfg.dataset if named else os.path.splitext(os.path.basename(listed))[0]


def policy_of(cfg: Entry, crop: int, **override) -> WindowPolicy:
    """The run's one :class:`data.windows.WindowPolicy` at ``crop`` (the checkpoint's or the model's crop size);
    ``override``: e.g. validation's ``n_ensemble=num_avg_val, batch_size=val_batch_size``."""
    return window_policy(vars(cfg), crop, **override)


def scoring_checkpoint(cfg: TestConfig | PredictConfig) -> Checkpoint:
    """The checkpoint to score with (--ckpt, else the file --load_epoch picks in the run folder), read and checked
    against the switches given, before anything slow; its config holds the crop size to score at. No file: a random
    head of the architecture the switches describe (tests)."""
    return read_checkpoint(choose_checkpoint(cfg.ckpt, cfg.run_dir, cfg.load_epoch), cfg.given_switches,
                           cfg.model_switches)


def scorer_for(cfg: TestConfig | PredictConfig, checkpoint: Checkpoint, policy: WindowPolicy, device: str,
               amp_dtype: torch.dtype | None, mos_range: tuple[float, float] | None = None) -> Scorer:
    """The scorer of :func:`scoring_checkpoint`, built by the one assembly with the configuration's settings."""
    return build_scorer(checkpoint, backbone_source(cfg), policy, device, cfg.deform_impl, mos_range,
                        cfg.crops_per_forward, cfg.bn_stats, amp_dtype, cfg.allow_other_backbones, cfg.compile_model)


def onnx_scorer_for(cfg: TestConfig | PredictConfig, device: str) -> Scorer:
    """The scorer of an exported model (--backend onnxruntime: --ckpt is the .onnx file), with the configuration's
    window and scoring settings; the crop size is the export's (a --crop_size given must match it)."""
    crop = cfg.crop_size if "crop_size" in cfg.switches_given else None
    return onnx_scorer(cfg.ckpt, device, cfg.mos_range, crop_size=crop, n_ensemble=cfg.n_ensemble, seed=cfg.seed,
                       random_windows=cfg.random_windows, windows=cfg.windows, batch_size=cfg.batch_size,
                       resize=cfg.resize, size=cfg.size, max_pixels=cfg.max_pixels,
                       crops_per_forward=cfg.crops_per_forward, bn_stats=cfg.bn_stats, compile_model=cfg.compile_model)


def save_options(cfg: Entry, phase: str) -> None:
    """The options as the official ``opt_{phase}.txt`` and as JSON (``--config`` reads it), in the run folder."""
    args = dict(sorted(cfg.to_dict().items()))
    text = "------------ Options -------------\n" + "".join(f"{k}: {v}\n" for k, v in args.items()) \
        + "-------------- End ----------------\n"
    atomic_write(os.path.join(cfg.run_dir, f"{OPTIONS_PREFIX}{phase}.txt"), text)
    atomic_write(os.path.join(cfg.run_dir, f"{OPTIONS_PREFIX}{phase}.json"), json.dumps(args, indent=2))
