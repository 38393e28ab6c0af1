"""Options of the helper tools in tools/ (dataset preparation, the synthetic demo set, split files, backbones)."""
from __future__ import annotations

import argparse

from options.data_options import label_parser, split_making_parser
from options.defaults import CHECKPOINTS, SEED


def prepare_pipal_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Link the official PIPAL download into the layout train.py reads.")
    p.add_argument("--pipal_root", required=True, help="the folder holding training/ (and validation/)")
    p.add_argument("--out", required=True, help="output folder (links and lists)")
    p.add_argument("--link", default="symlink", choices=("symlink", "hardlink"), help="how images are linked")
    p.add_argument("--test_ref", default=None, help="NTIRE 2022 FR test reference folder (optional)")
    p.add_argument("--test_dis", default=None, help="NTIRE 2022 FR test distorted folder (optional)")
    return p


def synthetic_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Write the small synthetic full-reference dataset of the demo.")
    p.add_argument("--out", default="demo_data", help="output folder")
    p.add_argument("--n_refs", type=int, default=12, help="reference images")
    p.add_argument("--size", type=int, default=64, help="image side")
    p.add_argument("--split", type=int, nargs=3, default=(8, 2, 2), help="references for train, val, test")
    return p


def make_splits_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Make (or check) a content-disjoint split file for a label file.",
                                parents=[label_parser(), split_making_parser()])
    p.add_argument("--labels", default=None, help="label file; default: the preset's under --data_root")
    p.add_argument("--out", required=True, help="the split file to write (an existing one is only checked)")
    p.add_argument("--seed", type=int, default=SEED, help="seed, when --split_seed is not given")
    return p


def backbone_check_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Print where the pinned backbone weights can come from: files, hub or "
                                            "random.")
    p.add_argument("--checkpoints_dir", default=CHECKPOINTS, help="where download.sh put backbones/")
    p.add_argument("--patch_size", type=int, default=8, choices=(8, 16), help="ViT patch size")
    return p


def export_pyiqa_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Write a checkpoint as the file pyiqa's AHIQ loads with "
                                            "pretrained_model_path (the heads plus the full pinned backbones).")
    p.add_argument("--ckpt", required=True, help="an AHIQ checkpoint (ours or official) of the paper's model")
    p.add_argument("--out", required=True, help="the file to write (about 440 MB)")
    p.add_argument("--vit_weights", default=None, help="full timm state dict of the pinned ViT-B/8 (else the hub)")
    p.add_argument("--resnet_weights", default=None, help="full timm state dict of the pinned ResNet-50 (else the hub)")
    return p
