"""The two frozen feature extractors of AHIQ (Lao et al., CVPRW 2022, Sec. 3.1) and their weights.

Only the layers AHIQ reads are kept and run: ViT blocks 0-4 and the ResNet-50 stem + ``layer1``. Weights come
from timm under PINNED tags (the ones timm 0.5.4 loaded for the plain names the official code used), from local
timm state-dict files, or are random (``pretrained=False``, for tests and offline demos). Nothing ever falls back
to random weights silently.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import timm
import torch
import torch.nn as nn

from utils.errors import AHIQError

VIT_TAGS = {
    8: "vit_base_patch8_224.augreg_in21k_ft_in1k",
    16: "vit_base_patch16_224.augreg_in21k_ft_in1k",
}
RESNET_TAG = "resnet50.a1_in1k"
VIT_BLOCKS = (0, 1, 2, 3, 4)
VIT_CHANNELS = 768 * len(VIT_BLOCKS)
CNN_CHANNELS = 256 * 3


class ViTFeatures(nn.Module):
    """Outputs of ViT blocks 0-4 (before the final norm, class token dropped) as one (B, 3840, H/p, W/p) map."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        vit.prune_intermediate_layers(indices=list(VIT_BLOCKS), prune_norm=True, prune_head=True)
        self.vit = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.vit.forward_intermediates(
            x, indices=list(VIT_BLOCKS), norm=False, output_fmt="NCHW", intermediates_only=True)
        return torch.cat(feats, dim=1)


class ResNetLayer1Features(nn.Module):
    """Outputs of the three Bottleneck blocks of ResNet-50 ``layer1``, concatenated: (B, 768, H/4, W/4)."""

    def __init__(self, resnet: nn.Module) -> None:
        super().__init__()
        # Same attribute names as timm's ResNet, so timm state-dict keys load unchanged.
        self.conv1, self.bn1, self.act1, self.maxpool = resnet.conv1, resnet.bn1, resnet.act1, resnet.maxpool
        self.layer1 = resnet.layer1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        feats = []
        for block in self.layer1:
            x = block(x)
            feats.append(x)
        return torch.cat(feats, dim=1)


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Read a timm state dict from a .safetensors or .pth file (unwrapping a ``state_dict``/``model`` entry)."""
    if not os.path.isfile(path):
        raise AHIQError(f"{path}: backbone weights file not found; run download.sh or pass an existing file")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            sd = load_file(path, device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any decoding failure becomes a one-line message naming the file
        raise AHIQError(f"{path}: cannot read backbone weights ({type(err).__name__}: {err}); "
                        "expected a timm state dict in .pth or .safetensors format") from err
    for key in ("state_dict", "model"):
        if isinstance(sd, Mapping) and key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
    if not isinstance(sd, Mapping):
        raise AHIQError(f"{path}: not a state dict (found {type(sd).__name__})")
    return dict(sd)


def load_used_weights(module: nn.Module, path: str, tag: str) -> None:
    """Load the keys ``module`` uses from ``path``; extra keys (head, later blocks) are ignored, missing ones fail."""
    sd = read_state_dict(path)
    needed = module.state_dict()
    missing = [k for k in needed if k not in sd]
    if missing:
        raise AHIQError(f"{path}: not {tag} weights: {len(missing)} keys missing, e.g. {missing[:3]}; "
                        f"pass the timm state dict of {tag}")
    wrong = [k for k, v in needed.items() if tuple(sd[k].shape) != tuple(v.shape)]
    if wrong:
        k = wrong[0]
        raise AHIQError(f"{path}: not {tag} weights: {k} has shape {tuple(sd[k].shape)}, "
                        f"expected {tuple(needed[k].shape)}")
    module.load_state_dict({k: sd[k] for k in needed}, strict=True)


def _create(tag: str, pretrained: bool, **kwargs) -> nn.Module:
    try:
        return timm.create_model(tag, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError, ValueError) as err:
        raise AHIQError(
            f"cannot download the pretrained weights of {tag} ({type(err).__name__}); run `sh download.sh` on a "
            "connected machine and pass the files with --vit_weights/--resnet_weights, or copy the timm/Hugging "
            "Face cache; --no_pretrained runs with random backbones (meaningless scores)") from err


def build_backbones(patch_size: int = 8, pretrained: bool = True, vit_weights: str | None = None,
                    resnet_weights: str | None = None) -> tuple[ViTFeatures, ResNetLayer1Features]:
    """Build the frozen ViT and ResNet feature extractors.

    A weights file wins over ``pretrained``; with neither, the backbones are random.
    """
    if patch_size not in VIT_TAGS:
        raise AHIQError(f"--patch_size {patch_size} is not supported; use 8 or 16")
    vit_tag = VIT_TAGS[patch_size]
    # dynamic_img_size: any crop that is a multiple of the patch size (224 uses the position embedding as is).
    vit = ViTFeatures(_create(vit_tag, pretrained and vit_weights is None, dynamic_img_size=True))
    cnn = ResNetLayer1Features(_create(RESNET_TAG, pretrained and resnet_weights is None))
    if vit_weights:
        load_used_weights(vit.vit, vit_weights, vit_tag)
    if resnet_weights:
        load_used_weights(cnn, resnet_weights, RESNET_TAG)
    for net in (vit, cnn):
        net.requires_grad_(False)
        net.eval()
    return vit, cnn
