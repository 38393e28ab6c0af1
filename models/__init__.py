"""AHIQ model: ``build_model`` assembles the frozen backbones and the trainable fusion + head."""
from __future__ import annotations

from models.ahiq import AHIQ, BRANCHES, DEFORM_IMPLS, FUSIONS, POOLINGS, DeformFusion, PixelPrediction
from models.backbones import CNN_BLOCKS, RESNET_TAG, VIT_BLOCKS, VIT_TAGS, build_backbones

__all__ = ["AHIQ", "BRANCHES", "CNN_BLOCKS", "DEFORM_IMPLS", "FUSIONS", "POOLINGS", "RESNET_TAG", "VIT_BLOCKS",
           "VIT_TAGS", "DeformFusion", "PixelPrediction", "build_backbones", "build_model"]


def build_model(patch_size: int = 8, pretrained: bool = True, vit_weights: str | None = None,
                resnet_weights: str | None = None, deform_impl: str = "gemm", vit_name: str | None = None,
                resnet_name: str | None = None, vit_blocks: tuple[int, ...] = VIT_BLOCKS,
                cnn_blocks: tuple[str, ...] = CNN_BLOCKS, fusion: str = "deform", branches: str = "hybrid",
                pooling: str = "weighted") -> AHIQ:
    """AHIQ with backbones from timm (pinned tags), from local weight files, or random (``pretrained=False``).

    The defaults are the paper's model; the other arguments are the ablation switches (see README, 'Ablations').
    """
    vit, cnn = build_backbones(patch_size, pretrained, vit_weights, resnet_weights, vit_name, resnet_name,
                               tuple(vit_blocks), tuple(cnn_blocks), use_vit=branches != "cnn",
                               use_cnn=branches != "vit")
    return AHIQ(vit, cnn, patch_size, deform_impl, fusion, branches, pooling)
