"""The memory the deformable convolution moves under AMP, measured on the CPU: bytes allocated (every tensor it
makes, summed: each is written once and read at least once) and the wall time of one call on AHIQ's 224-crop map
(768 channels, 56x56), in bf16 autocast as the GPU's AMP path runs it, forward and forward + backward (training).

    python -m benchmarks.deform_memory [--batch 2] [--channels 768] [--size 56]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from models.deform import deform_conv2d_gemm


def allocated(fn) -> int:
    """Bytes allocated by ``fn()`` on the CPU, every allocation summed (frees not subtracted)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return sum(max(e.self_cpu_memory_usage, 0) for e in prof.key_averages())  # self: nested calls counted once


def measure(batch: int, channels: int, size: int, repeats: int = 5) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=g).bfloat16()  # as a bf16 layer hands it on
    offset = (torch.randn(batch, 18, size, size, generator=g) * 2).bfloat16().requires_grad_()
    weight = (torch.randn(channels, channels, 3, 3, generator=g) / (3 * channels ** 0.5)).requires_grad_()
    bias = torch.zeros(channels, requires_grad=True)

    def forward():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return deform_conv2d_gemm(x, offset, weight, bias, padding=1)

    def train():
        forward().float().square().mean().backward()

    out = {}
    for name, fn in (("forward", lambda: torch.no_grad()(forward)()), ("forward+backward", train)):
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        out[name] = {"allocated_MB": allocated(fn) / 2 ** 20, "median_s": statistics.median(times)}
    out["input_MB"] = x.numel() * x.element_size() / 2 ** 20
    with torch.no_grad():
        out["output_dtype"] = str(forward().dtype)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--channels", type=int, default=768)
    p.add_argument("--size", type=int, default=56)
    a = p.parse_args(argv)
    result = measure(a.batch, a.channels, a.size)
    print(f"input {result['input_MB']:.1f} MB (bf16), output {result['output_dtype']}")
    for name in ("forward", "forward+backward"):
        r = result[name]
        print(f"{name:>17}: {r['allocated_MB']:8.1f} MB allocated, median {r['median_s'] * 1000:7.1f} ms")
    return result


if __name__ == "__main__":
    main()
