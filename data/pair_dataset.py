"""The dataset of distorted/reference pairs that training, validation, test.py, predict.py and the API score.

Images are decoded once, as 8-bit RGB, and cropped while still uint8 (the model scales them to [0, 1]); which windows
are cropped is the :class:`data.windows.WindowPolicy` handed in.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from torch.utils.data import Dataset

from data.images import decode_rgb, image_size, pixel_key
from data.label_norm import LabelNorm
from data.windows import Window, WindowPolicy, crop_stack, official_windows, train_window
from utils.errors import AHIQError

FLIP_AXES = ("vertical", "horizontal")


class PairDataset(Dataset):
    """Distorted/reference pairs ``(name, dis_path, ref_path)``, as uint8 crop stacks (K, 3, crop, crop).

    Labels are the raw scores normalised by ``norm`` (a :class:`LabelNorm`; fitted on these scores when not given,
    flipped first when ``lower_better``, i.e. DMOS).
    Evaluation (``dataset[idx]``): the windows ``policy`` gives the image (:meth:`windows`); random ones are keyed by
    the reference's pixels (:func:`data.images.pixel_key`, computed once per reference file), or follow the released
    test.py's stream over this list (``policy.mode == "official"``).
    Training (``dataset[(epoch, idx)]``, keys made by :class:`data.sampler.EpochSampler`): one random window drawn as
    the official ``RandCrop`` draws it (:func:`train_window`), the same for both images, and with probability 0.5
    both crops flipped along ``flip_axis`` (official: vertical, as ``np.fliplr`` on a C x H x W crop), drawn from a
    generator seeded with (policy.seed, epoch, idx); so a sample never depends on worker processes, ranks or where a
    run was resumed.
    Every image is checked when the dataset is built (exists, readable header, same size as its reference, at least
    the crop size unless ``policy.resize``), so a bad file stops the run before any work, naming the file.
    """

    def __init__(self, pairs: Sequence[tuple[str, str, str]], raw_scores: np.ndarray | None, policy: WindowPolicy,
                 flip: bool = False, lower_better: bool = False, norm: LabelNorm | None = None,
                 flip_axis: str = "vertical", rating_std: np.ndarray | None = None, grouping=None) -> None:
        self.pairs = list(pairs)
        self.grouping = grouping  # data.datasets.Grouping: each image's distortion type and level, and how found
        self.groups = grouping.keys if grouping is not None else {}
        self.rating_std = rating_std  # per image, the std of its ratings in the labels' units, where the list has it
        self.names = [name for name, _, _ in self.pairs]
        self.policy, self.crop, self.flip = policy, policy.crop, flip
        self.flip_dim = -2 if flip_axis == "vertical" else -1
        self.raw_scores, self.norm, self.labels = raw_scores, None, None
        if raw_scores is not None:
            self.norm = norm or LabelNorm.fit(raw_scores, lower_better)
            self.labels = self.norm.apply(raw_scores)
        self.sizes = self._check_images()
        self._keys: dict[str, int] = {}  # reference file -> pixel digest (random windows only)
        self._official = None
        if policy.official:
            self._official = official_windows(self.sizes, policy.crop, policy.n, policy.batch, policy.seed,
                                              [dis for _, dis, _ in self.pairs])

    def paths(self, idx: int) -> tuple[str, str]:
        return self.pairs[idx][1], self.pairs[idx][2]

    def _check_images(self) -> list[tuple[int, int]]:
        """(height, width) of every pair as scored (after --resize), from the file headers."""
        ref_sizes: dict[str, tuple[int, int]] = {}
        sizes = []
        resize, limit = self.policy.resize, self.policy.max_pixels
        for idx in range(len(self.names)):
            dis_path, ref_path = self.paths(idx)
            if ref_path not in ref_sizes:
                ref_sizes[ref_path] = image_size(ref_path, limit)
            dis_size = image_size(dis_path, limit)
            if dis_size != ref_sizes[ref_path]:
                raise AHIQError(f"{dis_path}: size {dis_size[1]}x{dis_size[0]} differs from its reference "
                                f"{ref_path} ({ref_sizes[ref_path][1]}x{ref_sizes[ref_path][0]})")
            if resize is None and min(dis_size) < self.crop:
                raise AHIQError(f"{dis_path}: {dis_size[1]}x{dis_size[0]} is smaller than crop_size {self.crop}; "
                                "score it resized (resize, size N >= the crop size) or with a smaller crop_size")
            sizes.append(dis_size if resize is None else (resize, resize))
        return sizes

    def windows(self, idx: int, ref: np.ndarray | None = None) -> list[Window]:
        """The evaluation windows of image ``idx``; ``ref``: its reference as scored, when already decoded (random
        windows are keyed by its pixels; otherwise it is decoded once per reference file)."""
        if self._official is not None:
            return self._official[idx]
        key = None
        if self.policy.keyed:
            ref_path = self.pairs[idx][2]
            if ref_path not in self._keys:
                self._keys[ref_path] = pixel_key(ref if ref is not None else self.load(ref_path))
            key = self._keys[ref_path]
        return self.policy.windows(*self.sizes[idx], key)

    def reference_key(self, idx: int) -> str:
        return self.pairs[idx][2]

    def crop_count(self, idx: int) -> int:
        """How many crops image ``idx`` is scored on, known without decoding it (its windows are drawn where it is
        loaded, :meth:`__getitem__`)."""
        if self._official is not None:
            return len(self._official[idx])
        return len(self.policy.windows(*self.sizes[idx], 0))

    def __len__(self) -> int:
        return len(self.names)

    def load(self, path: str) -> np.ndarray:
        """An image as scored: decoded, flipped (``flip``), resized (``policy.resize``)."""
        img = decode_rgb(path)  # the header (size, pixel limit) was checked when the dataset was built
        if self.flip:
            img = img[:, ::-1]
        if self.policy.resize is not None:
            img = cv2.resize(np.ascontiguousarray(img), (self.policy.resize, self.policy.resize))
        return img

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, idx = key if isinstance(key, tuple) else (None, key)
        dis_path, ref_path = self.paths(idx)
        dis, ref = self.load(dis_path), self.load(ref_path)
        if dis.shape != ref.shape or dis.shape[:2] != self.sizes[idx]:
            raise AHIQError(f"{dis_path}: decoded size {dis.shape[:2]} differs from its reference {ref_path} or its "
                            "header")
        flip = False
        if epoch is None:
            windows = self.windows(idx, ref)
        else:
            h, w = self.sizes[idx]
            rng = np.random.default_rng([self.policy.seed, epoch, idx])
            windows = [train_window(rng, h, w, self.crop)]
            flip = rng.random() < 0.5
        dis, ref = crop_stack(dis, windows, self.crop), crop_stack(ref, windows, self.crop)
        if flip:  # the crops, as the official transform (crop, then flip)
            dis, ref = dis.flip(self.flip_dim), ref.flip(self.flip_dim)
        label = float("nan") if self.labels is None else float(self.labels[idx])
        item = {"dis": dis, "ref": ref, "name": self.names[idx], "label": label, "index": idx}
        if epoch is None:  # a scoring item says where its crops were cut (the reference cache's keys)
            item["windows"] = windows
        return item
