"""Small backbones with the structure of the real ones, registered with timm for tests and smoke runs.

``--vit_name ahiq_tiny_vit_p8`` (or ``_p16``) and ``--resnet_name ahiq_tiny_resnet`` build AHIQ with the same code
as the paper's model (ViT blocks 0-4 before the final norm, the three Bottlenecks of ``layer1``, deformable fusion,
the same head), but a 32-wide ViT and a ResNet of 8-64 channels: built and run in milliseconds on a CPU. They only
have random weights (``--no_pretrained``); scores are meaningless. Tests that check fidelity to the official
computation use the real architectures.
"""
from __future__ import annotations

import torch.nn as nn
from timm.models import is_model, register_model
from timm.models.resnet import Bottleneck, ResNet
from timm.models.vision_transformer import VisionTransformer

TINY_VIT = {8: "ahiq_tiny_vit_p8", 16: "ahiq_tiny_vit_p16"}
TINY_RESNET = "ahiq_tiny_resnet"


_FACTORY_ONLY = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")  # timm's, for its own builders


def _register(fn):
    """timm's ``register_model``, once per process: the hub entry imports this module afresh on every load, and a
    second registration would print timm's overwrite warning each time."""
    return fn if is_model(fn.__name__) else register_model(fn)


def _own(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k not in _FACTORY_ONLY}


def _vit(patch_size: int, **kwargs) -> nn.Module:
    return VisionTransformer(patch_size=patch_size, embed_dim=32, depth=6, num_heads=2, mlp_ratio=2.0, **_own(kwargs))


@_register
def ahiq_tiny_vit_p8(pretrained: bool = False, **kwargs) -> nn.Module:
    return _vit(8, **kwargs)


@_register
def ahiq_tiny_vit_p16(pretrained: bool = False, **kwargs) -> nn.Module:
    return _vit(16, **kwargs)


@_register
def ahiq_tiny_resnet(pretrained: bool = False, **kwargs) -> nn.Module:
    return ResNet(Bottleneck, [3, 2, 1, 1], channels=(8, 16, 32, 64), stem_width=8, **_own(kwargs))
