"""Reading images: 8-bit RGB decoded once, sizes from file headers, a pixel limit, and the pixel digest that seeds an
image's random windows (data/windows.py)."""
from __future__ import annotations

import hashlib
import io
import os
import unicodedata

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from utils.errors import AHIQError
from utils.files import require_path

MAX_PIXELS = 100_000_000  # images above it are refused from their header (--max_pixels raises it)
# A damaged file is reported by our own one-line error; OpenCV's log line would only duplicate it.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def pixel_key(img: np.ndarray | torch.Tensor) -> int:
    """A 64-bit digest of an image's 8-bit RGB pixels and size: an HxWx3 uint8 array, or a (3, H, W) tensor in [0, 1]
    (rounded to the 8-bit values it stands for). The same pixels give the same key whatever the file's name or format,
    or whether they came as a path, an array, a PIL image or a tensor."""
    if isinstance(img, torch.Tensor):
        img = img.detach().mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    img = np.ascontiguousarray(img)
    digest = hashlib.blake2b(np.asarray(img.shape, np.int64).tobytes(), digest_size=8)
    digest.update(img.data)
    return int.from_bytes(digest.digest(), "little")


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
        data = np.fromfile(path, dtype=np.uint8)  # OSError: removed or unreadable since the dataset was checked
        img = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)  # pixels as stored (as PIL)
        if img is not None and data[:2].tobytes() == b"\xff\xd8":  # a JPEG must decode completely
            with Image.open(io.BytesIO(data.tobytes())) as check:
                check.load()
        why = None if img is not None else "damaged, or not an image"
    except (OSError, cv2.error) as err:  # cv2.error: e.g. larger than OpenCV's own pixel limit
        why = (getattr(err, "strerror", None) or str(err).strip().splitlines()[-1])[:120]
    if why:
        raise AHIQError(f"{path}: cannot be decoded as an image ({why}); replace the file")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _other_spelling(path: str) -> str:
    """A hint when the folder holds the file under the same name in another Unicode normalisation."""
    folder, name = os.path.split(path)
    try:
        entries = os.listdir(folder or ".")
    except OSError:
        return ""
    return other_spelling(name, entries)


def other_spelling(name: str, entries) -> str:
    """`` (...)`` naming the entry that is ``name`` in another Unicode normalisation (a list written on one system,
    files copied from macOS: 'é' as one code point, NFC, or as 'e' + accent, NFD), else ''."""
    same = [e for e in entries if e != name and unicodedata.normalize("NFC", e) == unicodedata.normalize("NFC", name)]
    return (f" (the folder holds {same[0]!r}: the same name in another Unicode normalisation, its accents encoded "
            "otherwise, NFC vs NFD; rename the file or fix the list)") if same else ""


def image_size(path: str, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels; more than ``max_pixels`` is refused."""
    if not os.path.isfile(path):  # the hint lists the folder: computed only for a missing file, not for every image
        require_path(path, "image", "check the image folder options and the list file" + _other_spelling(path))
    pillow_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # the limit is ours, checked below; Pillow's would decide first (or only warn)
    try:
        with Image.open(path) as img:
            width, height = img.size
    except (UnidentifiedImageError, OSError) as err:
        raise AHIQError(f"{path}: cannot be decoded as an image (its header: {err.__class__.__name__}); replace the "
                        "file") from err
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit
    if width * height > max_pixels:
        raise AHIQError(f"{path}: {width}x{height} pixels, more than the limit of {max_pixels:,} (a damaged or "
                        "hostile header?); pass --max_pixels N to raise it for real images this large")
    return height, width
