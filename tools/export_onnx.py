"""Export an AHIQ checkpoint (ours, official or pyiqa; ablations included) with its backbones to ONNX, checked
against the PyTorch model before it is kept.

    python -m tools.export_onnx --ckpt checkpoints/ahiq_pipal/AHIQ_vit_p8_epoch33.pth --out ahiq.onnx

The graph maps distorted and reference crops, float32 RGB in [0, 1] of shape (B, 3, S, S) with a dynamic batch B,
to their (B,) scores; S is the crop size (the checkpoint's, or --crop_size), fixed in the graph (the ViT's position
embedding is resampled to it at export, exactly as PyTorch resamples it). Windows and image decoding are not in the
graph: predict.py and the API (``--backend onnxruntime``) do them as for PyTorch (docs/deploy.md). The file's
metadata holds the crop size, the model configuration, the training MOS range, the checkpoint's sha256 and the
backbones' provenance (models/onnx_runtime.py). ONNX Runtime then scores random crops, and the export is refused
(nothing written) unless it agrees with PyTorch within --tolerance, relative to the scores' scale.
"""
from __future__ import annotations

import utils.interrupt  # noqa: F401 - first: Ctrl-C while the libraries import is one line

# isort: split

import argparse
import os

import torch

from engine.scorer import load_scorer
from models import VIT_TAGS
from models.onnx_runtime import export, onnxruntime
from options.defaults import CHECKPOINTS, SEED
from tools.export_pyiqa import exporter_parser
from utils.errors import run_cli
from utils.records import file_digest


def export_parser() -> argparse.ArgumentParser:
    p = exporter_parser("Export an AHIQ checkpoint with its backbones to ONNX (checked against PyTorch with ONNX "
                        "Runtime before it is kept).", "an AHIQ checkpoint (ours, official or pyiqa)",
                        "the .onnx file to write", "else download.sh's, else the hub")
    p.add_argument("--checkpoints_dir", default=CHECKPOINTS, help="where download.sh put backbones/")
    p.add_argument("--no_pretrained", action="store_true", help="random backbones drawn from --seed (tests)")
    p.add_argument("--seed", type=int, default=SEED, help="seed of random backbones")
    p.add_argument("--allow_other_backbones", action="store_true",
                   help="export with backbones other than those the checkpoint records")
    p.add_argument("--patch_size", type=int, default=None, choices=tuple(VIT_TAGS),
                   help="official files only (they hold no configuration): the ViT patch size")
    p.add_argument("--crop_size", type=int, default=None, help="crop side in the graph (default: the checkpoint's)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (GridSample needs 16 or more)")
    p.add_argument("--tolerance", type=float, default=1e-5, help="largest relative difference accepted")
    return p


def main(argv: list[str] | None = None) -> dict:
    opt = export_parser().parse_args(argv)
    onnxruntime()  # before anything slow: missing, one line
    settings = {"crop_size": opt.crop_size} if opt.crop_size else {}
    scorer = load_scorer(opt.ckpt, opt.checkpoints_dir, pretrained=not opt.no_pretrained, vit_weights=opt.vit_weights,
                         resnet_weights=opt.resnet_weights, deform_impl="gemm",
                         model={"patch_size": opt.patch_size} if opt.patch_size else None, seed=opt.seed,
                         allow_other_backbones=opt.allow_other_backbones, **settings)
    model = scorer.model
    meta = {"crop_size": scorer.crop_size, "patch_size": model.patch_size,
            "input": "dis, ref: float32 RGB in [0, 1], (batch, 3, crop_size, crop_size); output score: (batch,), "
                     "higher is better",
            "model": model.config.to_dict(), "label_norm": scorer.label_norm.to_dict() if scorer.label_norm else None,
            "checkpoint": os.path.basename(opt.ckpt), "checkpoint_sha256": file_digest(opt.ckpt),
            "backbones": model.backbones,
            "exported_with": {"torch": torch.__version__, "onnxruntime": onnxruntime().__version__}}
    result = export(model, opt.out, scorer.crop_size, meta, opset=opt.opset, tolerance=opt.tolerance)
    print(f"wrote {opt.out} ({result['bytes'] / 2 ** 20:.1f} MiB); ONNX Runtime vs PyTorch, largest relative "
          f"difference: {max(result['max_rel_diff'].values()):.1e}")
    return result


if __name__ == "__main__":
    run_cli(main)
