"""Label files of full-reference IQA datasets, dataset presets, and the datasets train.py and test.py use.

Two label formats (``--list_format``):

- ``pipal``: one distorted image a line, ``A0001_00_00.bmp,1520.0648`` (names only for unlabelled test lists). The
  reference is derived from the name: PIPAL's rule is the first five characters + ``.bmp``; the ``prefix`` rule
  (KADID-10k: ``I01_01_01.png`` -> ``I01.png``) keeps what comes before the first ``_`` and the extension.
- ``csv``: pyiqa's meta-info CSV: a header row, then one pair a row. Columns are found by name: the reference
  (``ref_name``; also ``hq_name``, ``ref_img``), the distorted image (``dist_name``; also ``dis_name``,
  ``dist_img``), the score (``mos``; also ``dmos``, ``score``, ``elo_score``), optionally ``std`` and split columns.
  Names may hold sub-folders (LIVE: ``jp2k/img29.bmp``); they are joined to the image folders as given.

Scores are raw MOS or DMOS. ``lower_better`` labels (DMOS: LIVE, CSIQ) are flipped so that higher is always better,
then min-max normalised over the list (the official normalisation); the raw range and the direction travel with
checkpoints so predictions map back to the dataset's units.
"""
from __future__ import annotations

import argparse
import csv
import os
from dataclasses import dataclass, field

import numpy as np

from data.pipal import PairDataset, pipal_reference_name, read_list
from data.splits import load_or_create_splits
from utils.errors import AHIQError

LIST_FORMATS = ("pipal", "csv")
REF_RULES = ("pipal", "prefix")
SPLIT_PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class Preset:
    """Where a dataset's files are under ``--data_root`` and how its labels read. Paths are relative to the root."""

    list_format: str
    ref_dir: str
    dis_dir: str
    labels: str
    lower_better: bool = False
    mos_range: tuple[float, float] | None = None  # nominal scale, for the README and the user; not used to normalise
    ref_rule: str = "pipal"
    val: tuple[str, str, str] | None = None  # PIPAL: a separate validation set (ref_dir, dis_dir, labels)
    test: tuple[str, str, str] | None = None
    note: str = ""


# The layouts are those of pyiqa's dataset downloads (``datasets/<name>/...`` and ``datasets/meta_info/*.csv``) and,
# for PIPAL, the folders data/prepare_pipal.py writes (the official option defaults, relative to the root).
PRESETS: dict[str, Preset] = {
    "pipal": Preset("pipal", "Train_Ref", "Train_Dis", "PIPAL.txt", mos_range=None,
                    val=("NTIRE2021/Ref", "NTIRE2021/Dis", "PIPAL_NTIRE_Valid_MOS.txt"),
                    test=("Test_Ref", "Test_Dis", "test.txt"),
                    note="Elo scores, higher is better; 200 train references, 288x288 BMP"),
    "live": Preset("csv", "LIVEIQA_release2", "LIVEIQA_release2", "meta_info/meta_info_LIVEIQADataset.csv",
                   lower_better=True, mos_range=(1, 100), note="DMOS, lower is better; 29 references, about 768x512"),
    "csiq": Preset("csv", "CSIQ/src_imgs", "CSIQ/dst_imgs", "meta_info/meta_info_CSIQDataset.csv",
                   lower_better=True, mos_range=(0, 1), note="DMOS, lower is better; 30 references, 512x512"),
    "tid2013": Preset("csv", "tid2013/reference_images", "tid2013/distorted_images",
                      "meta_info/meta_info_TID2013Dataset.csv", mos_range=(0, 9),
                      note="MOS 0-9, higher is better; 25 references, 512x384"),
    "kadid10k": Preset("csv", "kadid10k/images", "kadid10k/images", "meta_info/meta_info_KADID10kDataset.csv",
                       mos_range=(1, 5), ref_rule="prefix",
                       note="MOS 1-5, higher is better; 81 references, 512x384"),
}

REF_COLUMNS = ("ref_name", "hq_name", "ref_img", "ref", "reference")
DIS_COLUMNS = ("dist_name", "dis_name", "dist_img", "dis_img", "distorted")
SCORE_COLUMNS = ("mos", "dmos", "score", "elo_score", "mos_mean")


@dataclass
class Labels:
    """The rows of a label file: distorted and reference names (relative to their folders) and raw scores."""

    path: str
    names: list[str]
    refs: list[str]
    raw: np.ndarray | None
    std: np.ndarray | None = None
    columns: dict[str, list[str]] = field(default_factory=dict)  # other CSV columns, e.g. a split column

    def subset(self, rows: list[int]) -> Labels:
        pick = np.asarray(rows, dtype=np.int64)
        return Labels(self.path, [self.names[i] for i in rows], [self.refs[i] for i in rows],
                      None if self.raw is None else self.raw[pick], None if self.std is None else self.std[pick],
                      {k: [v[i] for i in rows] for k, v in self.columns.items()})

    def __len__(self) -> int:
        return len(self.names)


def reference_name(name: str, rule: str) -> str:
    """The reference image of a distorted image named by a PIPAL-style list."""
    if rule == "pipal":
        return pipal_reference_name(name)
    if rule == "prefix":
        folder, base = os.path.split(name)
        stem, ext = os.path.splitext(base)
        return os.path.join(folder, stem.split("_")[0] + ext)
    raise ValueError(f"unknown reference rule {rule!r}; one of {REF_RULES}")


def _column(header: list[str], aliases: tuple[str, ...], what: str, path: str, required: bool = True) -> int | None:
    lowered = [h.strip().lower() for h in header]
    for alias in aliases:
        if alias in lowered:
            return lowered.index(alias)
    if required:
        raise AHIQError(f"{path}: no {what} column in the header {header}; name it one of {', '.join(aliases)} "
                        "(pyiqa meta-info CSV: ref_name,dist_name,mos[,std])")
    return None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_csv_labels(path: str) -> Labels:
    """A pyiqa-style meta-info CSV (header row; columns found by name)."""
    if not os.path.isfile(path):
        raise AHIQError(f"{path}: label file not found; pass an existing file (see README, 'Other datasets and "
                        "evaluation protocols')")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [row for row in csv.reader(f) if any(cell.strip() for cell in row)]
    if not rows:
        raise AHIQError(f"{path}: the label file is empty")
    header = [h.strip() for h in rows[0]]
    if _is_number(header[-1]):  # a PIPAL-style list given as CSV: the first row is data, not a header
        raise AHIQError(f"{path}: has no header row (it starts with {','.join(header)!r}); a PIPAL-style "
                        "'name,score' list needs --list_format pipal, a CSV needs a ref_name,dist_name,mos header")
    i_ref = _column(header, REF_COLUMNS, "reference", path)
    i_dis = _column(header, DIS_COLUMNS, "distorted-image", path)
    i_score = _column(header, SCORE_COLUMNS, "score", path, required=False)
    i_std = _column(header, ("std", "mos_std", "dmos_std"), "std", path, required=False)
    used = {i for i in (i_ref, i_dis, i_score, i_std) if i is not None}
    names, refs, scores, stds = [], [], [], []
    extra: dict[str, list[str]] = {h.lower(): [] for i, h in enumerate(header) if i not in used}
    for lineno, row in enumerate(rows[1:], 2):
        if len(row) != len(header):
            raise AHIQError(f"{path}:{lineno}: {len(row)} fields, the header has {len(header)}")
        row = [cell.strip() for cell in row]
        if not row[i_ref] or not row[i_dis]:
            raise AHIQError(f"{path}:{lineno}: empty image name")
        refs.append(row[i_ref])
        names.append(row[i_dis])
        for i, value in ((i_score, scores), (i_std, stds)):
            if i is None:
                continue
            try:
                value.append(float(row[i]))
            except ValueError:
                raise AHIQError(f"{path}:{lineno}: {header[i]} {row[i]!r} is not a number") from None
            if not np.isfinite(value[-1]):
                raise AHIQError(f"{path}:{lineno}: {header[i]} {row[i]!r} is not finite")
        for i, h in enumerate(header):
            if i not in used:
                extra[h.lower()].append(row[i])
    if not names:
        raise AHIQError(f"{path}: the label file has a header but no rows")
    return Labels(path, names, refs, np.asarray(scores, np.float64) if i_score is not None else None,
                  np.asarray(stds, np.float64) if i_std is not None else None, extra)


def read_labels(path: str, list_format: str = "pipal", ref_rule: str = "pipal") -> Labels:
    """The rows of a label file in either format (see the module docstring)."""
    if list_format == "csv":
        return read_csv_labels(path)
    if list_format != "pipal":
        raise AHIQError(f"--list_format {list_format!r}: expected one of {', '.join(LIST_FORMATS)}")
    if os.path.isfile(path):
        with open(path, encoding="utf-8-sig") as f:
            first = f.readline().lower()
        if any(column in first for column in REF_COLUMNS[:2] + DIS_COLUMNS[:2]):
            raise AHIQError(f"{path}: starts with a CSV header ({first.strip()!r}); pass --list_format csv")
    names, raw = read_list(path)
    return Labels(path, names, [reference_name(n, ref_rule) for n in names], raw)


def label_norm(raw: np.ndarray, lower_better: bool) -> dict:
    """What a checkpoint stores to map normalised scores back to the dataset's units (see :func:`to_raw`)."""
    return {"method": "minmax", "mos_min": float(raw.min()), "mos_max": float(raw.max()),
            "lower_better": bool(lower_better)}


def to_raw(scores: np.ndarray, norm: dict) -> np.ndarray:
    """Normalised scores (higher is better) in the raw units of the training labels (DMOS stays DMOS)."""
    lo, hi = norm["mos_min"], norm["mos_max"]
    s = np.asarray(scores, dtype=np.float64)
    return hi - s * (hi - lo) if norm.get("lower_better") else lo + s * (hi - lo)


# ---------------------------------------------------------------------------------------------------------------------
# From options to datasets


def add_dataset_options(p: argparse.ArgumentParser) -> None:
    """Dataset choice, label handling and splits (shared by train.py, test.py and protocol.py)."""
    g = add_label_options(p)
    g.add_argument("--split_file", default=None,
                   help="JSON file of content-disjoint splits (made with the --split_* settings if missing, "
                        "reused if present); selects the rows of the label files by reference image")
    g.add_argument("--split_index", type=int, default=0, help="which split of --split_file")
    add_split_making_options(g)
    g.add_argument("--split_column", default=None,
                   help="instead of --split_file: a CSV column whose values (train/val/test) select the rows")


def add_split_making_options(g) -> None:
    g.add_argument("--split_ratios", default="6,2,2", help="train,val,test proportions of references (new files)")
    g.add_argument("--n_splits", type=int, default=10, help="splits in a new --split_file")
    g.add_argument("--split_seed", type=int, default=None, help="seed of a new --split_file; None: --seed")


def add_label_options(p: argparse.ArgumentParser):
    g = p.add_argument_group("datasets (see README, 'Other datasets and evaluation protocols')")
    g.add_argument("--dataset", default="pipal", choices=sorted(PRESETS),
                   help="preset: label format, label direction, and (with --data_root) the folder layout")
    g.add_argument("--data_root", default=None,
                   help="dataset root: fills the image folders and label files the preset names, unless given")
    g.add_argument("--list_format", default=None, choices=LIST_FORMATS,
                   help="label files: 'pipal' (name,score lines) or 'csv' (pyiqa meta-info); None: the preset's")
    g.add_argument("--label_direction", default=None, choices=("higher_better", "lower_better"),
                   help="lower_better (DMOS) labels are flipped before normalising; None: the preset's")
    return g


def apply_preset(opt: argparse.Namespace, defaults: dict) -> None:
    """Fill format, direction and (with --data_root) folders and label files left at their defaults."""
    preset = PRESETS[opt.dataset]
    opt.list_format = opt.list_format or preset.list_format
    opt.lower_better = (opt.label_direction or ("lower_better" if preset.lower_better else "higher_better")) \
        == "lower_better"
    opt.ref_rule = preset.ref_rule
    if opt.data_root is None:
        return
    if not os.path.isdir(opt.data_root):
        raise AHIQError(f"--data_root {opt.data_root}: no such folder")
    layout = {"train": (preset.ref_dir, preset.dis_dir, preset.labels)}
    layout["val"] = preset.val or layout["train"]
    layout["test"] = preset.test or layout["train"]
    for phase, (ref, dis, labels) in layout.items():
        for key, rel in ((f"{phase}_ref_path", ref), (f"{phase}_dis_path", dis), (f"{phase}_list", labels)):
            if hasattr(opt, key) and getattr(opt, key) == defaults.get(key):
                setattr(opt, key, os.path.join(opt.data_root, rel))


def parse_ratios(text: str) -> tuple[float, float, float]:
    try:
        ratios = tuple(float(r) for r in text.split(","))
    except ValueError:
        ratios = ()
    if len(ratios) != 3 or min(ratios) < 0 or ratios[0] <= 0:
        raise AHIQError(f"--split_ratios {text!r}: expected three non-negative numbers train,val,test with "
                        "train > 0, e.g. 6,2,2")
    return ratios  # type: ignore[return-value]


def has_split(opt: argparse.Namespace) -> bool:
    """Whether the options choose a split (a split file or a split column)."""
    return opt.split_file is not None or opt.split_column is not None


def select_rows(labels: Labels, opt: argparse.Namespace, part: str, create_split: bool = False) -> Labels:
    """The rows of ``labels`` in ``part`` of the split the options choose (all rows when none is chosen).

    A missing ``--split_file`` is made only when ``create_split`` (training); elsewhere it is an error, so a mistyped
    path can never score a model on a fresh split that overlaps its training images.
    """
    if part == "all" or not has_split(opt):
        return labels
    if opt.split_column is not None:
        column = labels.columns.get(opt.split_column.lower())
        if column is None:
            raise AHIQError(f"{labels.path}: no column {opt.split_column!r} for --split_column (columns besides "
                            f"names and scores: {sorted(labels.columns) or 'none'})")
        rows = [i for i, value in enumerate(column) if value.strip().lower() == part]
        where = f"column {opt.split_column} = {part}"
    else:
        if not create_split and not os.path.exists(opt.split_file):
            raise AHIQError(f"{opt.split_file}: no such split file; it is written by train.py (or `python -m "
                            "data.splits`): pass the file the model was trained with")
        splits = load_or_create_splits(opt.split_file, labels, parse_ratios(opt.split_ratios), opt.n_splits,
                                       opt.seed if opt.split_seed is None else opt.split_seed)
        if not 0 <= opt.split_index < len(splits):
            raise AHIQError(f"{opt.split_file}: --split_index {opt.split_index} out of range (the file holds "
                            f"{len(splits)} splits, 0-{len(splits) - 1})")
        keep = set(splits[opt.split_index][part])
        rows = [i for i, ref in enumerate(labels.refs) if ref in keep]
        where = f"split {opt.split_index} of {opt.split_file}, part {part}"
    if not rows:
        raise AHIQError(f"{labels.path}: no rows in {where}; check the split ratios or the split column")
    return labels.subset(rows)


def pair_dataset(ref_dir: str, dis_dir: str, labels: Labels, lower_better: bool = False, **kwargs) -> PairDataset:
    """A :class:`PairDataset` of labelled rows; images are checked when it is built."""
    pairs = [(name, os.path.join(dis_dir, name), os.path.join(ref_dir, ref))
             for name, ref in zip(labels.names, labels.refs)]
    return PairDataset(pairs, labels.raw, lower_better=lower_better, **kwargs)


def dataset_from_options(opt: argparse.Namespace, phase: str, part: str, n_crops: int, flip: bool = False,
                         create_split: bool = False) -> PairDataset:
    """The ``phase`` (train/val/test) folders and label file of the options, restricted to ``part`` of the split."""
    labels = read_labels(getattr(opt, f"{phase}_list"), opt.list_format, opt.ref_rule)
    labels = select_rows(labels, opt, part, create_split)
    return pair_dataset(getattr(opt, f"{phase}_ref_path"), getattr(opt, f"{phase}_dis_path"), labels,
                        opt.lower_better, crop_size=opt.crop_size, n_crops=n_crops, seed=opt.seed,
                        resize=opt.size if opt.resize else None, flip=flip)
