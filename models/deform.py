"""Deformable convolution (Dai et al. 2017, v1: no modulation) as bilinear sampling + matrix products.

Computes what ``torchvision.ops.deform_conv2d`` computes (offsets laid out as (dy, dx) per kernel tap, row-major
taps; samples outside the map read zero), but with ``F.grid_sample`` and GEMMs. Unlike
torchvision's kernel it runs in bf16/fp16 under autocast (tensor cores on GPUs), is multi-threaded on the CPU, and
its backward computes only the gradients that are needed (AHIQ never needs the gradient of the frozen CNN
features, which dominates torchvision's CPU backward).
"""
from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

BATCHED_GEMM_MIN_PIXELS = 1024
GRID_DTYPE = torch.float32  # the least precision of sampling positions and weights (benchmarks.gpu_check's own test
# lowers it to bf16 to show that the check catches a grid built in bf16)
SAMPLE_CHUNK_BYTES = 512 * 2 ** 20  # fp32 samples of all taps held at once in the bf16/fp16 path (~6 images at 224)


def deform_conv2d_gemm(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       padding: int = 1) -> torch.Tensor:
    """Stride 1, dilation 1, one offset group; ``offset`` (B, 2*kh*kw, H, W); output (B, C_out, H, W).

    Sampling positions and their bilinear weights are fp32 whatever the autocast dtype: in bf16 a position near row
    40 is stored to 0.25 px and an offset under 0.125 px vanishes (~10% error). In fp32 (and fp64) each kernel tap is
    sampled and multiplied in turn (measured fastest on the CPU). In bf16/fp16 (autocast, or half inputs) the input
    is cast to fp32 once, all taps are sampled in one call, cast to the compute dtype once and reduced by one GEMM
    (fp32 accumulation inside it, not between taps), and the bias is added in the compute dtype: the output keeps it.
    """
    b, c, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    exact = torch.promote_types(offset.dtype, GRID_DTYPE)  # fp32, or fp64 for fp64 inputs
    taps = [(i, j) for i in range(kh) for j in range(kw)]  # row-major, as the offsets are laid out
    offset = offset.to(exact).view(b, len(taps), 2, h, w)
    # every tap's grid in one broadcast (few kernels: a training step's launch count): (B, taps, H, W, 2).
    # align_corners=True maps pixel centre i to -1 + 2i/(n-1): the pixel coordinates torchvision samples at.
    ys = torch.arange(h, device=x.device, dtype=exact).view(1, 1, h, 1)
    xs = torch.arange(w, device=x.device, dtype=exact).view(1, 1, 1, w)
    steps = _tap_steps(kh, kw, padding, x.device, exact)  # (taps, 2): (dy, dx) of each tap
    py = ys + steps[:, 0].view(1, -1, 1, 1) + offset[:, :, 0]
    px = xs + steps[:, 1].view(1, -1, 1, 1) + offset[:, :, 1]
    grids = torch.stack((px * (2.0 / max(w - 1, 1)) - 1, py * (2.0 / max(h - 1, 1)) - 1), dim=-1)

    source = x.to(exact)  # one cast for every tap
    compute = compute_dtype(x)
    if compute in (torch.float16, torch.bfloat16):
        return _reduced_precision(source, grids.view(b, len(taps) * h, w, 2), weight, bias, compute)
    # measured on the CPU: batched GEMMs win at 56x56 (224 crops), one flat GEMM wins at 12x12 (48 crops), also in
    # training; the threshold sits between
    batched = h * w >= BATCHED_GEMM_MIN_PIXELS
    out = None
    for k, (i, j) in enumerate(taps):
        sampled = F.grid_sample(source, grids[:, k], mode="bilinear", padding_mode="zeros", align_corners=True)
        sampled = sampled.to(x.dtype)
        w_k = weight[:, :, i, j]
        if batched:  # (C_out, C) times (B, C, H*W): GEMMs on the samples as laid out, no permuted copy
            sampled = sampled.flatten(2)
            out = torch.matmul(w_k, sampled) if out is None else torch.baddbmm(out, w_k.expand(b, -1, -1), sampled)
        else:  # small maps: one GEMM over all images (per-image GEMMs would be too thin to be efficient)
            tap = torch.einsum("oc,bchw->bohw", w_k, sampled)
            out = tap if out is None else out + tap
    out = out.view(b, c_out, h, w)
    if bias is not None:
        out = out + bias.view(1, c_out, 1, 1)
    return out


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the products run in: autocast's when it is on for ``x``'s device, else ``x``'s."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


def _reduced_precision(source: torch.Tensor, grids: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       compute: torch.dtype) -> torch.Tensor:
    """The bf16/fp16 path: ``grids`` (B, taps*H, W, 2) holds every tap's grid; images are taken in chunks of at
    most :data:`SAMPLE_CHUNK_BYTES` of fp32 samples, so a large batch does not hold all taps of all images at once."""
    b, c, h, w = source.shape
    c_out, taps = weight.shape[0], grids.shape[1] // h
    flat = weight.to(compute).reshape(c_out, c * taps)  # (C_out, C*taps): channel-major, tap-minor, as sampled
    per_chunk = max(1, SAMPLE_CHUNK_BYTES // (c * taps * h * w * source.element_size()))
    outs = []
    for lo in range(0, b, per_chunk):
        sampled = F.grid_sample(source[lo:lo + per_chunk], grids[lo:lo + per_chunk], mode="bilinear",
                                padding_mode="zeros", align_corners=True)  # (n, C, taps*H, W)
        sampled = sampled.to(compute).view(-1, c * taps, h * w)
        # bmm on the samples as laid out (matmul of a matrix by a stack would copy them transposed)
        outs.append(torch.bmm(flat.expand(len(sampled), -1, -1), sampled))
    out = (outs[0] if len(outs) == 1 else torch.cat(outs)).view(b, c_out, h, w)
    if bias is not None:
        out = out + bias.to(compute).view(1, c_out, 1, 1)
    return out


def conv3x3_nearest_upsampled(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                              factor: int) -> torch.Tensor:
    """``conv2d(interpolate(x, scale_factor=factor, mode="nearest"), weight, bias, padding=1)`` for a 3x3 kernel,
    without building the upsampled map.

    Output pixel (factor*i + a, factor*j + b) reads upsampled rows factor*i + a + k (k = -1, 0, 1), which are source
    rows i + floor((a + k) / factor): each of the factor^2 output phases is a 3x3 convolution of the source with the
    kernel taps that land on the same source pixel summed. All phases run as one convolution with factor^2 times
    the output channels, then are interleaved. Same function (sums of the same products, grouped differently), and
    for AHIQ (3840 channels upsampled 2x to 56x56 at 224) it avoids a 48 MB-per-image map and its copies.
    """
    c_out, c_in = weight.shape[:2]
    # the phases' kernels in a few whole-tensor operations (a training step recomputes them; a loop over taps
    # launched ~60 kernels at factor 2): source tap (ri, rj) of phase (a, b) sums the kernel taps (ki, kj) that land on
    # it (at most 4 at factor 2, 9 at 4), gathered and added in one order everywhere (PyTorch, ONNX Runtime: the same
    # sums), with a zero tap where there are fewer
    flat = torch.cat([weight.flatten(2), weight.new_zeros(c_out, c_in, 1)], dim=-1)  # (o, i, 9 taps + a zero)
    index = _phase_index(factor, weight.device)  # (most taps on one source tap, phases * 9)
    phases = flat.index_select(-1, index[0])
    for row in index[1:]:
        phases = phases + flat.index_select(-1, row)
    phases = phases.unflatten(-1, (factor * factor, 3, 3)).permute(2, 0, 1, 3, 4).flatten(0, 1)
    out = F.conv2d(x, phases, None if bias is None else bias.repeat(factor * factor), padding=1)
    n, _, h, w = out.shape
    out = out.view(n, factor, factor, c_out, h, w).permute(0, 3, 4, 1, 5, 2)
    return out.reshape(n, c_out, h * factor, w * factor)


def _constant(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``fn``'s tensor made once per arguments in eager mode, outside inference mode (so training can use it too);
    under torch.compile the body itself is traced, the tensor a constant of the graph (dynamo would otherwise trace
    through the cache, warning that this may be silently wrong, and torch < 2.8 fails on the inference-mode switch
    inside a graph compiled under inference mode)."""
    def build(*args: Any) -> torch.Tensor:
        with torch.inference_mode(False):
            return fn(*args)
    cached = functools.lru_cache(maxsize=16)(build)

    @functools.wraps(fn)
    def call(*args: Any) -> torch.Tensor:
        return fn(*args) if torch.compiler.is_compiling() else cached(*args)
    return call


@_constant
def _tap_steps(kh: int, kw: int, padding: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(kh * kw, 2): each kernel tap's (dy, dx) from the output pixel, row-major, as the offsets are laid out; made
    once per device (not copied to it at every call)."""
    return torch.tensor([(i - padding, j - padding) for i in range(kh) for j in range(kw)], device=device, dtype=dtype)


@_constant
def _phase_index(factor: int, device: torch.device) -> torch.Tensor:
    """(M, factor * factor * 9): for each phase (a, b) and source tap (ri, rj), the kernel taps ki * 3 + kj that land
    on it in increasing order, then 9 (the zero tap) up to M, the most any source tap takes."""
    lists: list[list[int]] = [[] for _ in range(factor * factor * 9)]
    for a, b, ki, kj in itertools.product(range(factor), range(factor), range(3), range(3)):
        ri, rj = (a + ki - 1) // factor + 1, (b + kj - 1) // factor + 1
        lists[(a * factor + b) * 9 + ri * 3 + rj].append(ki * 3 + kj)
    most = max(map(len, lists))
    return torch.tensor([taps + [9] * (most - len(taps)) for taps in lists], device=device).t().contiguous()
