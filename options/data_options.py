"""Data options: image folders and label lists (the official names and defaults), dataset presets, label direction
and content-disjoint splits. Parsers compose with ``parents=[...]``; :func:`apply_preset` resolves the preset
before the configuration is frozen."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from data.datasets import LIST_FORMATS, PRESETS, SplitChoice, parse_ratios
from data.windows import WINDOW_LAYOUTS, WINDOW_MODES
from options.defaults import NUM_AVG_VAL
from options.policy import free
from utils.errors import AHIQError

# The official defaults of the data paths: the PIPAL layout of the preset (tools/prepare_pipal.py writes it), relative
# to the working folder; --data_root replaces the ones still at these values.
_PIPAL = PRESETS["pipal"]
PATH_DEFAULTS = {f"{phase}_{key}": value + ("/" if key.endswith("path") else "")
                 for phase, folders in (("train", (_PIPAL.ref_dir, _PIPAL.dis_dir, _PIPAL.labels)), ("val", _PIPAL.val),
                                        ("test", _PIPAL.test))
                 for key, value in zip(("ref_path", "dis_path", "list"), folders)}


def train_data_parser() -> argparse.ArgumentParser:
    """The official training/validation data options (train.py, protocol.py)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("data")
    for key, help_text in (("train_ref_path", "folder of the training reference images"),
                           ("train_dis_path", "folder of the training distorted images"),
                           ("val_ref_path", "folder of the validation reference images"),
                           ("val_dis_path", "folder of the validation distorted images"),
                           ("train_list", "training labels (see --list_format)"),
                           ("val_list", "validation labels (see --list_format)")):
        g.add_argument(f"--{key}", default=PATH_DEFAULTS[key], help=help_text)
    g.add_argument("--num_crop", type=int, default=1,
                   help="random crops per training sample (official option; only 1, the official value, is supported)")
    g.add_argument("--num_avg_val", type=int, default=NUM_AVG_VAL, help="fixed windows averaged in validation")
    return p


@dataclass(frozen=True, kw_only=True)
class TrainDataFields:
    """:func:`train_data_parser`'s options."""

    train_ref_path: str
    train_dis_path: str
    val_ref_path: str
    val_dis_path: str
    train_list: str
    val_list: str
    num_crop: int
    num_avg_val: int


def test_data_parser() -> argparse.ArgumentParser:
    """The official test data options (test.py)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("test data")
    g.add_argument("--test_ref_path", default=PATH_DEFAULTS["test_ref_path"], help="folder of the reference images")
    g.add_argument("--test_dis_path", default=PATH_DEFAULTS["test_dis_path"], help="folder of the distorted images")
    g.add_argument("--test_list", default=PATH_DEFAULTS["test_list"],
                   help="labels: 'name,MOS' or 'name' lines, or a CSV with --list_format csv")
    g.add_argument("--split_part", default=None, choices=("train", "val", "test", "all"),
                   help="with --split_file/--split_column: the part of the split to score (default: test)")
    return p


@dataclass(frozen=True, kw_only=True)
class TestDataFields:
    """:func:`test_data_parser`'s options."""

    test_ref_path: str
    test_dis_path: str
    test_list: str
    split_part: str | None


def image_parser() -> argparse.ArgumentParser:
    """How images become crops (train.py, test.py, protocol.py)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("images")
    g.add_argument("--resize", action="store_true",
                   help="resize both images to --size x --size before cropping (needed for images smaller than "
                        "--crop_size)")
    g.add_argument("--size", type=int, default=224, help="side length used by --resize")
    return p


@dataclass(frozen=True, kw_only=True)
class ImageFields:
    """:func:`image_parser`'s options."""

    resize: bool
    size: int


def windows_parser() -> argparse.ArgumentParser:
    """Which windows an image is scored on (train.py validation, test.py, predict.py, protocol.py)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("windows")
    g.add_argument("--windows", default="ensemble", choices=WINDOW_LAYOUTS,
                   help="'ensemble': --n_ensemble (or --num_avg_val) crops per image; 'grid': the crops that cover "
                        "every pixel of the image (stride at most the crop size, as many as its size needs), for "
                        "images much larger than the crop")
    g.add_argument("--random_windows", default="reference", choices=WINDOW_MODES,
                   help="more than 9 crops per image: 'reference' draws them from --seed and the reference's name (all "
                        "distorted images of a reference share windows and reference features); 'official' is the "
                        "released test.py's stream (numpy seeded with --seed, one draw per batch of --batch_size)")
    return p


@dataclass(frozen=True, kw_only=True)
class WindowFields:
    """:func:`windows_parser`'s options."""

    windows: str
    random_windows: str


def label_parser() -> argparse.ArgumentParser:
    """Dataset preset, label format and direction (train.py, test.py, protocol.py, tools/make_splits.py)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("datasets (see docs/datasets.md)")
    g.add_argument("--dataset", default="pipal", choices=sorted(PRESETS),
                   help="preset: label format, label direction, and (with --data_root) the folder layout")
    free(g.add_argument("--data_root", default=None,
                        help="dataset root: fills the image folders and label files the preset names, unless given"))
    g.add_argument("--list_format", default=None, choices=LIST_FORMATS,
                   help="label files: 'pipal' (name,score lines) or 'csv' (pyiqa meta-info); None: the preset's")
    g.add_argument("--label_direction", default=None, choices=("higher_better", "lower_better"),
                   help="lower_better (DMOS) labels are flipped before normalising; None: the preset's")
    return p


@dataclass(frozen=True, kw_only=True)
class LabelFields:
    """:func:`label_parser`'s options; the format and direction are the preset's when not given
    (:func:`apply_preset`)."""

    dataset: str
    data_root: str | None
    list_format: str
    label_direction: str

    @property
    def lower_better(self) -> bool:
        """The labels are DMOS (flipped before normalising)."""
        return self.label_direction == "lower_better"

    @property
    def ref_rule(self) -> str:
        return PRESETS[self.dataset].ref_rule


def split_making_parser() -> argparse.ArgumentParser:
    """How a new split file is made (train.py, protocol.py, tools/make_splits.py)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("making split files")
    g.add_argument("--split_ratios", default="6,2,2", help="train,val,test proportions of references (new files)")
    free(g.add_argument("--n_splits", type=int, default=10, help="splits in a new --split_file"))
    g.add_argument("--split_seed", type=int, default=None, help="seed of a new --split_file; None: --seed")
    return p


@dataclass(frozen=True, kw_only=True)
class SplitMakingFields:
    """:func:`split_making_parser`'s options."""

    split_ratios: str
    n_splits: int
    split_seed: int | None


def split_parser() -> argparse.ArgumentParser:
    """Which split to use (train.py, test.py, protocol.py)."""
    p = argparse.ArgumentParser(add_help=False, parents=[split_making_parser()])
    g = p.add_argument_group("splits")
    g.add_argument("--split_file", default=None,
                   help="JSON file of content-disjoint splits (made with the --split_* settings if missing, reused if "
                        "present); selects the rows of the label files by reference image")
    g.add_argument("--split_index", type=int, default=0, help="which split of --split_file")
    g.add_argument("--split_column", default=None,
                   help="instead of --split_file: a CSV column whose values (train/val/test) select the rows")
    return p


@dataclass(frozen=True, kw_only=True)
class SplitFields(SplitMakingFields):
    """:func:`split_parser`'s options."""

    split_file: str | None
    split_index: int
    split_column: str | None

    def split(self, create: bool = False) -> SplitChoice:
        """The split the options choose (``create``: a missing split file may be made, as train.py does); a new
        file's seed is --split_seed, else the run's --seed."""
        seed = self.seed if self.split_seed is None else self.split_seed
        return SplitChoice(self.split_file, self.split_index, self.split_column, parse_ratios(self.split_ratios),
                           self.n_splits, seed, create)


def preset_paths(dataset: str, data_root: str) -> dict[str, str]:
    """The image folders and label files of a preset under ``data_root``, by option name."""
    preset = PRESETS[dataset]
    layout = {"train": (preset.ref_dir, preset.dis_dir, preset.labels)}
    layout["val"] = preset.val or layout["train"]
    layout["test"] = preset.test or layout["train"]
    return {f"{phase}_{key}": os.path.join(data_root, rel) for phase, folders in layout.items()
            for key, rel in zip(("ref_path", "dis_path", "list"), folders)}


def apply_preset(opt: argparse.Namespace) -> None:
    """Resolve the preset: the label format and direction when not given, and (with --data_root) the folders and
    label files still at their official defaults."""
    preset = PRESETS[opt.dataset]
    opt.list_format = opt.list_format or preset.list_format
    opt.label_direction = opt.label_direction or ("lower_better" if preset.lower_better else "higher_better")
    if opt.data_root is None:
        return
    fill = {key: path for key, path in preset_paths(opt.dataset, opt.data_root).items()
            if hasattr(opt, key) and getattr(opt, key) == PATH_DEFAULTS[key]}
    if fill and not os.path.isdir(opt.data_root):
        raise AHIQError(f"--data_root {opt.data_root}: no such folder (it would give --{next(iter(fill))} and "
                        f"{len(fill) - 1} more); for PIPAL run `python -m tools.prepare_pipal --out "
                        f"{opt.data_root}` first")
    for key, path in fill.items():
        setattr(opt, key, path)
