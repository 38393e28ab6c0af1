"""What a run records about what it computes, and the one comparison of a saved record with the run now.

A run that continues or repeats another (train.py --resume, a scoring job's --resume, test.py writing over earlier
results, protocol.py run again) compares what the earlier one recorded with what it would compute now through
:func:`require_same`, which refuses in one line that names each change. Records hold contents by digest, not paths: a
list edited in place or a checkpoint replaced at the same path is a change.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from utils.errors import AHIQError

# How a key of a record is named in a message; keys under "options" are named as the option (--key).
WORDS = {
    "rows": "the list's content (names, references, labels)",
    "pairs": "the pairs (their paths)",
    "head": "the checkpoint's weights",
    "vit": "the ViT backbone's weights",
    "cnn": "the CNN backbone's weights",
    "onnx": "the ONNX file's content",
}


def digest(lines: Iterable[str]) -> str:
    """sha256 (16 hex digits) of text lines: a record of contents (a list's rows, pairs)."""
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8", "surrogateescape"))
        h.update(b"\n")
    return h.hexdigest()[:16]


def file_digest(path: str) -> str:
    """sha256 (full) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _plain(value: Any) -> Any:
    """As JSON reads it back (tuples become lists): a saved record and the run now compare alike."""
    return json.loads(json.dumps(value, default=str))


def _phrase(path: tuple[str, ...], before: Any, value: Any) -> str:
    parent, key = path[-2] if len(path) > 1 else "", path[-1]
    if parent == "options":
        return f"--{key} {before!r} then, {value!r} now"
    if parent == "inputs":  # files named by options, recorded by their content
        return f"the content of --{key} changed"
    if key in WORDS:
        return f"{WORDS[key]} changed"
    return f"{'.'.join(path)} {before!r} then, {value!r} now"


def differences(saved: Mapping, now: Mapping) -> list[str]:
    """One phrase per value of ``now`` that ``saved`` records otherwise: ``--opt A then, B now``
    under ``options``, ``the content of --train_list changed`` under ``inputs``, ``the checkpoint's weights
    changed`` for a content of :data:`WORDS` (digests are not worth showing). Nested records are compared key by
    key; a key the saved record lacks (written by an older version) is not compared."""
    return _differences(_plain(dict(saved)), _plain(dict(now)), ())


def require_same(saved: Mapping, now: Mapping, where: str, what: str, fix: str) -> None:
    """Refuse in one line, ``{where}: {what} ({each change}); {fix}``, when ``saved`` records a value of ``now``
    otherwise (:func:`differences`)."""
    changed = differences(saved, now)
    if changed:
        raise AHIQError(f"{where}: {what} ({'; '.join(changed)[:400]}); {fix}")


def _differences(saved: dict, now: dict, path: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for key in (k for k in now if k in saved):  # in the order of now: the message names changes as listed
        before, value = saved[key], now[key]
        if isinstance(before, dict) and isinstance(value, dict):
            out += _differences(before, value, (*path, key))
        elif before != value:
            out.append(_phrase((*path, key), before, value))
    return out
