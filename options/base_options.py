"""Options shared by train.py and test.py: the official names and defaults, plus weight-file and device handling."""
from __future__ import annotations

import argparse
import json
import logging
import os

import torch

from data.datasets import add_dataset_options, apply_preset
from models import BRANCHES, CNN_BLOCKS, DEFORM_IMPLS, FUSIONS, POOLINGS, RESNET_TAG, VIT_BLOCKS, VIT_TAGS, build_model
from utils.errors import AHIQError

# The official defaults of the data paths; --data_root replaces the ones still at these values.
PATH_DEFAULTS = {"train_ref_path": "Train_Ref/", "train_dis_path": "Train_Dis/", "val_ref_path": "NTIRE2021/Ref/",
                 "val_dis_path": "NTIRE2021/Dis/", "train_list": "PIPAL.txt", "val_list": "PIPAL_NTIRE_Valid_MOS.txt",
                 "test_ref_path": "Test_Ref/", "test_dis_path": "Test_Dis/", "test_list": "test.txt"}


def base_parser(with_lists: bool = True) -> argparse.ArgumentParser:
    """The official base options (same names and defaults) and the project's additions.

    ``with_lists=False`` leaves out the training/validation data options (predict.py has no lists).
    """
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("data")
    if with_lists:
        g.add_argument("--train_ref_path", default=PATH_DEFAULTS["train_ref_path"],
                       help="folder of the training reference images")
        g.add_argument("--train_dis_path", default=PATH_DEFAULTS["train_dis_path"],
                       help="folder of the training distorted images")
        g.add_argument("--val_ref_path", default=PATH_DEFAULTS["val_ref_path"],
                       help="folder of the validation reference images")
        g.add_argument("--val_dis_path", default=PATH_DEFAULTS["val_dis_path"],
                       help="folder of the validation distorted images")
        g.add_argument("--train_list", default=PATH_DEFAULTS["train_list"], help="training labels (see --list_format)")
        g.add_argument("--val_list", default=PATH_DEFAULTS["val_list"], help="validation labels (see --list_format)")
        g.add_argument("--num_crop", type=int, default=1, help="random crops per training sample (official; unused)")
        g.add_argument("--num_avg_val", type=int, default=5, help="fixed windows averaged in validation")
        g.add_argument("--resize", action="store_true",
                       help="resize both images to --size x --size before cropping (needed for images smaller "
                            "than --crop_size)")
        g.add_argument("--size", type=int, default=224, help="side length used by --resize")
    g.add_argument("--crop_size", type=int, default=224, help="crop side; a multiple of --patch_size")
    g.add_argument("--num_workers", type=int, default=8, help="DataLoader worker processes")
    g = p.add_argument_group("run")
    g.add_argument("--checkpoints_dir", default="./checkpoints", help="runs are stored in checkpoints_dir/name")
    g.add_argument("--name", default="ahiq_pipal", help="experiment name: the run folder under --checkpoints_dir")
    g.add_argument("--load_epoch", type=int, default=-1,
                   help="load epoch_N.pth from the run folder; -1: best.pth, else the latest epoch, else the only .pth")
    g.add_argument("--ckpt", default=None, help="checkpoint file to load (official or ours), instead of the run folder")
    g.add_argument("--seed", type=int, default=1919, help="random seed")
    g.add_argument("--gpu_ids", default="0", help="GPU ids, e.g. '0' or '0,1'; '-1' runs on the CPU")
    g.add_argument("--amp", action="store_true", help="mixed precision on CUDA (see --amp_dtype); fp32 otherwise")
    g.add_argument("--amp_dtype", default="bf16", choices=("bf16", "fp16"),
                   help="autocast dtype for --amp; in training fp16 adds a GradScaler")
    g.add_argument("--tf32", action="store_true",
                   help="allow TF32 matrix products and convolutions on CUDA (faster fp32, slightly less exact)")
    g = p.add_argument_group("model")
    g.add_argument("--patch_size", type=int, default=8, choices=(8, 16), help="ViT patch size")
    g.add_argument("--vit_weights", default=None,
                   help="ViT weights from a local timm state dict (.pth/.safetensors) instead of the hub")
    g.add_argument("--resnet_weights", default=None,
                   help="ResNet-50 weights from a local timm state dict (.pth/.safetensors) instead of the hub")
    g.add_argument("--deform_impl", default="gemm", choices=DEFORM_IMPLS,
                   help="deformable conv: 'gemm' (bilinear sampling + GEMM; faster, autocast-friendly) or "
                        "torchvision's kernel; both compute the same function")
    g.add_argument("--no_pretrained", action="store_true",
                   help="random backbones (tests, offline demos): scores are meaningless")
    g = p.add_argument_group("ablations (defaults: the paper's model; see README, 'Ablations')")
    g.add_argument("--vit_name", default=None, help="timm ViT name; None: the pinned tag for --patch_size")
    g.add_argument("--resnet_name", default=None, help=f"timm ResNet name; None: {RESNET_TAG}")
    g.add_argument("--vit_blocks", default=",".join(map(str, VIT_BLOCKS)), help="ViT blocks whose outputs are used")
    g.add_argument("--cnn_blocks", default=",".join(CNN_BLOCKS), help="ResNet blocks used, all of one stage")
    g.add_argument("--fusion", default="deform", choices=FUSIONS, help="how CNN features are fused")
    g.add_argument("--branches", default="hybrid", choices=BRANCHES, help="feature branches feeding the head")
    g.add_argument("--pooling", default="weighted", choices=POOLINGS,
                   help="weighted: sum(f*w)/sum(w) over patches (paper); mean: the plain mean of f")
    if with_lists:
        add_dataset_options(p)
    return p


def arch_from_options(opt: argparse.Namespace) -> dict:
    """The ablation switches as ``build_model`` arguments."""
    try:
        vit_blocks = tuple(int(b) for b in opt.vit_blocks.split(","))
    except ValueError:
        raise AHIQError(f"--vit_blocks {opt.vit_blocks!r}: expected comma-separated block indices, e.g. 0,1,2,3,4") \
            from None
    return {"vit_name": opt.vit_name, "resnet_name": opt.resnet_name, "vit_blocks": vit_blocks,
            "cnn_blocks": tuple(opt.cnn_blocks.split(",")), "fusion": opt.fusion, "branches": opt.branches,
            "pooling": opt.pooling}


def build_from_options(opt: argparse.Namespace, pretrained: bool | None = None):
    """The model the options describe (one place for train.py, test.py and predict.py)."""
    pretrained = not opt.no_pretrained if pretrained is None else pretrained
    return build_checked(opt.patch_size, pretrained, opt.vit_weights, opt.resnet_weights, opt.deform_impl,
                         **arch_from_options(opt))


def build_checked(*args, **kwargs):
    """``build_model`` with an impossible combination of switches reported as a one-line error."""
    try:
        return build_model(*args, **kwargs)
    except ValueError as err:
        raise AHIQError(f"these ablation options do not fit together: {err}") from None


def backbone_files(checkpoints_dir: str, patch_size: int) -> tuple[str, str]:
    """Where download.sh puts the pinned backbone weights."""
    folder = os.path.join(checkpoints_dir, "backbones")
    return (os.path.join(folder, VIT_TAGS[patch_size] + ".safetensors"),
            os.path.join(folder, RESNET_TAG + ".safetensors"))


def resolve_backbone_weights(checkpoints_dir: str, patch_size: int, vit_weights: str | None,
                             resnet_weights: str | None) -> tuple[str | None, str | None]:
    """Explicit files win; otherwise the files download.sh put in ``checkpoints_dir/backbones``, if there."""
    vit_file, resnet_file = backbone_files(checkpoints_dir, patch_size)
    return (vit_weights or (vit_file if os.path.isfile(vit_file) else None),
            resnet_weights or (resnet_file if os.path.isfile(resnet_file) else None))


def resolve_amp(opt: argparse.Namespace) -> torch.dtype | None:
    """The autocast dtype of --amp/--amp_dtype on CUDA; None (fp32) otherwise, with a warning on the CPU."""
    if not opt.amp:
        return None
    if not opt.device.startswith("cuda"):
        logging.getLogger("ahiq").warning("--amp applies on CUDA only; running in fp32 on %s", opt.device)
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[opt.amp_dtype]


def configure_backends(opt: argparse.Namespace) -> None:
    """cuDNN autotuning on CUDA (crop shapes are fixed, so it pays off); TF32 only when --tf32 asks for it."""
    if opt.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(opt.tf32)


def finalize(opt: argparse.Namespace) -> argparse.Namespace:
    """Check and resolve options: crop size, device, default backbone files from download.sh."""
    if opt.crop_size <= 0 or opt.crop_size % opt.patch_size:
        raise AHIQError(f"--crop_size {opt.crop_size} must be a positive multiple of --patch_size {opt.patch_size}")
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
    if getattr(opt, "crops_per_forward", 1) < 1:
        raise AHIQError(f"--crops_per_forward must be at least 1, got {opt.crops_per_forward}")
    if not opt.no_pretrained:
        opt.vit_weights, opt.resnet_weights = resolve_backbone_weights(opt.checkpoints_dir, opt.patch_size,
                                                                       opt.vit_weights, opt.resnet_weights)
    opt.run_dir = os.path.join(opt.checkpoints_dir, opt.name)
    if hasattr(opt, "dataset"):
        apply_preset(opt, PATH_DEFAULTS)
    return opt


def save_options(opt: argparse.Namespace, phase: str) -> None:
    """The resolved options as the official ``opt_{phase}.txt`` and as JSON, in the run folder."""
    os.makedirs(opt.run_dir, exist_ok=True)
    args = dict(sorted(vars(opt).items()))
    with open(os.path.join(opt.run_dir, f"opt_{phase}.txt"), "w") as f:
        f.write("------------ Options -------------\n")
        f.writelines(f"{k}: {v}\n" for k, v in args.items())
        f.write("-------------- End ----------------\n")
    with open(os.path.join(opt.run_dir, f"opt_{phase}.json"), "w") as f:
        json.dump(args, f, indent=2, default=str)
