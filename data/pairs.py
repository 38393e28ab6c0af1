"""Distorted/reference pairs from the layouts researchers have (predict.py and the Python API):

- a pairs file: a CSV with a header naming the distorted and reference columns (``dis,ref[,mos]``, or pyiqa's
  ``dist_name,ref_name,mos``), paths relative to the file's folder (or to ``dis_dir``/``ref_dir`` when given);
- a folder of distorted images against a folder of references, each reference found by the first rule under which
  every distorted image has one (or the rule given): the same file name, PIPAL's (``A0001_00_00.bmp`` ->
  ``A0001.bmp``), or the prefix before the first ``_`` with the same extension (KADID-10k / TID2013:
  ``I01_01_02.png`` -> ``I01.png``); the two folders may be one, whose references are then not scored;
- a folder of distorted images against one reference file.
"""
from __future__ import annotations

import logging
import os
from collections import Counter

import numpy as np

from data.datasets import read_csv_labels, reference_name
from data.images import other_spelling
from utils.errors import AHIQError
from utils.files import require_path

IMAGE_EXTS = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")
PAIR_RULES = {"same": "the same file name", "pipal": "PIPAL's first five characters + .bmp",
              "prefix": "the name before the first '_', same extension (KADID-10k, TID2013)"}

Pair = tuple[str, str]


def images_in(folder: str) -> list[str]:
    """The image files of ``folder`` (by extension, :data:`IMAGE_EXTS`), sorted; the other files are counted by
    extension in one log line, never skipped silently."""
    require_path(folder, "image folder", "check the path", folder=True)
    entries = sorted(f for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f)))
    names = [f for f in entries if f.lower().endswith(IMAGE_EXTS)]
    skipped = Counter(os.path.splitext(f)[1].lower() or "(no extension)" for f in entries if f not in names)
    if skipped:
        logging.getLogger("ahiq.pairs").info(
            "%s: skipped %d file(s) that are not images read here (%s); give one with --dis/--ref or a --pairs file "
            "to score it anyway", folder, sum(skipped.values()), ", ".join(f"{e}: {n}" for e, n in skipped.items()))
    if not names:
        raise AHIQError(f"{folder}: no images ({', '.join(IMAGE_EXTS)})")
    return names


def _reference(name: str, rule: str) -> str:
    return name if rule == "same" else reference_name(name, rule)


def match_folders(dis_dir: str, ref_dir: str, rule: str = "auto") -> tuple[list[Pair], str]:
    """(distorted, reference) pairs of two folders (see the module docstring) and the rule that made them;
    ``rule``: auto, or one of :data:`PAIR_RULES`. In one folder, an image a rule maps to itself is a reference and
    is not scored."""
    dis, refs = images_in(dis_dir), set(images_in(ref_dir))
    one_folder = os.path.realpath(dis_dir) == os.path.realpath(ref_dir)
    tried = []
    for name in ([rule] if rule != "auto" else [r for r in PAIR_RULES if not (one_folder and r == "same")]):
        scored = [d for d in dis if not (one_folder and _reference(d, name) == d)]
        missing = [d for d in scored if _reference(d, name) not in refs]
        if scored and not missing:
            return [(os.path.join(dis_dir, d), os.path.join(ref_dir, _reference(d, name))) for d in scored], name
        example = missing[0] if missing else dis[0]
        tried.append(f"{PAIR_RULES[name]}: {len(missing) if scored else len(dis)} of {len(dis)} without a reference "
                     f"(e.g. {example} -> {_reference(example, name)}"
                     f"{other_spelling(_reference(example, name), refs)})")
    raise AHIQError(f"{dis_dir} against {ref_dir}: no rule pairs every image with a reference; tried "
                    f"{'; '.join(tried)}. Give --ref FILE for one reference for all, or --pairs FILE (a CSV with "
                    "dis,ref columns)")


def with_reference(dis_dir: str, ref: str) -> list[Pair]:
    """Every image of ``dis_dir`` (but ``ref`` itself) against the one reference file ``ref``."""
    require_path(ref, "reference image", "check the path")
    pairs = [(os.path.join(dis_dir, d), ref) for d in images_in(dis_dir)]
    pairs = [p for p in pairs if os.path.realpath(p[0]) != os.path.realpath(ref)]
    if not pairs:
        raise AHIQError(f"{dis_dir}: no images besides the reference {ref}")
    return pairs


def pairs_file(path: str, dis_dir: str | None = None, ref_dir: str | None = None
               ) -> tuple[list[Pair], np.ndarray | None]:
    """The pairs a CSV lists (header with a distorted and a reference column, e.g. ``dis,ref[,mos]``; read by the
    project's one CSV reader, :func:`data.datasets.read_csv_labels`) and their scores when it has a score column;
    relative paths are taken from ``dis_dir``/``ref_dir`` when given, else from the file's folder."""
    labels = read_csv_labels(path)
    base = os.path.dirname(os.path.abspath(path))
    pairs = [(os.path.join(dis_dir or base, d), os.path.join(ref_dir or base, r))
             for d, r in zip(labels.names, labels.refs)]
    return pairs, labels.raw
