"""From parsed options to the objects a run needs: device settings, backbone weights, datasets, the model to score.

The one place where option values meet the library (``models/``, ``data/``, ``engine.py``), shared by train.py,
test.py (evaluate.py), predict.py and protocol.py; the library itself takes plain arguments.
"""
from __future__ import annotations

import argparse
import json
import logging
import os

import torch

from data.datasets import pair_dataset, read_labels, select_rows
from data.label_norm import LabelNorm
from data.pipal import PairDataset
from models import AHIQ, BackboneSource, ModelConfig, backbone_dir
from models.config import build_loaded, read_model_checkpoint
from options.data_options import split_choice
from utils.checkpoint import find_checkpoint
from utils.files import atomic_write


def backbone_source(opt: argparse.Namespace) -> BackboneSource:
    return BackboneSource(not opt.no_pretrained, opt.vit_weights, opt.resnet_weights, backbone_dir(opt.checkpoints_dir))


def configure_device(opt: argparse.Namespace) -> torch.dtype | None:
    """cuDNN autotuning on CUDA (crop shapes are fixed, so it pays off), TF32 only with --tf32; returns the autocast
    dtype of --amp/--amp_dtype on CUDA, or None (fp32; --amp on the CPU warns and runs fp32)."""
    cuda = opt.device.startswith("cuda")
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(opt.tf32)
    if not opt.amp:
        return None
    if not cuda:
        logging.getLogger("ahiq").warning("--amp applies on CUDA only; running in fp32 on %s", opt.device)
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[opt.amp_dtype]


def load_dataset(opt: argparse.Namespace, phase: str, part: str, n_crops: int, flip: bool = False,
                 create_split: bool = False, norm: LabelNorm | None = None, batch_size: int = 10) -> PairDataset:
    """The ``phase`` (train/val/test) folders and label file of the options, restricted to ``part`` of the split;
    ``batch_size`` is the scoring batch the official random windows follow (--random_windows official)."""
    labels = read_labels(getattr(opt, f"{phase}_list"), opt.list_format, opt.ref_rule)
    labels = select_rows(labels, part, split_choice(opt, create_split))
    return pair_dataset(getattr(opt, f"{phase}_ref_path"), getattr(opt, f"{phase}_dis_path"), labels,
                        opt.lower_better, crop_size=opt.crop_size, n_crops=n_crops, seed=opt.seed,
                        resize=opt.size if opt.resize else None, flip=flip, norm=norm,
                        random_windows=opt.random_windows, window_batch=batch_size,
                        flip_axis=getattr(opt, "flip_axis", "vertical"), max_pixels=opt.max_pixels)


def checkpoint_to_score(opt: argparse.Namespace) -> str:
    """--ckpt, else the file --load_epoch picks in the run folder (best.pth, the latest epoch, the only .pth)."""
    return opt.ckpt or find_checkpoint(opt.run_dir, opt.load_epoch)


def scoring_checkpoint(opt: argparse.Namespace) -> tuple[dict, ModelConfig, str]:
    """The checkpoint to score with and the model it describes (switches given on the command line are checked
    against it), read before anything slow; ``opt.crop_size`` becomes the trained crop size unless one was given."""
    path = checkpoint_to_score(opt)
    ckpt, config = read_model_checkpoint(path, opt.model_switches)
    opt.crop_size = config.crop_size
    return ckpt, config, path


def scoring_model(opt: argparse.Namespace, ckpt: dict, config: ModelConfig, path: str) -> AHIQ:
    """The model of :func:`scoring_checkpoint`, built (backbones: files, hub or random) and on ``opt.device``."""
    return build_loaded(ckpt, path, config, backbone_source(opt), opt.deform_impl).to(opt.device)


def save_options(opt: argparse.Namespace, phase: str) -> None:
    """The resolved options as the official ``opt_{phase}.txt`` and as JSON, in the run folder."""
    args = dict(sorted((k, v) for k, v in vars(opt).items() if k != "autocast_dtype"))
    text = "------------ Options -------------\n" + "".join(f"{k}: {v}\n" for k, v in args.items()) \
        + "-------------- End ----------------\n"
    atomic_write(os.path.join(opt.run_dir, f"opt_{phase}.txt"), text)
    atomic_write(os.path.join(opt.run_dir, f"opt_{phase}.json"), json.dumps(args, indent=2, default=str))
