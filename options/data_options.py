"""Data options: image folders and label lists (the official names and defaults), dataset presets, label direction
and content-disjoint splits, as option groups (options/base_options.py); :func:`apply_preset` resolves the preset
before the configuration is frozen."""
from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from data.datasets import LIST_FORMATS, PRESETS, SplitChoice
from data.windows import WINDOW_LAYOUTS, WINDOW_MODES, WindowPolicy
from options.base_options import option
from options.defaults import NUM_AVG_VAL
from options.policy import FREE
from utils.errors import AHIQError
from utils.files import require_path

# The official defaults of the data paths: the PIPAL layout of the preset (tools/prepare_pipal.py writes it), relative
# to the working folder; --data_root replaces the ones still at these values.
_PIPAL = PRESETS["pipal"]
PATH_DEFAULTS = {f"{phase}_{key}": value + ("/" if key.endswith("path") else "")
                 for phase, folders in (("train", (_PIPAL.ref_dir, _PIPAL.dis_dir, _PIPAL.labels)), ("val", _PIPAL.val),
                                        ("test", _PIPAL.test))
                 for key, value in zip(("ref_path", "dis_path", "list"), folders)}


@dataclass(frozen=True, kw_only=True)
class TrainDataFields:
    """The official training/validation data options (train.py, protocol.py; test.py takes them, unshown)."""

    TITLE: ClassVar[str] = "data"
    VIEW: ClassVar[str] = "data"
    train_ref_path: str = option(PATH_DEFAULTS["train_ref_path"], "folder of the training reference images")
    train_dis_path: str = option(PATH_DEFAULTS["train_dis_path"], "folder of the training distorted images")
    val_ref_path: str = option(PATH_DEFAULTS["val_ref_path"], "folder of the validation reference images")
    val_dis_path: str = option(PATH_DEFAULTS["val_dis_path"], "folder of the validation distorted images")
    train_list: str = option(PATH_DEFAULTS["train_list"], "training labels (see --list_format)")
    val_list: str = option(PATH_DEFAULTS["val_list"], "validation labels (see --list_format)")
    num_crop: int = option(1, "random crops per training sample (official option; only 1, the official value, is "
                              "supported)", choices=(1,))
    num_avg_val: int = option(NUM_AVG_VAL, "fixed windows averaged in validation", minimum=1)


@dataclass(frozen=True, kw_only=True)
class TestDataFields:
    """The official test data options (test.py)."""

    TITLE: ClassVar[str] = "test data"
    VIEW: ClassVar[str] = "test_data"
    test_ref_path: str = option(PATH_DEFAULTS["test_ref_path"], "folder of the reference images")
    test_dis_path: str = option(PATH_DEFAULTS["test_dis_path"], "folder of the distorted images")
    test_list: str = option(PATH_DEFAULTS["test_list"], "labels: 'name,MOS' or 'name' lines, or a CSV with "
                                                        "--list_format csv")
    split_part: str | None = option(None, "with --split_file/--split_column: the part of the split to score "
                                          "(default: test)", choices=("train", "val", "test", "all"))


@dataclass(frozen=True, kw_only=True)
class ImageFields:
    """How images become crops (train.py, test.py, predict.py, protocol.py)."""

    TITLE: ClassVar[str] = "images"
    VIEW: ClassVar[str] = "images"
    resize: bool = option(False, "resize both images to --size x --size before cropping (needed for images smaller "
                                 "than --crop_size)")
    size: int = option(224, "side length used by --resize", minimum=1)


@dataclass(frozen=True, kw_only=True)
class WindowFields:
    """Which windows an image is scored on (train.py validation, test.py, predict.py, protocol.py)."""

    TITLE: ClassVar[str] = "windows"
    VIEW: ClassVar[str] = "window"
    windows: str = option("ensemble", "'ensemble': --n_ensemble (or --num_avg_val) crops per image; 'grid': the "
                                      "crops that cover every pixel of the image (stride at most the crop size, as "
                                      "many as its size needs), for images much larger than the crop",
                          choices=WINDOW_LAYOUTS)
    random_windows: str = option("reference", "more than 9 crops per image: 'reference' draws them from --seed and "
                                              "a digest of the reference's pixels (all distorted images of a "
                                              "reference share windows and reference features); 'official' is the "
                                              "released test.py's stream (numpy seeded with --seed, one draw per "
                                              "batch of --batch_size)", choices=WINDOW_MODES)


def window_policy(values: Mapping[str, Any], crop: int, **override: Any) -> WindowPolicy:
    """The :class:`data.windows.WindowPolicy` of scoring options or API settings by name (``n_ensemble``, ``seed``,
    ``random_windows``, ``windows``, ``batch_size``, ``resize`` + ``size``, ``max_pixels``; their values checked
    where they entered) at ``crop``; ``override`` replaces some (validation: ``n_ensemble=num_avg_val``). The one
    way from options to windows, and where the settings that exclude each other are refused."""
    v = {**values, **override}
    if v["windows"] == "grid" and v["random_windows"] == "official":
        raise AHIQError("--windows grid has no random windows; drop --random_windows official")
    if v["windows"] == "grid" and v.get("bn_stats") == "batch":
        raise AHIQError("--windows grid gives images different numbers of crops, which the released test.py's "
                        "per-call BatchNorm (--bn_stats batch) cannot stack; use --bn_stats running")
    if v["resize"] and v["size"] < crop:
        raise AHIQError(f"--size {v['size']} is smaller than the crop size {crop}")
    return WindowPolicy(crop, v["n_ensemble"], v["seed"], v["random_windows"], v["windows"], v["batch_size"],
                        v["size"] if v["resize"] else None, v["max_pixels"])


@dataclass(frozen=True, kw_only=True)
class LabelFields:
    """Dataset preset, label format and direction (train.py, test.py, protocol.py, tools); the format and direction
    are the preset's when not given (:func:`apply_preset`)."""

    TITLE: ClassVar[str] = "datasets (see docs/datasets.md)"
    VIEW: ClassVar[str] = "labels"
    dataset: str = option("pipal", "preset: label format, label direction, and (with --data_root) the folder layout",
                          choices=sorted(PRESETS))
    data_root: str | None = option(None, "dataset root: fills the image folders and label files the preset names, "
                                         "unless given", policy=FREE)
    list_format: str | None = option(None, "label files: 'pipal' (name,score lines) or 'csv' (pyiqa meta-info); "
                                           "None: the preset's", choices=LIST_FORMATS)
    label_direction: str | None = option(None, "lower_better (DMOS) labels are flipped before normalising; None: the "
                                               "preset's", choices=("higher_better", "lower_better"))

    @property
    def lower_better(self) -> bool:
        """The labels are DMOS (flipped before normalising)."""
        return self.label_direction == "lower_better"

    @property
    def ref_rule(self) -> str:
        return PRESETS[self.dataset].ref_rule


@dataclass(frozen=True, kw_only=True)
class SplitMakingFields:
    """How a new split file is made (train.py, protocol.py, tools/make_splits.py; test.py takes them, unshown)."""

    TITLE: ClassVar[str] = "making split files"
    VIEW: ClassVar[str] = "split_making"
    split_ratios: str = option("6,2,2", "train,val,test proportions of references (new files)")
    n_splits: int = option(10, "splits in a new --split_file", policy=FREE, minimum=1)
    split_seed: int | None = option(None, "seed of a new --split_file; None: --seed")


@dataclass(frozen=True, kw_only=True)
class SplitFields(SplitMakingFields):
    """Which split to use (train.py, test.py, protocol.py)."""

    TITLE: ClassVar[str] = "splits"
    VIEW: ClassVar[str] = "splits"
    split_file: str | None = option(None, "JSON file of content-disjoint splits: selects the rows of the label files "
                                          "by reference image (train.py and protocol.py make a missing one with the "
                                          "--split_* settings; test.py needs it to exist)")
    split_index: int = option(0, "which split of --split_file")
    split_column: str | None = option(None, "instead of --split_file: a CSV column whose values (train/val/test) "
                                            "select the rows")

    def split(self, create: bool = False) -> SplitChoice:
        """The split the options choose (``create``: a missing split file may be made, as train.py does); a new
        file's seed is --split_seed, else the run's --seed."""
        seed = self.seed if self.split_seed is None else self.split_seed
        return SplitChoice(self.split_file, self.split_index, self.split_column, parse_ratios(self.split_ratios),
                           self.n_splits, seed, create)


def parse_ratios(text: str) -> tuple[float, float, float]:
    """``--split_ratios`` 'train,val,test' as three numbers (train > 0, none negative)."""
    try:
        ratios = tuple(float(r) for r in text.split(","))
    except ValueError:
        ratios = ()
    if len(ratios) != 3 or min(ratios) < 0 or ratios[0] <= 0:
        raise AHIQError(f"--split_ratios {text!r}: expected three non-negative numbers train,val,test with "
                        "train > 0, e.g. 6,2,2")
    return ratios  # type: ignore[return-value]


def check_split_part(split_part: str | None, split_file: str | None, split_column: str | None) -> None:
    """A --split_part names a part of a split: without --split_file or --split_column it is refused, not ignored."""
    if split_part is not None and split_file is None and split_column is None:
        raise AHIQError(f"--split_part {split_part} has no effect without --split_file or --split_column; drop it "
                        "to use the whole list, or name the split")


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
    if fill:
        require_path(opt.data_root, f"the --data_root folder (it would give --{next(iter(fill))} and {len(fill) - 1} "
                     "more)", f"for PIPAL run `python -m tools.prepare_pipal --out {opt.data_root}` first", folder=True)
    for key, path in fill.items():
        setattr(opt, key, path)
