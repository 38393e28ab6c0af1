"""The GEMM deformable convolution equals torchvision's deform_conv2d, and the offset convolution computed without
the upsampled map equals upsample-then-convolve; forward and gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d

from models.deform import conv3x3_nearest_upsampled, deform_conv2d_gemm


# the last shape has H*W >= 1024: the batched-GEMM path (in float64: on a map that large, fp32 grid coordinates
# alone move samples by ~1e-5 of a pixel); the others take the one-GEMM path
@pytest.mark.parametrize("shape,offset_scale,dtype", [((2, 8, 5, 7), 1.0, torch.float32),
                                                      ((3, 16, 9, 9), 4.0, torch.float32),
                                                      ((1, 32, 14, 6), 0.3, torch.float32),
                                                      ((2, 4, 32, 33), 2.0, torch.float64)])
def test_gemm_deform_conv_equals_torchvision(shape, offset_scale, dtype):
    g = torch.Generator().manual_seed(sum(shape))
    b, c, h, w = shape
    x = torch.randn(shape, generator=g, dtype=dtype, requires_grad=True)
    # large offsets reach outside the map, where both read zeros
    offset = (torch.randn(b, 18, h, w, generator=g, dtype=dtype) * offset_scale).requires_grad_()
    weight = (torch.randn(c + 3, c, 3, 3, generator=g, dtype=dtype) / c ** 0.5).requires_grad_()
    bias = torch.randn(c + 3, generator=g, dtype=dtype, requires_grad=True)
    ref = deform_conv2d(x, offset, weight, bias, padding=(1, 1))
    out = deform_conv2d_gemm(x, offset, weight, bias, padding=1)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    with torch.inference_mode():  # the scoring path: no autograd
        torch.testing.assert_close(deform_conv2d_gemm(x, offset, weight, bias, padding=1), ref.detach(),
                                   rtol=1e-5, atol=1e-5)
    upstream = torch.randn(ref.shape, generator=g, dtype=dtype)
    grads_ref = torch.autograd.grad(ref, (x, offset, weight, bias), upstream)
    grads = torch.autograd.grad(out, (x, offset, weight, bias), upstream)
    for name, a, e in zip(("input", "offset", "weight", "bias"), grads, grads_ref):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4, msg=f"gradient of {name}")


def test_zero_offsets_are_a_plain_convolution():
    g = torch.Generator().manual_seed(0)
    x, weight = torch.randn(2, 4, 6, 6, generator=g), torch.randn(5, 4, 3, 3, generator=g)
    out = deform_conv2d_gemm(x, torch.zeros(2, 18, 6, 6), weight, None, padding=1)
    torch.testing.assert_close(out, torch.nn.functional.conv2d(x, weight, padding=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("factor,size", [(2, (28, 28)), (2, (5, 7)), (4, (3, 5)), (3, (4, 2)), (1, (6, 6))])
def test_offset_conv_without_the_upsampled_map_equals_upsample_then_conv(factor, size):
    g = torch.Generator().manual_seed(factor)
    x = torch.randn(2, 12, *size, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(18, 12, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    bias = torch.randn(18, dtype=torch.float64, generator=g, requires_grad=True)
    expected = F.conv2d(F.interpolate(x, scale_factor=factor, mode="nearest"), weight, bias, padding=1)
    got = conv3x3_nearest_upsampled(x, weight, bias, factor)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # training backpropagates into conv_offset through it: the gradients must agree too
    upstream = torch.randn(expected.shape, dtype=torch.float64, generator=g)
    want = torch.autograd.grad((expected * upstream).sum(), (x, weight, bias))
    have = torch.autograd.grad((got * upstream).sum(), (x, weight, bias))
    for a, b in zip(have, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_reduced_precision_keeps_the_sampling_positions_exact():
    """On a 56x56 map (a 224 crop) with realistic offsets (a few pixels), bf16 autocast and fp16 inputs stay close
    to torchvision's kernel in float64: the positions and bilinear weights are computed in fp32 whatever the dtype.
    Measured here: bf16 autocast 0.52%, fp16 inputs 0.066% (one GEMM over all taps); with the grid built in the
    offsets' dtype, as before, 9.1% and 1.0%. The output stays in the compute dtype (the bias is added in it)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 64, 56, 56, generator=g)
    offset = torch.randn(2, 18, 56, 56, generator=g) * 2.0
    weight, bias = torch.randn(64, 64, 3, 3, generator=g) / 24, torch.randn(64, generator=g)
    exact = deform_conv2d(x.double(), offset.double(), weight.double(), bias.double(), padding=(1, 1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = deform_conv2d_gemm(x, offset.to(torch.bfloat16), weight, bias, padding=1)
        from_bf16 = deform_conv2d_gemm(x.bfloat16(), offset.to(torch.bfloat16), weight, bias, padding=1)
    assert bf16.dtype == from_bf16.dtype == torch.bfloat16
    assert _relative_l2(bf16, exact) < 0.01 and _relative_l2(from_bf16, exact) < 0.01
    fp16 = deform_conv2d_gemm(x.half(), offset.half(), weight.half(), bias.half(), padding=1)
    assert fp16.dtype == torch.float16 and _relative_l2(fp16, exact) < 0.002


def test_the_reduced_precision_path_gives_the_same_in_chunks_of_images(monkeypatch):
    """bf16/fp16 sample all taps of a few images at a time (a memory bound): any chunking gives the same output,
    and so does the fp32 per-tap path within bf16's rounding."""
    import models.deform as deform
    g = torch.Generator().manual_seed(1)
    x, offset = torch.randn(5, 16, 12, 12, generator=g), torch.randn(5, 18, 12, 12, generator=g)
    weight, bias = torch.randn(8, 16, 3, 3, generator=g) / 12, torch.randn(8, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        whole = deform_conv2d_gemm(x, offset, weight, bias, padding=1)
        monkeypatch.setattr(deform, "SAMPLE_CHUNK_BYTES", 2 * 16 * 9 * 12 * 12 * 4)  # two images per chunk
        chunked = deform_conv2d_gemm(x, offset, weight, bias, padding=1)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=0)
    assert _relative_l2(whole, deform_conv2d_gemm(x, offset, weight, bias, padding=1)) < 0.01


def _phase_kernels_by_loop(weight: torch.Tensor, factor: int) -> torch.Tensor:
    """The upsampled convolution's phase kernels tap by tap (the reference: one addition per landing tap)."""
    c_out, c_in = weight.shape[:2]
    phases = []
    for a in range(factor):
        for b in range(factor):
            taps = [[weight.new_zeros(c_out, c_in) for _ in range(3)] for _ in range(3)]
            for ki in range(3):
                for kj in range(3):
                    ri, rj = (a + ki - 1) // factor + 1, (b + kj - 1) // factor + 1
                    taps[ri][rj] = taps[ri][rj] + weight[:, :, ki, kj]
            phases.append(torch.stack([torch.stack(row, -1) for row in taps], -2))
    return torch.cat(phases)


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_the_phase_kernels_are_the_tap_by_tap_sums_bit_for_bit(factor):
    """Built in a few whole-tensor operations (gathers and additions in the loop's order), the phase kernels are the
    loop's to the bit, at patch 8's factor 2 and patch 16's 4: the convolution sees the same numbers."""
    weight, x = torch.randn(6, 5, 3, 3), torch.randn(2, 5, 4, 4)
    expected = F.conv2d(x, _phase_kernels_by_loop(weight, factor), padding=1)
    n, _, h, w = expected.shape
    expected = expected.view(n, factor, factor, 6, h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, 6, h * factor, w * factor)
    assert torch.equal(conv3x3_nearest_upsampled(x, weight, None, factor), expected)
