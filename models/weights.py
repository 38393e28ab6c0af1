"""The table of downloadable files (``models/weights.tsv``: the released checkpoint and the pinned backbone weights,
read by download.sh too) and fetching one into a cache folder with its sha256 checked where one is published.

The pinned timm tags of :mod:`models.backbones` are the names of the table's backbone rows: written only there.
"""
from __future__ import annotations

import functools
import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass

from utils.errors import AHIQError

TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights.tsv")


@dataclass(frozen=True)
class WeightFile:
    role: str  # checkpoint, vit8, vit16, resnet
    name: str  # the timm tag of a backbone
    url: str
    sha256: str  # a prefix of the file's sha256; empty: none published (not checked)
    path: str  # under the checkpoints folder
    mirror: str  # the environment variable that replaces url (and {mirror minus _URL}_SHA256 the hash)


@functools.lru_cache(maxsize=1)
def _rows() -> tuple[WeightFile, ...]:
    with open(TABLE, encoding="utf-8") as f:
        return tuple(WeightFile(*line.rstrip("\n").split("\t")) for line in f if line.strip() and line[0] != "#")


def weight_files() -> dict[str, WeightFile]:
    """The table by name and by role, with the mirrors set in the environment applied."""
    files = {}
    for w in _rows():
        sha_var = w.mirror.removesuffix("_URL") + "_SHA256"
        w = WeightFile(w.role, w.name, os.environ.get(w.mirror, w.url), os.environ.get(sha_var, w.sha256), w.path,
                       w.mirror)
        files[w.name] = files[w.role] = w
    return files


def pinned(role: str) -> str:
    """The name of a row of the table: the pinned timm tag of role vit8, vit16 or resnet."""
    return next(w.name for w in _rows() if w.role == role)


def fetch(weight: WeightFile, folder: str) -> str:
    """``folder/weight.path``, downloaded first if missing (to a temporary file, sha256 checked, then renamed)."""
    target = os.path.join(folder, weight.path)
    if os.path.isfile(target):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    part = f"{target}.part.{os.getpid()}"
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(weight.url, timeout=30) as response, open(part, "wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError) as err:
        if os.path.exists(part):
            os.unlink(part)
        raise AHIQError(f"cannot download {weight.url} (offline? {getattr(err, 'reason', err)}); run download.sh on "
                        f"a connected machine and copy checkpoints/ here, or set {weight.mirror} to a mirror") \
            from None
    if not digest.hexdigest().startswith(weight.sha256):
        os.unlink(part)
        raise AHIQError(f"{weight.url}: sha256 does not start with {weight.sha256} (corrupt or wrong file); nothing "
                        "was written")
    os.replace(part, target)
    return target
