"""A small, deterministic synthetic full-reference IQA dataset in the PIPAL layout, for the demo and tests.

References are procedural images (gradients, sinusoidal textures, shapes; seeded per image). Each gets four
distortion types at graded levels: Gaussian blur, Gaussian noise, JPEG compression and contrast reduction.
Names follow PIPAL (``A0003_02_01.bmp``: reference 3, type 2, level 1; reference ``A0003.bmp``).

The synthetic MOS of a distorted image is 100 x the mean SSIM (Wang et al. 2004; 7x7 Gaussian window, on the
luma channel) between it and its reference: a known full-reference quality function, higher is better. It is a
stand-in for human opinion: the demo shows that the pipeline learns a quality function, not that it predicts
people. Lists are split by reference image (content-disjoint): ``train.txt``, ``val.txt``, ``test.txt``.

Command line: ``python -m tools.make_synthetic --out demo_data [--n_refs 12 --size 64]``.
"""
from __future__ import annotations

import utils.interrupt  # noqa: F401 - first: Ctrl-C while the libraries import is one line

# isort: split

import argparse
import os

import cv2
import numpy as np

from utils.errors import run_cli

DISTORTIONS = ("blur", "noise", "jpeg", "contrast")
LEVELS = 4


def make_reference(index: int, size: int) -> np.ndarray:
    """A procedural RGB image: a colour gradient, a sinusoidal texture and a few filled shapes."""
    rng = np.random.default_rng([2022, index])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.empty((size, size, 3), np.float32)
    for c in range(3):
        a, b, f, phase = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(2, 12), rng.uniform(0, 2 * np.pi)
        img[..., c] = 0.5 + 0.25 * (a * xx + b * yy) + 0.2 * np.sin(2 * np.pi * f * (xx * a + yy * b) + phase)
    img = np.clip(img * 255, 0, 255).astype(np.uint8)
    for _ in range(rng.integers(3, 7)):
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        center = tuple(int(v) for v in rng.integers(0, size, 2))
        if rng.random() < 0.5:
            cv2.circle(img, center, int(rng.integers(size // 16, size // 4)), color, -1, lineType=cv2.LINE_AA)
        else:
            corner = tuple(int(v) for v in rng.integers(0, size, 2))
            cv2.rectangle(img, center, corner, color, -1)
    return img


def distort(img: np.ndarray, kind: str, level: int, seed: int) -> np.ndarray:
    """``level`` 1 (mild) to 4 (strong)."""
    if kind == "blur":
        return cv2.GaussianBlur(img, (0, 0), sigmaX=0.6 * level)
    if kind == "noise":
        noise = np.random.default_rng(seed).normal(0, 6 * level, img.shape)
        return np.clip(img + noise, 0, 255).astype(np.uint8)
    if kind == "jpeg":
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, [60, 30, 15, 5][level - 1]])
        return cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if kind == "contrast":
        factor = 1 - 0.2 * level
        return np.clip((img.astype(np.float32) - 128) * factor + 128, 0, 255).astype(np.uint8)
    raise ValueError(kind)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of the luma channels (Gaussian 7x7 window, sigma 1.5, K1 0.01, K2 0.03)."""
    ya = cv2.cvtColor(a, cv2.COLOR_BGR2GRAY).astype(np.float64)
    yb = cv2.cvtColor(b, cv2.COLOR_BGR2GRAY).astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(x):
        return cv2.GaussianBlur(x, (7, 7), 1.5)

    mu_a, mu_b = blur(ya), blur(yb)
    var_a, var_b, cov = blur(ya * ya) - mu_a ** 2, blur(yb * yb) - mu_b ** 2, blur(ya * yb) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)
    return float((num / den).mean())


def generate(out: str, n_refs: int = 12, size: int = 64, split: tuple[int, int, int] = (8, 2, 2)) -> dict:
    """Write ``out/ref``, ``out/dis`` and the three lists; returns the list paths. Same inputs, same files."""
    if sum(split) != n_refs:
        raise ValueError(f"split {split} must add up to n_refs {n_refs}")
    os.makedirs(os.path.join(out, "ref"), exist_ok=True)
    os.makedirs(os.path.join(out, "dis"), exist_ok=True)
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    bounds = np.cumsum(split)
    for r in range(n_refs):
        ref = make_reference(r, size)  # handled as BGR by OpenCV throughout; colour order does not matter here
        cv2.imwrite(os.path.join(out, "ref", f"A{r:04d}.bmp"), ref)
        part = "train" if r < bounds[0] else "val" if r < bounds[1] else "test"
        for t, kind in enumerate(DISTORTIONS):
            for level in range(1, LEVELS + 1):
                name = f"A{r:04d}_{t:02d}_{level:02d}.bmp"
                dis = distort(ref, kind, level, seed=r * 100 + t * 10 + level)
                cv2.imwrite(os.path.join(out, "dis", name), dis)
                lines[part].append(f"{name},{100 * ssim(ref, dis):.4f}")
    paths = {}
    for part, part_lines in lines.items():
        paths[part] = os.path.join(out, f"{part}.txt")
        with open(paths[part], "w") as f:
            f.write("\n".join(part_lines) + "\n")
    return paths


def synthetic_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Write the small synthetic full-reference dataset of the demo.")
    p.add_argument("--out", default="demo_data", help="output folder")
    p.add_argument("--n_refs", type=int, default=12, help="reference images")
    p.add_argument("--size", type=int, default=64, help="image side")
    p.add_argument("--split", type=int, nargs=3, default=(8, 2, 2), help="references for train, val, test")
    return p


def main(argv: list[str] | None = None) -> dict[str, str]:
    args = synthetic_parser().parse_args(argv)
    paths = generate(args.out, args.n_refs, args.size, tuple(args.split))
    print(f"synthetic dataset in {args.out}: " + ", ".join(f"{k} {v}" for k, v in paths.items()))
    return paths


if __name__ == "__main__":
    run_cli(main)
