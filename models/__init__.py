"""AHIQ model: ``build_model`` assembles the frozen backbones and the trainable fusion + head."""
from __future__ import annotations

from models.ahiq import AHIQ, DEFORM_IMPLS, DeformFusion, PixelPrediction
from models.backbones import RESNET_TAG, VIT_TAGS, build_backbones

__all__ = ["AHIQ", "DEFORM_IMPLS", "DeformFusion", "PixelPrediction", "RESNET_TAG", "VIT_TAGS", "build_backbones",
           "build_model"]


def build_model(patch_size: int = 8, pretrained: bool = True, vit_weights: str | None = None,
                resnet_weights: str | None = None, deform_impl: str = "gemm") -> AHIQ:
    """AHIQ with backbones from timm (pinned tags), from local weight files, or random (``pretrained=False``)."""
    vit, cnn = build_backbones(patch_size, pretrained, vit_weights, resnet_weights)
    return AHIQ(vit, cnn, patch_size, deform_impl)
