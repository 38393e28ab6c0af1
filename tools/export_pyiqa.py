"""Write a checkpoint as the file pyiqa's AHIQ reads with ``pyiqa.create_metric('ahiq', pretrained_model_path=F)``.

pyiqa loads that file's ``params`` into its whole AHIQ module with ``strict=True``: the full timm ``resnet50`` and
``vit_base_patch8_224`` (every block, norm and head) beside ``deform_net`` and ``regressor``. Our checkpoints keep
only the trained parts (their ``params`` key holds those), so this adds the pinned backbone weights: from the files
given, else from the hub. Only the paper's architecture (patch 8) exists in pyiqa.

    python -m tools.export_pyiqa --ckpt checkpoints/ahiq_pipal/best.pth --out ahiq_pyiqa.pth
"""
from __future__ import annotations

import utils.interrupt  # noqa: F401 - first: Ctrl-C while the libraries import is one line

# isort: split

import argparse

import timm
import torch

from models import PAPER, config_from_checkpoint
from models.backbones import read_state_dict
from utils.checkpoint import OFFICIAL_KEYS, head_state_dicts, load_checkpoint
from utils.errors import AHIQError, run_cli
from utils.files import atomic_torch_save


def full_backbone(attr: str, tag: str, weights: str | None) -> dict[str, torch.Tensor]:
    """The whole timm model's state dict under pyiqa's attribute name, from a file or the hub (pinned tag)."""
    model = timm.create_model(tag, pretrained=weights is None)
    if weights:
        model.load_state_dict(read_state_dict(weights), strict=True)
    return {f"{attr}.{k}": v for k, v in model.state_dict().items()}


def export(ckpt_path: str, out: str, vit_weights: str | None = None, resnet_weights: str | None = None) -> int:
    ckpt = load_checkpoint(ckpt_path)
    config = config_from_checkpoint(ckpt, ckpt_path) or PAPER
    if config.replace(crop_size=224) != PAPER:
        raise AHIQError(f"{ckpt_path}: pyiqa's AHIQ is the paper's model only (patch 8, pinned backbones, all "
                        "blocks, deformable fusion, weighted pooling); this checkpoint is another architecture")
    heads = head_state_dicts(ckpt, ckpt_path)
    if not all(heads[part] for part in OFFICIAL_KEYS):
        raise AHIQError(f"{ckpt_path}: lacks deform_net or regressor weights; pyiqa's AHIQ needs both trained parts")
    params = {f"{part}.{k}": v for part, sd in heads.items() for k, v in sd.items()}
    params.update(full_backbone("vit", config.vit_name, vit_weights))
    params.update(full_backbone("resnet50", config.resnet_name, resnet_weights))
    atomic_torch_save({"params": params}, out)
    return len(params)


def exporter_parser(description: str, ckpt: str, out: str, weights: str) -> argparse.ArgumentParser:
    """What both exports take (this one and tools/export_onnx.py): the checkpoint, the file to write and the
    backbones' weight files (``weights``: where they come from otherwise)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--ckpt", required=True, help=ckpt)
    p.add_argument("--out", required=True, help=out)
    for name, what in (("vit", "ViT"), ("resnet", "ResNet")):
        p.add_argument(f"--{name}_weights", default=None, help=f"a timm state dict file of the {what} ({weights})")
    return p


def export_pyiqa_parser() -> argparse.ArgumentParser:
    return exporter_parser("Write a checkpoint as the file pyiqa's AHIQ loads with pretrained_model_path (the heads "
                           "plus the full pinned backbones).", "an AHIQ checkpoint (ours or official) of the paper's "
                           "model", "the file to write (about 440 MB)", "the whole model; else the hub's pinned one")


def main(argv: list[str] | None = None) -> int:
    opt = export_pyiqa_parser().parse_args(argv)
    n = export(opt.ckpt, opt.out, opt.vit_weights, opt.resnet_weights)
    print(f"wrote {opt.out}: {n} tensors; load with pyiqa.create_metric('ahiq', pretrained_model_path='{opt.out}')")
    return n


if __name__ == "__main__":
    run_cli(main)
