"""Patch maps on an image's own pixel grid: the patch scores ``f``, weights ``w`` and contributions of the crops of
one image, placed at their windows and averaged where windows overlap.

The model predicts, for every patch of the ViT grid (``patch`` pixels a side), a score ``f`` and a weight ``w``; a
crop's score is sum(f * w) / sum(w), so the contribution of a patch is f * w / sum(w) and a crop's contributions sum
to its score (with mean pooling: w is absent and the contribution is f / patches). An image's score is the mean of
its crops' scores; its maps are the mean, at each pixel, over the crops that cover it; pixels no crop covers are NaN
(``covered`` False).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class ImageMaps:
    score: float  # the image's score (the mean over its crops)
    f: np.ndarray  # (H, W) float32 patch scores; NaN where no crop covers
    w: np.ndarray | None  # (H, W) float32 patch weights (None with mean pooling)
    contribution: np.ndarray  # (H, W) float32: each patch's share of its crop's score
    covered: np.ndarray  # (H, W) bool: pixels at least one crop covers
    windows: list[tuple[int, int]]  # (top, left) of each crop
    crop: int
    images: tuple[np.ndarray, np.ndarray] | None = None  # distorted and reference as scored, when asked for

    def arrays(self) -> dict[str, np.ndarray]:
        """The maps as named arrays (``np.savez_compressed``): f, w and the contribution as float16 (about 3
        significant digits, far below what the maps can show; the score itself is kept in float64)."""
        out = {"f": self.f.astype(np.float16), "contribution": self.contribution.astype(np.float16),
               "covered": self.covered, "score": np.float64(self.score),
               "windows": np.asarray(self.windows, np.int64).reshape(-1, 2)}
        if self.w is not None:
            out["w"] = self.w.astype(np.float16)
        return out


def contributions(f: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """(K, h, w) contributions of each patch to its crop's score."""
    if w is None:
        return f / (f.shape[1] * f.shape[2])
    return f * w / w.sum(axis=(1, 2), keepdims=True)


def place(crop_maps: np.ndarray, windows: Sequence[tuple[int, int]], crop: int, size: tuple[int, int]
          ) -> tuple[np.ndarray, np.ndarray]:
    """(K, h, w) patch maps of K crops at their windows on an image of ``size`` (H, W): the mean over the crops
    covering each pixel (NaN where none does), and the coverage count."""
    total = np.zeros(size, np.float64)
    count = np.zeros(size, np.int64)
    for values, (top, left) in zip(crop_maps, windows):
        scale = crop // values.shape[0]
        pixels = np.repeat(np.repeat(values, scale, axis=0), scale, axis=1)
        total[top:top + crop, left:left + crop] += pixels
        count[top:top + crop, left:left + crop] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return mean.astype(np.float32), count


def image_maps(score: float, f: np.ndarray, w: np.ndarray | None, windows: Sequence[tuple[int, int]], crop: int,
               size: tuple[int, int]) -> ImageMaps:
    """The maps of one image from its crops' patch maps ``f`` and ``w`` (K, h, w; arrays or CPU tensors) and their
    windows."""
    f = np.asarray(f, np.float64)
    w = None if w is None else np.asarray(w, np.float64)
    f_img, count = place(f, windows, crop, size)
    w_img = None if w is None else place(w, windows, crop, size)[0]
    c_img = place(contributions(f, w), windows, crop, size)[0]
    return ImageMaps(float(score), f_img, w_img, c_img, count > 0, [tuple(map(int, t)) for t in windows], crop)
