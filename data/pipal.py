"""PIPAL-style full-reference data: list files, image reading, crop windows and the evaluation dataset.

A list file has one distorted image a line, ``A0001_00_00.bmp,1520.0648`` (``, `` also occurs; NTIRE test lists
have names only). The reference of ``A0001_00_00.bmp`` is ``A0001.bmp`` (first five characters + ``.bmp``).
Images are decoded once, as 8-bit RGB, and cropped while still uint8; the model scales them to [0, 1].
"""
from __future__ import annotations

import io
import os
import zlib
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from data.defaults import NUM_AVG_VAL, SEED
from data.label_norm import LabelNorm
from utils.errors import AHIQError
from utils.files import read_text

Window = tuple[int, int]  # (top, left)
MAX_PIXELS = 100_000_000  # images above it are refused from their header (--max_pixels raises it)
# A damaged file is reported by our own one-line error; OpenCV's log line would only duplicate it.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def read_list(path: str) -> tuple[list[str], np.ndarray | None]:
    """Image names and raw scores (None for a names-only list) of a PIPAL list file."""
    if not os.path.isfile(path):
        raise AHIQError(f"{path}: list file not found; pass an existing file (see docs/datasets.md)")
    names: list[str] = []
    scores: list[float] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(read_text(path).split("\n"), 1):
        line = line.strip()
        if not line:
            continue
        fields = [field.strip() for field in line.split(",")]
        if len(fields) > 2 or not fields[0] or (len(fields) == 2 and not fields[1]):
            raise AHIQError(f"{path}:{lineno}: expected 'name,score' or 'name', got {line!r}")
        has_score = len(fields) == 2
        if names and has_score != bool(scores):
            raise AHIQError(f"{path}:{lineno}: some lines have a score and others not; "
                            "give every line a score or none")
        if has_score:
            try:
                scores.append(float(fields[1]))
            except ValueError:
                raise AHIQError(f"{path}:{lineno}: score {fields[1]!r} is not a number") from None
            if not np.isfinite(scores[-1]):
                raise AHIQError(f"{path}:{lineno}: score {fields[1]!r} is not finite")
        refuse_repeat(first_line, fields[0], path, lineno)
        names.append(fields[0])
    if not names:
        raise AHIQError(f"{path}: the list is empty")
    return names, (np.asarray(scores, dtype=np.float64) if scores else None)


def refuse_repeat(first_line: dict[str, int], name: str, path: str, lineno: int) -> None:
    """Record where ``name`` is listed; a second listing of it is an error naming both lines."""
    if name in first_line:
        raise AHIQError(f"{path}:{lineno}: {name} is listed again (first on line {first_line[name]}); remove the "
                        "duplicate, it would be scored and counted twice")
    first_line[name] = lineno


def pipal_reference_name(name: str) -> str:
    """PIPAL's rule: the first five characters + ``.bmp`` (``A0001_00_00.bmp`` -> ``A0001.bmp``)."""
    return name[:5] + ".bmp"


def read_rgb(path: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An image as HxWx3 uint8 RGB: grayscale is expanded, alpha dropped, 16-bit scaled to 8-bit (OpenCV rules); EXIF
    orientation is ignored (the pixels as stored, as the header's size and PIL's ``Image.open`` give them).

    Only complete files are accepted: OpenCV refuses truncated BMP, PNG, TIFF and WebP files but fills the missing
    rows of a truncated JPEG with grey, so JPEGs are also decoded by Pillow, which refuses them. Images of more than
    ``max_pixels`` pixels are refused from their header, before decoding.
    """
    image_size(path, max_pixels)
    return decode_rgb(path)


def decode_rgb(path: str) -> np.ndarray:
    """:func:`read_rgb` for a file whose header :func:`image_size` has already checked (the datasets check every
    image when they are built, so loading does not read the header again)."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:  # removed or unreadable since the dataset was checked
        raise AHIQError(f"{path}: cannot be read ({err.strerror or err}); check the file") from None
    try:
        img = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)  # pixels as stored (as PIL)
    except cv2.error as err:  # e.g. larger than OpenCV's own pixel limit
        raise AHIQError(f"{path}: cannot be decoded as an image ({str(err).strip().splitlines()[-1][:120]})") \
            from None
    if img is None:
        raise AHIQError(f"{path}: cannot be decoded as an image (damaged, or not an image); replace the file")
    if data[:2].tobytes() == b"\xff\xd8":  # JPEG
        try:
            with Image.open(io.BytesIO(data.tobytes())) as check:
                check.load()
        except OSError as err:
            raise AHIQError(f"{path}: the JPEG does not decode completely ({err}); replace the file") from None
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def image_size(path: str, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels; more than ``max_pixels`` is refused."""
    if not os.path.isfile(path):
        raise AHIQError(f"{path}: image not found; check the image folder options and the list file")
    pillow_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # the limit is ours, checked below; Pillow's would decide first (or only warn)
    try:
        with Image.open(path) as img:
            width, height = img.size
    except (UnidentifiedImageError, OSError) as err:
        raise AHIQError(f"{path}: cannot be read as an image ({err.__class__.__name__}); replace the file") from err
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit
    if width * height > max_pixels:
        raise AHIQError(f"{path}: {width}x{height} pixels, more than the limit of {max_pixels:,} (a damaged or "
                        "hostile header?); pass --max_pixels N to raise it for real images this large")
    return height, width


def fixed_windows(h: int, w: int, crop: int) -> list[Window]:
    """The official nine windows, in order: four corners, centre, middle-left/right, top/bottom-middle."""
    top_c, left_c = h // 2 - crop // 2, w // 2 - crop // 2
    bottom, right = h - crop, w - crop
    return [(0, 0), (0, right), (bottom, 0), (bottom, right), (top_c, left_c),
            (top_c, 0), (top_c, right), (0, left_c), (bottom, left_c)]


def crop_windows(h: int, w: int, crop: int, n: int, seed: int, reference: str) -> list[Window]:
    """Windows of an ``n``-crop ensemble on an h x w image.

    1: the centre; 2-9: the first ``n`` fixed windows; more: random windows drawn from a generator seeded with
    ``seed`` and the reference's name, so every distorted image of a reference gets the same windows (and shares
    its reference features), and a score never depends on batch size, worker count or order.
    """
    if n < 1:
        raise AHIQError(f"--n_ensemble/--num_avg_val must be at least 1, got {n}")
    if n == 1:
        return [fixed_windows(h, w, crop)[4]]
    if n <= 9:
        return fixed_windows(h, w, crop)[:n]
    rng = np.random.default_rng([seed, zlib.crc32(reference.encode("utf-8"))])
    tops = rng.integers(0, h - crop + 1, size=n)
    lefts = rng.integers(0, w - crop + 1, size=n)
    return [(int(t), int(left)) for t, left in zip(tops, lefts)]


def grid_windows(h: int, w: int, crop: int) -> list[Window]:
    """Windows that cover every pixel of an h x w image: per axis ceil((n - crop) / crop) + 1 offsets spread evenly
    from 0 to n - crop (the last flush with the border, steps of at most ``crop``), rows then columns."""
    def starts(n: int) -> list[int]:
        if n < crop:
            raise AHIQError(f"an image side of {n} is smaller than the crop size {crop}")
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
            raise AHIQError(f"{where}: --random_windows official needs the {len(batch)} images of its batch (from list "
                            f"position {start}) to have one size larger than the crop {crop}, as the released test.py "
                            "stacks them; use --random_windows reference")
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


WINDOW_MODES = ("reference", "official")  # how random ensemble windows are drawn
WINDOW_LAYOUTS = ("ensemble", "grid")  # n crops per image, or the windows that cover every pixel
FLIP_AXES = ("vertical", "horizontal")


class PairDataset(Dataset):
    """Distorted/reference pairs ``(name, dis_path, ref_path)``, as uint8 crop stacks (K, 3, crop, crop).

    Labels are the raw scores normalised by ``norm`` (a :class:`LabelNorm`; fitted on these scores when not given,
    flipped first when ``lower_better``, i.e. DMOS).
    Evaluation (``dataset[idx]``): the windows of :meth:`windows`: with ``windows="ensemble"`` K = ``n_crops``, fixed
    windows for K <= 9, random ones seeded with the reference's name (``random_windows="reference"``) or the released
    test.py's stream over the list in batches of ``window_batch`` (``"official"``, :func:`official_windows`); with
    ``windows="grid"`` the windows that cover every pixel (:func:`grid_windows`), as many as the image needs.
    Training (``dataset[(epoch, idx)]``, keys made by :class:`data.sampler.EpochSampler`): one random window drawn as
    the official ``RandCrop`` draws it (:func:`train_window`), the same for both images, and with probability 0.5
    both crops flipped along ``flip_axis`` (official: vertical, as ``np.fliplr`` on a C x H x W crop), drawn from a
    generator seeded with (seed, epoch, idx); so a sample never depends on worker processes, ranks or where a run
    was resumed.
    Every image is checked when the dataset is built (exists, readable header, same size as its reference, at least
    the crop size unless ``resize``), so a bad file stops the run before any work, naming the file.
    """

    def __init__(self, pairs: Sequence[tuple[str, str, str]], raw_scores: np.ndarray | None = None,
                 crop_size: int = 224, n_crops: int = NUM_AVG_VAL, seed: int = SEED, resize: int | None = None,
                 flip: bool = False, lower_better: bool = False, norm: LabelNorm | None = None,
                 ref_names: Sequence[str] | None = None, random_windows: str = "reference", window_batch: int = 10,
                 flip_axis: str = "vertical", max_pixels: int = MAX_PIXELS, windows: str = "ensemble") -> None:
        self.pairs = list(pairs)
        self.names = [name for name, _, _ in self.pairs]
        self.ref_names = list(ref_names) if ref_names is not None else [os.path.basename(r) for _, _, r in self.pairs]
        self.crop, self.n_crops, self.seed, self.resize, self.flip = crop_size, n_crops, seed, resize, flip
        self.max_pixels = max_pixels
        if random_windows not in WINDOW_MODES or flip_axis not in FLIP_AXES or windows not in WINDOW_LAYOUTS:
            raise AHIQError(f"random windows {random_windows!r} / flip axis {flip_axis!r} / windows {windows!r}: "
                            f"expected one of {WINDOW_MODES} / {FLIP_AXES} / {WINDOW_LAYOUTS}")
        self.grid = windows == "grid"
        if self.grid and random_windows == "official":
            raise AHIQError("--windows grid has no random windows; drop --random_windows official")
        self.flip_dim = -2 if flip_axis == "vertical" else -1
        self.raw_scores, self.norm, self.labels = raw_scores, None, None
        if raw_scores is not None:
            self.norm = norm or LabelNorm.fit(raw_scores, lower_better)
            self.labels = self.norm.apply(raw_scores)
        if resize is not None and resize < crop_size:
            raise AHIQError(f"--size {resize} is smaller than --crop_size {crop_size}")
        self.sizes = self._check_images()
        self._official = None
        if random_windows == "official" and n_crops > 9 and not self.grid:
            self._official = official_windows(self.sizes, crop_size, n_crops, window_batch, seed,
                                              [dis for _, dis, _ in self.pairs])

    def paths(self, idx: int) -> tuple[str, str]:
        return self.pairs[idx][1], self.pairs[idx][2]

    def _check_images(self) -> list[tuple[int, int]]:
        """(height, width) of every pair as scored (after --resize), from the file headers."""
        ref_sizes: dict[str, tuple[int, int]] = {}
        sizes = []
        for idx in range(len(self.names)):
            dis_path, ref_path = self.paths(idx)
            if ref_path not in ref_sizes:
                ref_sizes[ref_path] = image_size(ref_path, self.max_pixels)
            dis_size = image_size(dis_path, self.max_pixels)
            if dis_size != ref_sizes[ref_path]:
                raise AHIQError(f"{dis_path}: size {dis_size[1]}x{dis_size[0]} differs from its reference "
                                f"{ref_path} ({ref_sizes[ref_path][1]}x{ref_sizes[ref_path][0]})")
            if self.resize is None and min(dis_size) < self.crop:
                raise AHIQError(f"{dis_path}: {dis_size[1]}x{dis_size[0]} is smaller than --crop_size {self.crop}; "
                                "pass --resize --size N (N >= crop size) or a smaller --crop_size")
            sizes.append(dis_size if self.resize is None else (self.resize, self.resize))
        return sizes

    def windows(self, idx: int) -> list[Window]:
        """The evaluation windows of image ``idx`` (known from the file headers, before any image is decoded)."""
        if self._official is not None:
            return self._official[idx]
        h, w = self.sizes[idx]
        if self.grid:
            return grid_windows(h, w, self.crop)
        return crop_windows(h, w, self.crop, self.n_crops, self.seed, self.ref_names[idx])

    def reference_key(self, idx: int) -> str:
        return self.pairs[idx][2]

    def crop_keys(self, idx: int) -> list[tuple[str, int, int]]:
        """What identifies each reference crop of image ``idx``: (reference file, top, left)."""
        return [(self.pairs[idx][2], top, left) for top, left in self.windows(idx)]

    def __len__(self) -> int:
        return len(self.names)

    def load(self, path: str) -> np.ndarray:
        """An image as scored: decoded, flipped (``flip``), resized (``resize``)."""
        img = decode_rgb(path)  # the header (size, pixel limit) was checked when the dataset was built
        if self.flip:
            img = img[:, ::-1]
        if self.resize is not None:
            img = cv2.resize(np.ascontiguousarray(img), (self.resize, self.resize))
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
            windows = self.windows(idx)
        else:
            h, w = self.sizes[idx]
            rng = np.random.default_rng([self.seed, epoch, idx])
            windows = [train_window(rng, h, w, self.crop)]
            flip = rng.random() < 0.5
        dis, ref = crop_stack(dis, windows, self.crop), crop_stack(ref, windows, self.crop)
        if flip:  # the crops, as the official transform (crop, then flip)
            dis, ref = dis.flip(self.flip_dim), ref.flip(self.flip_dim)
        label = float("nan") if self.labels is None else float(self.labels[idx])
        return {"dis": dis, "ref": ref, "name": self.names[idx], "label": label, "index": idx}
