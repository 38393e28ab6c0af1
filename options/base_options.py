"""Options every entry point shares: the run (folder, checkpoint, seed, device, precision) and the model.

Parsers are built from small parents (``parents=[run_parser(), model_parser(), ...]``), so each option is defined
once. Model switches default to None: "the checkpoint's" when one is loaded (test.py, predict.py, the API, resume),
else the paper's model (the defaults of :class:`models.ModelConfig`). :func:`finalize` checks and resolves the values
(device, run folder, preset paths); it builds nothing and touches no file.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any

import torch

from data.pipal import MAX_PIXELS
from models import BRANCHES, DEFORM_IMPLS, FUSIONS, POOLINGS, ModelConfig
from options.data_options import apply_preset
from utils.errors import AHIQError
from utils.files import read_text

PAPER = ModelConfig()


def run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("run")
    g.add_argument("--config", default=None, metavar="FILE",
                   help="rerun from a saved opt_train.json / opt_test.json; options given on the command line win")
    g.add_argument("--checkpoints_dir", default="./checkpoints", help="runs are stored in checkpoints_dir/name")
    g.add_argument("--name", default="ahiq_pipal", help="experiment name: the run folder under --checkpoints_dir")
    g.add_argument("--load_epoch", type=int, default=-1,
                   help="load epoch_N.pth from the run folder; -1: best.pth, else the latest epoch, else the only .pth")
    g.add_argument("--ckpt", default=None, help="checkpoint file to load (official or ours), instead of the run folder")
    g.add_argument("--seed", type=int, default=1919, help="random seed")
    g.add_argument("--gpu_ids", default="0", help="GPU ids, e.g. '0' or '0,1'; '-1' runs on the CPU")
    g.add_argument("--num_workers", type=int, default=8, help="DataLoader worker processes")
    g.add_argument("--max_pixels", type=int, default=MAX_PIXELS,
                   help="images with more pixels are refused from their header (damaged or hostile files)")
    g.add_argument("--amp", action="store_true", help="mixed precision on CUDA (see --amp_dtype); fp32 otherwise")
    g.add_argument("--amp_dtype", default="bf16", choices=("bf16", "fp16"),
                   help="autocast dtype for --amp; in training fp16 adds a GradScaler")
    g.add_argument("--tf32", action="store_true",
                   help="allow TF32 matrix products and convolutions on CUDA (faster fp32, slightly less exact)")
    return p


def model_parser() -> argparse.ArgumentParser:
    """The model switches (all recorded in checkpoints) and where the backbone weights come from."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("model (None: the checkpoint's when one is loaded, else the paper's model)")
    g.add_argument("--patch_size", type=int, default=None, choices=(8, 16), help=f"ViT patch size ({PAPER.patch_size})")
    g.add_argument("--crop_size", type=int, default=None,
                   help=f"crop side, a multiple of --patch_size ({PAPER.crop_size}; scoring: the trained one)")
    g.add_argument("--vit_name", default=None, help="timm ViT name with its tag (the pinned tag for --patch_size)")
    g.add_argument("--resnet_name", default=None, help=f"timm ResNet name with its tag ({PAPER.resnet_name})")
    g.add_argument("--vit_blocks", default=None,
                   help=f"increasing ViT blocks whose outputs are used ({','.join(map(str, PAPER.vit_blocks))})")
    g.add_argument("--cnn_blocks", default=None,
                   help=f"ResNet blocks used, all of one stage ({','.join(PAPER.cnn_blocks)})")
    g.add_argument("--fusion", default=None, choices=FUSIONS, help=f"how CNN features are fused ({PAPER.fusion})")
    g.add_argument("--branches", default=None, choices=BRANCHES,
                   help=f"feature branches feeding the head ({PAPER.branches})")
    g.add_argument("--pooling", default=None, choices=POOLINGS,
                   help=f"weighted: sum(f*w)/sum(w) over patches (paper); mean: the plain mean of f ({PAPER.pooling})")
    g = p.add_argument_group("backbone weights and kernels")
    g.add_argument("--vit_weights", default=None,
                   help="ViT weights from a local timm state dict (.pth/.safetensors) instead of the hub")
    g.add_argument("--resnet_weights", default=None,
                   help="ResNet weights from a local timm state dict (.pth/.safetensors) instead of the hub")
    g.add_argument("--no_pretrained", action="store_true",
                   help="random backbones (tests, offline demos): scores are meaningless")
    g.add_argument("--deform_impl", default="gemm", choices=DEFORM_IMPLS,
                   help="deformable conv: 'gemm' (bilinear sampling + GEMM; faster, autocast-friendly) or "
                        "torchvision's kernel; both compute the same function")
    return p


NOT_RERUN = ("config", "resume", "help")  # never taken from a saved configuration


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; with ``--config FILE`` (a saved ``opt_*.json``) its values are the defaults, so every option
    given on the command line overrides it. Saved values of options this parser lacks are ignored."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    config = pre.parse_known_args(argv)[0].config
    if config:
        try:
            saved = json.loads(read_text(config))
        except (OSError, ValueError) as err:
            raise AHIQError(f"{config}: cannot be read as a saved configuration ({err}); pass an opt_train.json or "
                            "opt_test.json from a run folder") from None
        if not isinstance(saved, dict):
            raise AHIQError(f"{config}: not a saved configuration (expected a JSON object of options)")
        known = {action.dest for action in parser._actions}
        parser.set_defaults(**{k: v for k, v in saved.items() if k in known and k not in NOT_RERUN})
    return parser.parse_args(argv)


SWITCHES = ("patch_size", "crop_size", "vit_name", "resnet_name", "vit_blocks", "cnn_blocks", "fusion", "branches",
            "pooling")


def given_switches(opt: argparse.Namespace) -> dict[str, Any]:
    """The model switches given on the command line, as :class:`models.ModelConfig` values."""
    given = {k: getattr(opt, k) for k in SWITCHES if getattr(opt, k, None) is not None}
    if isinstance(given.get("vit_blocks"), str):
        try:
            given["vit_blocks"] = tuple(int(b) for b in given["vit_blocks"].split(","))
        except ValueError:
            raise AHIQError(f"--vit_blocks {opt.vit_blocks!r}: expected comma-separated block indices, e.g. "
                            "0,1,2,3,4") from None
    if isinstance(given.get("cnn_blocks"), str):
        given["cnn_blocks"] = tuple(b.strip() for b in given["cnn_blocks"].split(","))
    return given


def check_positive(opt: argparse.Namespace, *names: str, minimum: int = 1) -> None:
    for name in names:
        value = getattr(opt, name, None)
        if value is not None and value < minimum:
            raise AHIQError(f"--{name} must be at least {minimum}, got {value}")


def finalize(opt: argparse.Namespace) -> argparse.Namespace:
    """Check and resolve options: model switches, device, run folder, dataset preset. Nothing is built or loaded."""
    if opt.crop_size is not None and (opt.crop_size <= 0 or opt.crop_size % (opt.patch_size or PAPER.patch_size)):
        raise AHIQError(f"--crop_size {opt.crop_size} must be a positive multiple of --patch_size "
                        f"{opt.patch_size or PAPER.patch_size}")
    opt.model_switches = given_switches(opt)
    try:
        ids = [int(i) for i in str(opt.gpu_ids).split(",") if i.strip() and int(i) >= 0]
    except ValueError:
        raise AHIQError(f"--gpu_ids {opt.gpu_ids!r}: expected comma-separated integers, e.g. 0 or 0,1 or -1") from None
    if ids and not torch.cuda.is_available():
        raise AHIQError(f"--gpu_ids {opt.gpu_ids}: CUDA is not available here; pass --gpu_ids -1 to run on the CPU")
    missing = [i for i in ids if i >= torch.cuda.device_count()] if ids else []
    if missing:
        count = torch.cuda.device_count()
        raise AHIQError(f"--gpu_ids {opt.gpu_ids}: no GPU {missing[0]} here (this machine has {count}: "
                        f"0-{count - 1}); pass ids below {count}, or -1 for the CPU")
    opt.gpu_list = ids  # under torchrun each process takes its own GPU (utils.distributed.rank_device)
    opt.device = f"cuda:{ids[0]}" if ids else "cpu"
    check_positive(opt, "crops_per_forward", "batch_size", "val_batch_size", "n_ensemble", "num_avg_val")
    check_positive(opt, "num_workers", minimum=0)
    check_positive(opt, "max_pixels")
    opt.run_dir = os.path.join(opt.checkpoints_dir, opt.name)
    if hasattr(opt, "dataset"):
        apply_preset(opt)
    return opt
