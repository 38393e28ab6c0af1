"""Which windows of an image are scored: the official fixed windows, seeded random ensembles, the released test.py's
random stream, the covering grid and the training crop; and :class:`WindowPolicy`, the one value that says which of
them a run uses (built once from the options, handed to the dataset, the scorer, the API and the hub alike).

A window is (top, left) of a square crop. Which windows a pair gets depends only on the pair (its size and its
reference's pixels), never on its position in a list or batch, except under ``mode="official"``, which replays the
released test.py's list-order stream on purpose.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from data.images import MAX_PIXELS, pixel_key
from utils.errors import AHIQError

Window = tuple[int, int]  # (top, left)
WINDOW_MODES = ("reference", "official")  # how random ensemble windows (more than 9) are drawn
WINDOW_LAYOUTS = ("ensemble", "grid")  # n crops per image, or the windows that cover every pixel


@dataclass(frozen=True)
class WindowPolicy:
    """How an image becomes crops when it is scored: made from checked options by
    :func:`options.data_options.window_policy`, trusted everywhere after.

    ``crop``: the crop side; ``n``: crops per image with ``layout="ensemble"`` (1 the centre, 2-9 the official fixed
    windows, more random ones); ``seed`` and ``mode`` draw the random ones: ``"reference"`` from the seed and the
    reference's pixel digest, ``"official"`` the released test.py's stream over the list in batches of ``batch``;
    ``layout="grid"``: the windows that cover every pixel; ``resize``: file images resized to resize x resize first;
    ``max_pixels``: larger files are refused from their header.
    """

    crop: int
    n: int
    seed: int
    mode: str
    layout: str
    batch: int
    resize: int | None = None
    max_pixels: int = MAX_PIXELS

    @property
    def keyed(self) -> bool:
        """Whether an image's windows depend on its reference's pixels (random windows drawn per reference)."""
        return self.layout == "ensemble" and self.n > 9 and self.mode == "reference"

    @property
    def official(self) -> bool:
        """Whether the windows are the released test.py's list-order stream (:func:`official_windows`)."""
        return self.layout == "ensemble" and self.n > 9 and self.mode == "official"

    def windows(self, h: int, w: int, key: int | None = None) -> list[Window]:
        """The windows of an h x w image whose reference has pixel digest ``key`` (needed when :attr:`keyed`)."""
        if min(h, w) < self.crop:
            raise AHIQError(f"images of {w}x{h} are smaller than the crop size {self.crop}; resize them first")
        if self.layout == "grid":
            return grid_windows(h, w, self.crop)
        if self.official:
            raise AHIQError("random_windows official draws windows by list position (the released test.py's "
                            "stream): score files through test.py, or use random_windows reference")
        return crop_windows(h, w, self.crop, self.n, self.seed, key if self.keyed else 0)

    def crops(self, img: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[Window]]:
        """(K, 3, crop, crop) crops of a (3, H, W) pair at its windows, keyed by the reference's pixels; the crops keep
        the tensors' autograd graph."""
        windows = self.windows(*img.shape[-2:], pixel_key(ref) if self.keyed else None)
        return crop_tensor_stack(img, windows, self.crop), crop_tensor_stack(ref, windows, self.crop), windows


def fixed_windows(h: int, w: int, crop: int) -> list[Window]:
    """The official nine windows, in order: four corners, centre, middle-left/right, top/bottom-middle."""
    top_c, left_c = h // 2 - crop // 2, w // 2 - crop // 2
    bottom, right = h - crop, w - crop
    return [(0, 0), (0, right), (bottom, 0), (bottom, right), (top_c, left_c),
            (top_c, 0), (top_c, right), (0, left_c), (bottom, left_c)]


def crop_windows(h: int, w: int, crop: int, n: int, seed: int, key: int) -> list[Window]:
    """Windows of an ``n``-crop ensemble on an h x w image.

    1: the centre; 2-9: the first ``n`` fixed windows; more: random windows drawn from a generator seeded with
    ``seed`` and ``key`` (the reference's :func:`data.images.pixel_key`), so every distorted image of a reference
    gets the same windows (and shares its reference features), and a score never depends on the file's name, the
    input form, batch size, worker count or order.
    """
    if n == 1:
        return [fixed_windows(h, w, crop)[4]]
    if n <= 9:
        return fixed_windows(h, w, crop)[:n]
    rng = np.random.default_rng([seed, key])
    tops = rng.integers(0, h - crop + 1, size=n)
    lefts = rng.integers(0, w - crop + 1, size=n)
    return [(int(t), int(left)) for t, left in zip(tops, lefts)]


def grid_windows(h: int, w: int, crop: int) -> list[Window]:
    """Windows that cover every pixel of an h x w image: per axis ceil((n - crop) / crop) + 1 offsets spread evenly
    from 0 to n - crop (the last flush with the border, steps of at most ``crop``), rows then columns."""
    def starts(n: int) -> list[int]:
        k = -(-(n - crop) // crop) + 1
        return [0] if k == 1 else [round(i * (n - crop) / (k - 1)) for i in range(k)]

    return [(top, left) for top in starts(h) for left in starts(w)]


def official_windows(sizes: Sequence[tuple[int, int]], crop: int, n: int, batch_size: int, seed: int,
                     paths: Sequence[str] | None = None) -> list[list[Window]]:
    """The random windows of the released test.py, per image of a list: ``setup_seed(seed)`` seeds numpy's global
    generator, then per batch of ``batch_size`` images, per crop index, ``top = randint(0, h - crop)`` and ``left =
    randint(0, w - crop)`` (the last offset is never drawn), one window for the whole batch. The official loader
    drops an incomplete last batch; here the stream simply continues into it."""
    rng = np.random.RandomState(seed)
    windows: list[list[Window]] = []
    for start in range(0, len(sizes), batch_size):
        batch = sizes[start:start + batch_size]
        h, w = batch[0]
        if any(size != (h, w) for size in batch) or min(h, w) <= crop:
            where = paths[start] if paths else f"image {start}"
            raise AHIQError(f"{where}: random_windows official needs the {len(batch)} images of its batch (from list "
                            f"position {start}) to have one size larger than the crop {crop}, as the released test.py "
                            "stacks them; use random_windows reference")
        drawn = [(int(rng.randint(0, h - crop)), int(rng.randint(0, w - crop))) for _ in range(n)]
        windows += [drawn] * len(batch)
    return windows


def train_window(rng: np.random.Generator, h: int, w: int, crop: int) -> Window:
    """A training crop's window as the official ``RandCrop`` draws it: ``randint(0, h - crop)``, so the last offset
    is never drawn (an image of exactly the crop size gives offset 0)."""
    return int(rng.integers(0, max(h - crop, 1))), int(rng.integers(0, max(w - crop, 1)))


def crop_stack(img: np.ndarray, windows: Sequence[Window], crop: int) -> torch.Tensor:
    """(K, 3, crop, crop) uint8 tensor of the windows of an HxWx3 image."""
    crops = np.stack([img[t:t + crop, left:left + crop] for t, left in windows])
    return torch.from_numpy(np.ascontiguousarray(crops.transpose(0, 3, 1, 2)))


def crop_tensor_stack(img: torch.Tensor, windows: Sequence[Window], crop: int) -> torch.Tensor:
    """(K, C, crop, crop) windows of a (C, H, W) tensor."""
    return torch.stack([img[:, t:t + crop, left:left + crop] for t, left in windows])
