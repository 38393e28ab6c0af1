"""PIPAL's list files and naming rule.

A list file has one distorted image a line, ``A0001_00_00.bmp,1520.0648`` (``, `` also occurs; NTIRE test lists
have names only). The reference of ``A0001_00_00.bmp`` is ``A0001.bmp`` (first five characters + ``.bmp``).
"""
from __future__ import annotations

import numpy as np

from utils.errors import AHIQError
from utils.files import read_text, require_path


def label_text(path: str) -> str:
    """The text of a label file (either format), or one line saying it is missing."""
    return read_text(require_path(path, "label file", "pass an existing file (see docs/datasets.md)"))


def score_of(text: str, where: str) -> float:
    """A listed score: a finite number; ``where`` names the file, line and column."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value):
        raise AHIQError(f"{where} {text!r} is not a finite number")
    return value


def read_list(path: str) -> tuple[list[str], np.ndarray | None]:
    """Image names and raw scores (None for a names-only list) of a PIPAL list file."""
    names: list[str] = []
    scores: list[float] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(label_text(path).split("\n"), 1):
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
            scores.append(score_of(fields[1], f"{path}:{lineno}: score"))
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
