"""AHIQ: attention-based hybrid full-reference IQA (Lao et al., "Attentions Help CNNs See Better", CVPRW 2022).

One ``nn.Module`` with ``forward(dis, ref)`` on [0, 1] RGB crops -> (B, 1) scores. Its trainable parts carry the
official parameter names (``deform_net.*``, ``regressor.*``) so checkpoints move both ways between this project,
the official code and pyiqa. The distorted and the reference crop go through each frozen backbone in ONE batched
call, and the deformable fusion and the shared 1x1 down-projection also run once on the stacked pair.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import DeformConv2d

from models.backbones import CNN_CHANNELS, VIT_CHANNELS
from models.deform import deform_conv2d_gemm

DEFORM_IMPLS = ("gemm", "torchvision")


class DeformFusion(nn.Module):
    """Sec. 3.2: ViT features of the reference predict offsets for a deformable conv on the CNN features."""

    def __init__(self, patch_size: int = 8, in_channels: int = VIT_CHANNELS, cnn_channels: int = CNN_CHANNELS,
                 out_channels: int = CNN_CHANNELS, hidden: int = 512, impl: str = "gemm") -> None:
        super().__init__()
        if impl not in DEFORM_IMPLS:
            raise ValueError(f"deformable convolution implementation {impl!r} is not one of {DEFORM_IMPLS}")
        self.impl = impl
        self.conv_offset = nn.Conv2d(in_channels, 2 * 3 * 3, 3, 1, 1)
        self.deform = DeformConv2d(cnn_channels, out_channels, 3, 1, 1)
        # Brings the H/4 CNN map to the ViT grid: H/8 for patch 8, H/16 for patch 16.
        self.conv1 = nn.Sequential(
            nn.Conv2d(out_channels, hidden, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, out_channels, 3, stride=1 if patch_size == 8 else 2, padding=1),
        )

    def forward(self, cnn_feat: torch.Tensor, vit_ref: torch.Tensor) -> torch.Tensor:
        """``cnn_feat``: the CNN maps of k images per reference, stacked as (k*B, ...); ``vit_ref``: (B, ...)."""
        vit_ref = F.interpolate(vit_ref, size=cnn_feat.shape[-2:], mode="nearest")
        offset = self.conv_offset(vit_ref)
        offset = offset.repeat(cnn_feat.shape[0] // offset.shape[0], 1, 1, 1)
        if self.impl == "gemm":  # same result as torchvision's kernel (tested), faster, and autocast-friendly
            fused = deform_conv2d_gemm(cnn_feat, offset, self.deform.weight, self.deform.bias, padding=1)
        else:
            fused = self.deform(cnn_feat, offset)
        return self.conv1(fused)


class PixelPrediction(nn.Module):
    """Sec. 3.3: patch-wise scores ``f`` and weights ``w``; the image score is sum(f * w) / sum(w)."""

    def __init__(self, in_channels: int = VIT_CHANNELS + CNN_CHANNELS, out_channels: int = 256,
                 hidden: int = 1024) -> None:
        super().__init__()
        self.down_channel = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        self.feat_smoothing = nn.Sequential(
            nn.Conv2d(3 * out_channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, 512, 3, padding=1),
        )
        self.conv1 = nn.Sequential(nn.Conv2d(512, 256, 3, padding=1), nn.ReLU())
        self.conv_attent = nn.Sequential(nn.Conv2d(256, 1, kernel_size=1), nn.Sigmoid())
        self.conv = nn.Sequential(nn.Conv2d(256, 1, kernel_size=1))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """``feat``: cat(vit, fused cnn) of the distorted images stacked over those of the references, (2B, C, h, w)."""
        f_dis, f_ref = self.down_channel(feat).chunk(2)
        feat = self.conv1(self.feat_smoothing(torch.cat((f_dis - f_ref, f_dis, f_ref), dim=1)))
        f, w = self.conv(feat), self.conv_attent(feat)
        return (f * w).sum(dim=(2, 3)) / w.sum(dim=(2, 3))


class AHIQ(nn.Module):
    """The full model. ``vit`` and ``cnn`` are the frozen extractors of :mod:`models.backbones`."""

    def __init__(self, vit: nn.Module, cnn: nn.Module, patch_size: int = 8, deform_impl: str = "gemm") -> None:
        super().__init__()
        self.patch_size = patch_size
        self.vit = vit
        self.cnn = cnn
        self.deform_net = DeformFusion(patch_size, impl=deform_impl)
        self.regressor = PixelPrediction()

    def train(self, mode: bool = True) -> AHIQ:
        """Only the head trains; the backbones stay in eval mode (their BatchNorm statistics are fixed)."""
        super().train(mode)
        self.vit.eval()
        self.cnn.eval()
        return self

    def trainable_state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"deform_net": self.deform_net.state_dict(), "regressor": self.regressor.state_dict()}

    def forward(self, dis: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Scores (B, 1) for distorted/reference crops (B, 3, S, S) in [0, 1]; S a multiple of the patch size."""
        size = dis.shape[-1]
        if dis.shape != ref.shape or dis.shape[-2] != size or size % self.patch_size:
            raise ValueError(f"expected equal square crops with a side divisible by {self.patch_size}, "
                             f"got {tuple(dis.shape)} and {tuple(ref.shape)}")
        n = dis.shape[0]
        x = (torch.cat((dis, ref)) - 0.5) / 0.5  # the official normalisation, for both backbones
        with torch.no_grad():
            vit = self.vit(x)
            cnn = self.cnn(x)
        cnn = self.deform_net(cnn, vit[n:])
        return self.regressor(torch.cat((vit, cnn), dim=1))
