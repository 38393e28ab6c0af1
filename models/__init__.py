"""AHIQ model: the architecture as data (:class:`ModelConfig`), building it, and loading it from a checkpoint."""
from __future__ import annotations

from models.ahiq import AHIQ, BN_STATS, BRANCHES, DEFORM_IMPLS, FUSIONS, POOLINGS, DeformFusion, PixelPrediction
from models.backbones import CNN_BLOCKS, RESNET_TAG, VIT_BLOCKS, VIT_TAGS
from models.config import (
    PAPER,
    BackboneSource,
    Checkpoint,
    ModelConfig,
    build_checkpoint_model,
    build_from_config,
    config_from_checkpoint,
    read_checkpoint,
)

__all__ = ["AHIQ", "BN_STATS", "BRANCHES", "CNN_BLOCKS", "DEFORM_IMPLS", "FUSIONS", "PAPER", "POOLINGS", "RESNET_TAG",
           "VIT_BLOCKS", "VIT_TAGS", "BackboneSource", "Checkpoint", "DeformFusion", "ModelConfig", "PixelPrediction",
           "build_checkpoint_model", "build_from_config", "build_model", "config_from_checkpoint", "read_checkpoint"]


def build_model(patch_size: int = 8, pretrained: bool = True, vit_weights: str | None = None,
                resnet_weights: str | None = None, deform_impl: str = "gemm", **switches) -> AHIQ:
    """AHIQ with backbones from timm (pinned tags), from local weight files, or random (``pretrained=False``).

    ``switches``: the other :class:`ModelConfig` fields (the ablations; see docs/ablations.md).
    """
    config = ModelConfig(patch_size=patch_size, **switches)
    return build_from_config(config, BackboneSource(pretrained, vit_weights, resnet_weights), deform_impl)
