"""Label files of full-reference IQA datasets, dataset presets, and the datasets train.py and test.py use.

Two label formats (``--list_format``):

- ``pipal``: one distorted image a line, ``A0001_00_00.bmp,1520.0648`` (names only for unlabelled test lists). The
  reference is derived from the name: PIPAL's rule is the first five characters + ``.bmp``; the ``prefix`` rule
  (KADID-10k: ``I01_01_01.png`` -> ``I01.png``) keeps what comes before the first ``_`` and the extension.
- ``csv``: pyiqa's meta-info CSV: a header row, then one pair a row. Columns are found by name: the reference
  (``ref_name``; also ``hq_name``, ``ref_img``), the distorted image (``dist_name``; also ``dis_name``,
  ``dist_img``), the score (``mos``; also ``dmos``, ``score``, ``elo_score``); other columns (``std``, a split
  column) are kept as text.
  Names may hold sub-folders (LIVE: ``jp2k/img29.bmp``); they are joined to the image folders as given.

Scores are raw MOS or DMOS. ``lower_better`` labels (DMOS: LIVE, CSIQ) are flipped so that higher is always better,
then min-max normalised over the list (the official normalisation); the raw range and the direction travel with
checkpoints so predictions map back to the dataset's units.
"""
from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass, field

import numpy as np

from data.pair_dataset import PairDataset
from data.pipal import label_text, pipal_reference_name, read_list, refuse_repeat, score_of
from data.splits import load_or_create_splits
from utils.errors import AHIQError
from utils.files import read_text, require_path

LIST_FORMATS = ("pipal", "csv")
REF_RULES = ("pipal", "prefix")


@dataclass(frozen=True)
class Preset:
    """Where a dataset's files are under ``--data_root`` and how its labels read. Paths are relative to the root."""

    list_format: str
    ref_dir: str
    dis_dir: str
    labels: str
    lower_better: bool = False
    ref_rule: str = "pipal"
    val: tuple[str, str, str] | None = None  # PIPAL: a separate validation set (ref_dir, dis_dir, labels)
    test: tuple[str, str, str] | None = None


# The layouts are those of pyiqa's dataset downloads (``datasets/<name>/...`` and ``datasets/meta_info/*.csv``) and,
# for PIPAL, the folders tools/prepare_pipal.py writes (the official option defaults, relative to the root).
# PIPAL: Elo scores, higher is better. LIVE and CSIQ: DMOS, lower is better. TID2013 (MOS 0-9) and KADID-10k
# (MOS 1-5): higher is better.
PRESETS: dict[str, Preset] = {
    "pipal": Preset("pipal", "Train_Ref", "Train_Dis", "PIPAL.txt",
                    val=("NTIRE2021/Ref", "NTIRE2021/Dis", "PIPAL_NTIRE_Valid_MOS.txt"),
                    test=("Test_Ref", "Test_Dis", "test.txt")),
    "live": Preset("csv", "LIVEIQA_release2", "LIVEIQA_release2", "meta_info/meta_info_LIVEIQADataset.csv",
                   lower_better=True),
    "csiq": Preset("csv", "CSIQ/src_imgs", "CSIQ/dst_imgs", "meta_info/meta_info_CSIQDataset.csv", lower_better=True),
    "tid2013": Preset("csv", "tid2013/reference_images", "tid2013/distorted_images",
                      "meta_info/meta_info_TID2013Dataset.csv"),
    "kadid10k": Preset("csv", "kadid10k/images", "kadid10k/images", "meta_info/meta_info_KADID10kDataset.csv",
                       ref_rule="prefix"),
}

REF_COLUMNS = ("ref_name", "hq_name", "ref_img", "ref", "reference")
DIS_COLUMNS = ("dist_name", "dis_name", "dist_img", "dis_img", "distorted", "dis")
SCORE_COLUMNS = ("mos", "dmos", "score", "elo_score", "mos_mean")


@dataclass
class Labels:
    """The rows of a label file: distorted and reference names (relative to their folders) and raw scores."""

    path: str
    names: list[str]
    refs: list[str]
    raw: np.ndarray | None
    columns: dict[str, list[str]] = field(default_factory=dict)  # other CSV columns, e.g. a split column

    def subset(self, rows: list[int]) -> Labels:
        pick = np.asarray(rows, dtype=np.int64)
        return Labels(self.path, [self.names[i] for i in rows], [self.refs[i] for i in rows],
                      None if self.raw is None else self.raw[pick], {k: [v[i] for i in rows] for k, v in
                                                                     self.columns.items()})

    def __len__(self) -> int:
        return len(self.names)


# The distortion types of the public datasets, by the code their file names carry (the datasets' own papers).
TYPE_NAMES = {
    "kadid10k": dict(enumerate((
        "gaussian blur", "lens blur", "motion blur", "color diffusion", "color shift", "color quantization",
        "color saturation 1", "color saturation 2", "JPEG2000", "JPEG", "white noise", "white noise in color "
        "component", "impulse noise", "multiplicative noise", "denoise", "brighten", "darken", "mean shift",
        "jitter", "non-eccentricity patch", "pixelate", "quantization", "color block", "high sharpen",
        "contrast change"), 1)),
    "tid2013": dict(enumerate((
        "additive Gaussian noise", "additive noise in color components", "spatially correlated noise",
        "masked noise", "high frequency noise", "impulse noise", "quantization noise", "Gaussian blur",
        "image denoising", "JPEG compression", "JPEG2000 compression", "JPEG transmission errors",
        "JPEG2000 transmission errors", "non eccentricity pattern noise", "local block-wise distortions",
        "mean shift (intensity shift)", "contrast change", "change of color saturation",
        "multiplicative Gaussian noise", "comfort noise", "lossy compression of noisy images",
        "image color quantization with dither", "chromatic aberrations", "sparse sampling and reconstruction"), 1)),
    "csiq": {"AWGN": "additive white Gaussian noise", "BLUR": "Gaussian blur", "contrast": "global contrast "
             "decrement", "fnoise": "additive pink Gaussian noise", "JPEG": "JPEG", "jpeg2000": "JPEG2000"},
    "live": {"jp2k": "JPEG2000", "jpeg": "JPEG", "wn": "white noise", "gblur": "Gaussian blur",
             "fastfading": "fast fading (JPEG2000 over a Rayleigh channel)"},
}

# How names say their distortion, tried in order; each: (name, pattern of the file name, keys of its groups)
NAMINGS = (
    ("pipal", re.compile(r"^A\d{4}_(\d+)_(\d+)\.\w+$"), ("group", "subtype")),  # PIPAL: no levels; group, subtype
    ("kadid10k", re.compile(r"^I\d+_(\d{2})_(\d{2})\.\w+$"), ("type", "level")),  # KADID-10k: I01_01_05.png
    ("tid2013", re.compile(r"^[iI]\d+_(\d{2})_(\d)\.\w+$"), ("type", "level")),  # TID2013: i01_01_5.bmp
    ("csiq", re.compile(r"^[^.]+\.([^.]+)\.(\d+)\.\w+$"), ("type", "level")),  # CSIQ: 1600.AWGN.1.png
    ("live", re.compile(r"^([^/]+)/[^/]+$"), ("type",)),  # LIVE: jp2k/img29.bmp (the folder is the type)
)


@dataclass(frozen=True)
class Grouping:
    """Each image's distortion groups (``type``/``level``, or PIPAL's ``group``/``subtype``) and how they were found:
    ``rule`` names the naming that every file name of the list follows (or the list's columns), None where none
    does (then ``keys`` is empty and ``why`` says so)."""

    keys: dict[str, list[str]]
    rule: str | None
    why: str

    def name_of(self, key: str, code: str) -> str | None:
        """The public name of a type code under this naming (KADID-10k, TID2013, CSIQ, LIVE), or None."""
        names = TYPE_NAMES.get(self.rule or "", {})
        return names.get(int(code) if code.isdigit() else code) if key == "type" else None


def distortion_groups(labels: Labels) -> Grouping:
    """Each image's distortion type and level from the list itself, whatever the dataset preset: ``type``/``level``
    columns of a CSV list, else the naming every file name follows (:data:`NAMINGS`: PIPAL, KADID-10k, TID2013,
    CSIQ, LIVE). A list whose names follow no single naming has no groups, and says why."""
    found = {key: list(labels.columns[key]) for key in ("type", "level") if key in labels.columns}
    if found:
        return Grouping(found, "columns", f"the list's {'/'.join(found)} column(s)")
    names = [name.replace(os.sep, "/") for name in labels.names]
    for rule, pattern, keys in NAMINGS:
        matches = [pattern.match(n if rule == "live" else n.rsplit("/", 1)[-1]) for n in names]
        if names and all(matches):
            return Grouping({key: [m.group(i + 1) for m in matches] for i, key in enumerate(keys)}, rule,
                            f"{rule}-style file names")
    return Grouping({}, None, "the file names follow no known naming (PIPAL, KADID-10k, TID2013, CSIQ, LIVE) and "
                              "the list has no type/level columns")


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
    """The index of the one column of ``header`` named by one of ``aliases`` (None when ``required`` is False and
    there is none); two of them are refused, as which one is meant cannot be guessed."""
    found = [i for i, h in enumerate(header) if h.strip().lower() in aliases]
    if len(found) == 1 or not (found or required):
        return found[0] if found else None
    problem = (f"{len(found)} {what} columns in the header ({', '.join(header[i] for i in found)}); keep one" if found
               else f"no {what} column in the header {header}; name it one of {', '.join(aliases)} (pyiqa meta-info "
               "CSV: ref_name,dist_name,mos[,std])")
    raise AHIQError(f"{path}: {problem}")


def check_name(name: str, where: str) -> None:
    """An image name a results file (``name,score`` lines) and a printed table can hold: no comma, no line break.
    The one rule for label files, pairs files and folders."""
    if not name or any(c in name for c in ",\n\r"):
        raise AHIQError(f"{where}: image name {name!r} is empty or holds a comma or a line break, which the "
                        "'name,score' results files and tables cannot hold; name every image, without those characters")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_csv_labels(path: str) -> Labels:
    """A pyiqa-style meta-info CSV (header row; columns found by name)."""
    numbered = [(i, row) for i, row in enumerate(csv.reader(io.StringIO(label_text(path), newline="")), 1)
                if any(cell.strip() for cell in row)]
    linenos, rows = [i for i, _ in numbered], [row for _, row in numbered]
    header = [h.strip() for h in rows[0]] if rows else []
    if header and _is_number(header[-1]):  # a PIPAL-style list given as CSV: the first row is data, not a header
        raise AHIQError(f"{path}: has no header row (it starts with {','.join(header)!r}); a PIPAL-style "
                        "'name,score' list needs --list_format pipal, a CSV needs a ref_name,dist_name,mos header")
    i_ref = _column(header, REF_COLUMNS, "reference", path, required=bool(rows))
    i_dis = _column(header, DIS_COLUMNS, "distorted-image", path, required=bool(rows))
    if len(rows) < 2:
        raise AHIQError(f"{path}: lists no images (the file is empty, or a header alone)")
    i_score = _column(header, SCORE_COLUMNS, "score", path, required=False)
    used = {i for i in (i_ref, i_dis, i_score) if i is not None}
    names, refs, scores = [], [], []
    extra: dict[str, list[str]] = {h.lower(): [] for i, h in enumerate(header) if i not in used}
    first_line: dict[str, int] = {}
    for lineno, row in zip(linenos[1:], rows[1:]):
        if len(row) != len(header):
            raise AHIQError(f"{path}:{lineno}: {len(row)} fields, the header has {len(header)}")
        row = [cell.strip() for cell in row]
        for name in (row[i_dis], row[i_ref]):
            check_name(name, f"{path}:{lineno}")
        refuse_repeat(first_line, row[i_dis], path, lineno)
        refs.append(row[i_ref])
        names.append(row[i_dis])
        if i_score is not None:
            scores.append(score_of(row[i_score], f"{path}:{lineno}: {header[i_score]}"))
        for i, h in enumerate(header):
            if i not in used:
                extra[h.lower()].append(row[i])
    return Labels(path, names, refs, np.asarray(scores, np.float64) if i_score is not None else None, extra)


def read_labels(path: str, list_format: str = "pipal", ref_rule: str = "pipal") -> Labels:
    """The rows of a label file in either format (see the module docstring)."""
    if list_format == "csv":
        return read_csv_labels(path)
    if os.path.isfile(path):
        first = read_text(path).split("\n", 1)[0].lower()
        if any(column in first for column in REF_COLUMNS[:2] + DIS_COLUMNS[:2]):
            raise AHIQError(f"{path}: starts with a CSV header ({first.strip()!r}); pass --list_format csv")
    names, raw = read_list(path)
    return Labels(path, names, [reference_name(n, ref_rule) for n in names], raw)


@dataclass(frozen=True)
class SplitChoice:
    """Which rows of a label file to use: part of split ``index`` of ``file`` (made with ``ratios``, ``n_splits`` and
    ``seed`` when missing and ``create``), or of a CSV ``column`` holding train/val/test; neither: every row."""

    file: str | None = None
    index: int = 0
    column: str | None = None
    ratios: tuple[float, float, float] | None = None  # these three: how a missing file is made (``create``)
    n_splits: int | None = None
    seed: int | None = None
    create: bool = False

    @property
    def active(self) -> bool:
        return self.file is not None or self.column is not None

    def describe(self) -> str:
        if self.file:
            return f"split {self.index} of {self.file}"
        return f"split column {self.column}" if self.column else "separate lists"


def select_rows(labels: Labels, part: str, split: SplitChoice) -> Labels:
    """The rows of ``labels`` in ``part`` of the split (all rows for part 'all' or when no split is chosen).

    A missing split file is made only when ``split.create`` (training); elsewhere it is an error, so a mistyped
    path can never score a model on a fresh split that overlaps its training images.
    """
    if part == "all" or not split.active:
        return labels
    if split.column is not None:
        column = labels.columns.get(split.column.lower())
        rows = [i for i, value in enumerate(column or []) if value.strip().lower() == part]
        where = f"column {split.column} = {part}" + ("" if column is not None else " (the file has no such column; "
                                                     f"its other columns: {sorted(labels.columns) or 'none'})")
    else:
        if not split.create:
            require_path(split.file, "split file", "it is written by train.py (or `python -m tools.make_splits`): "
                         "pass the file the model was trained with")
        splits = load_or_create_splits(split.file, labels, split.ratios, split.n_splits, split.seed, split.create)
        held = 0 <= split.index < len(splits)
        keep = set(splits[split.index][part]) if held else set()
        rows = [i for i, ref in enumerate(labels.refs) if ref in keep]
        where = f"{split.describe()}, part {part}" + ("" if held else f" (the file holds {len(splits)} splits, "
                                                      f"0-{len(splits) - 1})")
    if not rows:
        raise AHIQError(f"{labels.path}: no rows in {where}; check the split index, ratios or column")
    return labels.subset(rows)


STD_COLUMNS = ("std", "mos_std", "dmos_std")  # a column of the std of each image's ratings; or "var", its square


def rating_std(labels: Labels) -> np.ndarray | None:
    """The standard deviation of each image's ratings, in the labels' units, from a CSV column (``std``,
    ``mos_std``, ``dmos_std``, or ``var`` as its square), or None; a value that is not a non-negative number is
    refused naming the file and row."""
    name = next((c for c in (*STD_COLUMNS, "var") if c in labels.columns), None)
    if name is None:
        return None
    values = []
    for row, text in enumerate(labels.columns[name], 1):
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value >= 0):
            raise AHIQError(f"{labels.path}: row {row}: {name} {text!r} is not a non-negative number")
        values.append(math.sqrt(value) if name == "var" else value)
    return np.asarray(values, np.float64)


def pair_dataset(ref_dir: str, dis_dir: str, labels: Labels, lower_better: bool = False, **kwargs) -> PairDataset:
    """A :class:`PairDataset` of labelled rows (with the std of their ratings where the list gives it); images are
    checked when it is built."""
    pairs = [(name, os.path.join(dis_dir, name), os.path.join(ref_dir, ref))
             for name, ref in zip(labels.names, labels.refs)]
    try:
        return PairDataset(pairs, labels.raw, lower_better=lower_better, rating_std=rating_std(labels),
                           grouping=distortion_groups(labels), **kwargs)
    except AHIQError as err:
        if err.kind == "label_range" and err.source is None:
            raise err.at(labels.path) from None
        raise
