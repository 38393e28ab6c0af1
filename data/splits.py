"""Content-disjoint train/val/test splits by reference image, seeded, saved to a JSON file and reused.

Split ``k`` of seed ``s`` permutes the sorted unique reference names with ``numpy.random.default_rng([s, k])`` and
cuts the permutation by the ratios (largest-remainder rounding, so the counts add up). It depends only on the set of
reference names, the seed, ``k`` and the ratios: not on the order of the label file, hash seeds or the process.
The file is written once and then reused as it is, so every run of a protocol sees the same splits even if NumPy's
generators ever change.

    python -m tools.make_splits --dataset kadid10k --data_root datasets --out splits/kadid10k.json [--n_splits 10]
"""
from __future__ import annotations

import json
import logging
import os

import numpy as np

from utils.errors import AHIQError
from utils.files import atomic_write, read_json

log = logging.getLogger("ahiq.splits")
FORMAT = "ahiq-splits/1"
PARTS = ("train", "val", "test")


def part_counts(n: int, ratios: tuple[float, float, float]) -> list[int]:
    """How many of ``n`` references go to train, val and test: largest-remainder rounding of the ratios."""
    shares = np.asarray(ratios, dtype=np.float64) / float(sum(ratios)) * n
    counts = np.floor(shares).astype(int)
    order = sorted(range(3), key=lambda i: (-(shares[i] - counts[i]), i))
    for i in order[: n - int(counts.sum())]:
        counts[i] += 1
    return [int(c) for c in counts]


def make_splits(references, ratios: tuple[float, float, float], n_splits: int, seed: int) -> list[dict[str, list[str]]]:
    """``n_splits`` content-disjoint splits of the unique reference names (see the module docstring)."""
    refs = sorted(set(references))
    counts = part_counts(len(refs), ratios)
    if counts[0] < 1:
        raise AHIQError(f"{len(refs)} reference images cannot be split {ratios}: no training reference left")
    splits = []
    for k in range(n_splits):
        perm = np.random.default_rng([seed, k]).permutation(len(refs))
        bounds = np.cumsum([0, *counts])
        splits.append({part: sorted(refs[i] for i in perm[bounds[j]:bounds[j + 1]]) for j, part in enumerate(PARTS)})
    return splits


def save_splits(path: str, splits: list[dict], seed: int, ratios, source: str) -> None:
    refs = sorted({r for s in splits for part in PARTS for r in s[part]})
    doc = {"format": FORMAT, "source": source, "seed": seed, "ratios": list(ratios), "n_references": len(refs),
           "counts": [len(splits[0][part]) for part in PARTS], "splits": splits}
    atomic_write(path, json.dumps(doc, indent=1) + "\n")


def read_splits(path: str) -> dict:
    doc = read_json(path, "an AHIQ split file", "pass another --split_file, or delete this one to make a new one",
                    FORMAT)
    splits, ratios, problem = doc.get("splits"), doc.get("ratios", []), None
    if not (isinstance(splits, list) and splits and all(isinstance(s, dict) and all(
            isinstance(s.get(p), list) and all(isinstance(r, str) for r in s[p]) for p in PARTS) for s in splits)):
        problem = "expected train/val/test lists of reference names in 'splits'"
    elif not (isinstance(ratios, list) and all(isinstance(r, (int, float)) and not isinstance(r, bool)
                                               for r in ratios)):
        problem = f"'ratios' is {json.dumps(ratios)}, expected a list of numbers (train, val, test)"
    else:
        shared = ((k, a, b, sorted(set(s[a]) & set(s[b]))) for k, s in enumerate(splits)
                  for a, b in (("train", "val"), ("train", "test"), ("val", "test")))  # up to the first overlap
        k, a, b, both = next((x for x in shared if x[3]), (0, "", "", []))
        if both:
            problem = (f"split {k} has {len(both)} reference(s) in both {a} and {b} (e.g. {both[0]}); the parts must "
                       "not share content")
    if problem:
        raise AHIQError(f"{path}: not a valid AHIQ split file: {problem}; fix it, pass another --split_file, or "
                        "delete this one to make a new one")
    return doc


def load_or_create_splits(path: str, labels, ratios: tuple[float, float, float], n_splits: int,
                          seed: int, note_reuse: bool = True) -> list[dict[str, list[str]]]:
    """The splits in ``path``; when the file does not exist, made from the references of ``labels`` and saved.

    A file is reused as it is (its own seed and ratios win; ``note_reuse``: said in one line when they differ from
    the ones a new file would get); it must cover every reference of ``labels``.
    """
    if not os.path.exists(path):
        splits = make_splits(labels.refs, ratios, n_splits, seed)
        save_splits(path, splits, seed, ratios, labels.path)
        log.info("wrote %s: %d splits of %d references (train/val/test %s), seed %d", path, len(splits),
                 len(set(labels.refs)), "/".join(str(len(splits[0][p])) for p in PARTS), seed)
        return splits
    doc = read_splits(path)
    if note_reuse and (doc.get("seed") != seed or [float(r) for r in doc.get("ratios", [])] !=
                       [float(r) for r in ratios]):
        log.info("%s: reusing its splits (seed %s, ratios %s); a new file would get seed %s, ratios %s "
                 "(--split_seed/--split_ratios make new files only)", path, doc.get("seed"), doc.get("ratios"), seed,
                 list(ratios))
    split_refs = {r for s in doc["splits"] for p in PARTS for r in s[p]}
    unknown = sorted(set(labels.refs) - split_refs)
    if unknown:
        raise AHIQError(f"{path}: made for other data ({doc.get('source')}): references of {labels.path} are in no "
                        f"part, e.g. {unknown[:3]}; pass another --split_file (or delete this one to remake it)")
    return doc["splits"]
