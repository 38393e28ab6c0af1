"""test.py options: the official test options (names, defaults) and the project's additions; the scoring options
predict.py shares."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

from models import BN_STATS
from options.base_options import (
    BackboneFields,
    ModelFields,
    RunConfig,
    RunFields,
    default_of,
    option,
    option_hints,
    parse,
)
from options.data_options import (
    ImageFields,
    LabelFields,
    SplitFields,
    SplitMakingFields,
    TestDataFields,
    TrainDataFields,
    WindowFields,
    apply_preset,
    check_split_part,
)
from options.defaults import CROPS_PER_FORWARD, N_ENSEMBLE, TEST_BATCH
from options.policy import FREE, ONCE
from utils.errors import AHIQError
from utils.files import LOG_FILE, OPTIONS_PREFIX, RUN_FILE_EXTENSIONS, is_run_file


def n_ensemble_option():
    """--n_ensemble, test.py's, predict.py's and protocol.py's (its default edited here reaches all, the API and the
    hub)."""
    return option(N_ENSEMBLE, "crops averaged per image: 1 centre, 2-9 fixed windows, more: seeded random windows",
                  minimum=1)


def report_option(what: str):
    """--report, test.py's and protocol.py's (one self-contained HTML page: utils/report.py)."""
    return option(False, what, policy=FREE)


@dataclass(frozen=True, kw_only=True)
class ScoringFields:
    """How images are scored (test.py and predict.py)."""

    TITLE: ClassVar[str] = "scoring"
    VIEW: ClassVar[str] = "scoring"
    batch_size: int = option(TEST_BATCH, "images per batch", minimum=1)
    n_ensemble: int = n_ensemble_option()
    crops_per_forward: int = option(CROPS_PER_FORWARD, "crop pairs per model forward (memory bound)", policy=FREE,
                                   minimum=1)
    bn_stats: str = option("running", "ResNet BatchNorm: 'running' statistics (as trained, pyiqa), or 'batch': the "
                                      "statistics of each model call, as the released test.py computed them "
                                      "(batches of --batch_size in list order, per crop index; see docs/fidelity.md)",
                           choices=BN_STATS)
    compile_model: bool = option(False, "torch.compile the frozen ViT and the deformable fusion for scoring (the "
                                        "first batch of each crop count compiles them; benchmarks/gpu_check.py judges "
                                        "the scores against the --amp bounds and measures the speed)", policy=FREE)


@dataclass(frozen=True, kw_only=True)
class JobFields:
    """A scoring run as a job (test.py, predict.py): continued after a stop, never replacing another run's files,
    and a calibrated scale for its scores."""

    TITLE: ClassVar[str] = "job"
    VIEW: ClassVar[str] = "job"
    resume: bool = option(False, "continue a stopped run (SIGINT/SIGTERM, a preemption) from the scores it recorded "
                                 "beside its results (predict.py: beside --csv; without it nothing is kept); with "
                                 "nothing recorded, start (safe to pass to every attempt of a job)", policy=ONCE)
    overwrite: bool = option(False, "replace results of another checkpoint, list or split (predict.py: --csv and the "
                                    "maps of the same pairs), or an interrupted run's recorded scores (refused "
                                    "otherwise)", policy=FREE)
    mapping: str | None = option(None, "scores also on the MOS scale of a mapping test.py --fit_mapping saved (a "
                                       "calibrated scale; test.py: in {stem}_mapped.txt)", policy=FREE,
                                 metavar="FILE")
    allow_other_mapping: bool = option(False, "use a --mapping fitted for another model (refused otherwise: another "
                                              "model's scores mean something else on that scale)", policy=FREE)


def scoring_options() -> dict:
    """The scoring options (scoring, windows, images, the run's seed and pixel limit, the crop size) with their
    annotations, by name: the settings the Python API and the hub take (no parser is built)."""
    run, model = option_hints(RunFields), option_hints(ModelFields)
    return {**option_hints(ScoringFields, WindowFields, ImageFields), "seed": run["seed"],
            "max_pixels": run["max_pixels"], "crop_size": model["crop_size"]}


def scoring_defaults() -> dict:
    """The defaults of :func:`scoring_options`, by name: what the API and the hub use for the settings they are not
    given."""
    return {name: default_of(f) for name, (f, _) in scoring_options().items()}


@dataclass(frozen=True, kw_only=True)
class TestFields:
    """test.py's own options."""

    TITLE: ClassVar[str] = "test"
    VIEW: ClassVar[str] = "test"
    test_file_name: str = option("results.txt", "predictions file, a plain file name, written to the run folder "
                                                "(checkpoints_dir/name, or beside --ckpt); {stem}_metrics.json, "
                                                "_scatter.png, _source.json go beside it")
    flip: bool = option(False, "flip both images horizontally before cropping")
    worst: int = option(0, "lists with MOS: also draw the N images furthest from their MOS after the logistic fit, "
                           "with their patch maps ({stem}_worst.png beside the predictions)", policy=FREE,
                        metavar="N", minimum=0)
    fit_mapping: str | None = option(None, "lists with MOS: fit the rising logistic from scores to this list's MOS "
                                           "and save it as FILE (JSON), for --mapping in predict.py, test.py and the "
                                           "API", policy=FREE, metavar="FILE")
    bootstrap: int = option(1000, "lists with MOS: 95%% intervals of SRCC/PLCC/KRCC/RMSE from N seeded resamples "
                                  "(of references when they repeat, else of images); 0: none", policy=FREE,
                            metavar="N", minimum=0)
    report: bool = report_option("also write {stem}_report.html: one self-contained page (no network) with the run's "
                                 "provenance, metrics and intervals, per-group tables, the figures and a sortable, "
                                 "filterable per-image table")
    submission: str | None = option(None, "also write the NTIRE 2022 package (output.txt, readme.txt, "
                                          "submission.zip) to DIR", policy=FREE, metavar="DIR")


@dataclass(frozen=True, kw_only=True)
class TestConfig(TestFields, JobFields, ScoringFields, BackboneFields, ModelFields, RunFields, SplitFields,
                 LabelFields, WindowFields, ImageFields, TrainDataFields, TestDataFields, RunConfig):
    """test.py's configuration. The official base options (training data, how split files are made) are taken,
    as the released test.py takes them, and not shown."""

    DESCRIPTION: ClassVar[str] = "Score a list of distorted/reference pairs with AHIQ."
    HIDDEN: ClassVar[tuple] = (TrainDataFields, SplitMakingFields)


def check_output_name(name: str) -> None:
    """--test_file_name: a plain file name that cannot replace a checkpoint, an options file, a log or a figure."""
    if (not name or os.path.basename(name) != name or name in (".", "..") or name.startswith(".")
            or "\\" in name or is_run_file(name)):
        raise AHIQError(f"--test_file_name {name!r}: give a plain file name such as results.txt (no folder, not a "
                        f"{'/'.join(RUN_FILE_EXTENSIONS)} file, {LOG_FILE} or {OPTIONS_PREFIX}*: those are the run's "
                        "own files)")


def parse_test_options(argv: list[str] | None = None) -> TestConfig:
    opt = parse(TestConfig, argv, (apply_preset,))
    check_output_name(opt.test_file_name)
    check_split_part(opt.split_part, opt.split_file, opt.split_column)
    return opt
