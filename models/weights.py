"""Where the released checkpoint and the pinned backbone weights come from (``models/weights.tsv``, the table
download.sh reads too), and fetching them with their sha256 checked into a cache folder (hubconf.py)."""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass

from utils.errors import AHIQError

TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights.tsv")
# the environment variables download.sh takes for mirrors, by table name (and AHIQ_CKPT_SHA256 for the checkpoint)
MIRRORS = {"ahiq_pipal": "AHIQ_CKPT_URL", "vit_base_patch8_224.augreg_in21k_ft_in1k": "AHIQ_VIT8_URL",
           "vit_base_patch16_224.augreg_in21k_ft_in1k": "AHIQ_VIT16_URL", "resnet50.a1_in1k": "AHIQ_RESNET_URL"}


@dataclass(frozen=True)
class WeightFile:
    name: str
    url: str
    sha256_prefix: str
    path: str  # under the checkpoints folder


def weight_files() -> dict[str, WeightFile]:
    with open(TABLE, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip() and not line.startswith("#")]
    files = {name: WeightFile(name, url, sha, path) for name, url, sha, path in rows}
    return {name: WeightFile(w.name, os.environ.get(MIRRORS.get(name, ""), w.url),
                             os.environ.get("AHIQ_CKPT_SHA256", w.sha256_prefix) if name == "ahiq_pipal"
                             else w.sha256_prefix, w.path)
            for name, w in files.items()}


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
                        f"a connected machine and copy checkpoints/ here, or set {MIRRORS.get(weight.name, 'the')} "
                        "to a mirror") from None
    if not digest.hexdigest().startswith(weight.sha256_prefix):
        os.unlink(part)
        raise AHIQError(f"{weight.url}: sha256 does not start with {weight.sha256_prefix} (corrupt or wrong file); "
                        "nothing was written")
    os.replace(part, target)
    return target
