"""Deformable convolution (Dai et al. 2017, v1: no modulation) as bilinear sampling + matrix products.

Computes what ``torchvision.ops.deform_conv2d`` computes (offsets laid out as (dy, dx) per kernel tap, row-major
taps; samples outside the map read zero), but with ``F.grid_sample`` and one GEMM per kernel tap. Unlike
torchvision's kernel it runs in bf16/fp16 under autocast (tensor cores on GPUs), is multi-threaded on the CPU, and
its backward computes only the gradients that are needed (AHIQ never needs the gradient of the frozen CNN
features, which dominates torchvision's CPU backward).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def deform_conv2d_gemm(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       padding: int = 1) -> torch.Tensor:
    """Stride 1, dilation 1, one offset group; ``offset`` (B, 2*kh*kw, H, W); output (B, C_out, H, W)."""
    b, c, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    ys = torch.arange(h, device=x.device, dtype=offset.dtype).view(1, h, 1)
    xs = torch.arange(w, device=x.device, dtype=offset.dtype).view(1, 1, w)
    # align_corners=True maps pixel centre i to -1 + 2i/(n-1): the pixel coordinates torchvision samples at.
    scale_y, scale_x = 2.0 / max(h - 1, 1), 2.0 / max(w - 1, 1)
    out = None
    for i in range(kh):
        for j in range(kw):
            k = i * kw + j
            py = ys + (i - padding) + offset[:, 2 * k]
            px = xs + (j - padding) + offset[:, 2 * k + 1]
            grid = torch.stack((px * scale_x - 1, py * scale_y - 1), dim=-1).to(x.dtype)
            sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
            tap = torch.einsum("oc,bchw->bohw", weight[:, :, i, j], sampled)
            out = tap if out is None else out + tap
    if bias is not None:
        out = out + bias.view(1, c_out, 1, 1)
    return out
