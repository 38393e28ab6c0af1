"""test.py options: the official test options (names, defaults) and the project's additions."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from models import BN_STATS
from options.base_options import (
    HelpFormatter,
    ModelFields,
    RunConfig,
    RunFields,
    model_parser,
    options_of,
    parse,
    run_parser,
)
from options.data_options import (
    ImageFields,
    LabelFields,
    SplitFields,
    TestDataFields,
    TrainDataFields,
    WindowFields,
    apply_preset,
    image_parser,
    label_parser,
    split_making_parser,
    split_parser,
    test_data_parser,
    train_data_parser,
    windows_parser,
)
from options.defaults import CROPS_PER_FORWARD, N_ENSEMBLE, TEST_BATCH
from options.policy import free, once
from utils.errors import AHIQError
from utils.files import LOG_FILE, OPTIONS_PREFIX, RUN_FILE_EXTENSIONS, is_run_file


def scoring_parser() -> argparse.ArgumentParser:
    """How images are scored (test.py and predict.py)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("scoring")
    g.add_argument("--batch_size", type=int, default=TEST_BATCH, help="images per batch")
    add_n_ensemble(g)
    free(g.add_argument("--crops_per_forward", type=int, default=CROPS_PER_FORWARD,
                        help="crop pairs per model forward (memory bound)"))
    g.add_argument("--bn_stats", default="running", choices=BN_STATS,
                   help="ResNet BatchNorm: 'running' statistics (as trained, pyiqa), or 'batch': the statistics of "
                        "each model call, as the released test.py computed them (batches of --batch_size in list "
                        "order, per crop index; see docs/fidelity.md)")
    return p


@dataclass(frozen=True, kw_only=True)
class ScoringFields:
    """:func:`scoring_parser`'s options."""

    batch_size: int
    n_ensemble: int
    crops_per_forward: int
    bn_stats: str


def add_n_ensemble(group: argparse._ArgumentGroup) -> None:
    """--n_ensemble, test.py's and protocol.py's (its default edited here reaches both, the API and the hub)."""
    group.add_argument("--n_ensemble", type=int, default=N_ENSEMBLE,
                       help="crops averaged per image: 1 centre, 2-9 fixed windows, more: seeded random windows")


def add_resume(group: argparse._ArgumentGroup, beside: str) -> None:
    """--resume of a scoring job, test.py's and predict.py's (engine/jobs.py)."""
    once(group.add_argument("--resume", action="store_true",
                            help="continue a stopped run (SIGINT/SIGTERM, a preemption) from the scores it recorded "
                                 f"beside {beside}; with nothing recorded, start (safe to pass to every attempt of a "
                                 "job)"))


def add_report(group: argparse._ArgumentGroup, what: str) -> None:
    """--report, test.py's and protocol.py's (one self-contained HTML page: utils/report.py)."""
    free(group.add_argument("--report", action="store_true", help=what))


def scoring_defaults() -> dict:
    """The defaults of the scoring options (scoring, windows, images and the run's seed and pixel limit), by name:
    what the Python API and the hub use for the settings they are not given."""
    parser = argparse.ArgumentParser(add_help=False, parents=[scoring_parser(), windows_parser(), image_parser()])
    defaults = {a.dest: a.default for a in options_of(parser)}
    run = run_parser()
    return {**defaults, "seed": run.get_default("seed"), "max_pixels": run.get_default("max_pixels")}


def test_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Score a list of distorted/reference pairs with AHIQ.",
                                # the official base options (training data included) are accepted, as officially
                                parents=[test_data_parser(), train_data_parser(), image_parser(), windows_parser(),
                                         label_parser(), split_parser(), run_parser(), model_parser(),
                                         scoring_parser()],
                                formatter_class=HelpFormatter)
    g = p.add_argument_group("test")
    g.add_argument("--test_file_name", default="results.txt",
                   help="predictions file, a plain file name, written to the run folder (checkpoints_dir/name, or "
                        "beside --ckpt); {stem}_metrics.json, _scatter.png, _source.json go beside it")
    add_resume(g, "the results")
    free(g.add_argument("--overwrite", action="store_true",
                        help="replace results of another checkpoint, list or split, or an interrupted run's recorded "
                             "scores (refused otherwise)"))
    g.add_argument("--flip", action="store_true", help="flip both images horizontally before cropping")
    free(g.add_argument("--worst", type=int, default=0, metavar="N",
                        help="lists with MOS: also draw the N images furthest from their MOS after the logistic fit, "
                             "with their patch maps ({stem}_worst.png beside the predictions)"))
    free(g.add_argument("--fit_mapping", default=None, metavar="FILE",
                        help="lists with MOS: fit the rising logistic from scores to this list's MOS and save it as "
                             "FILE (JSON), for --mapping in predict.py, test.py and the API"))
    free(g.add_argument("--mapping", default=None, metavar="FILE",
                        help="also write the scores on the MOS scale of a saved mapping (--fit_mapping) to "
                             "{stem}_mapped.txt"))
    free(g.add_argument("--allow_other_mapping", action="store_true",
                        help="use a --mapping fitted for another model (refused otherwise: another model's scores "
                             "mean something else on that scale)"))
    free(g.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                        help="lists with MOS: 95%% intervals of SRCC/PLCC/KRCC/RMSE from N seeded resamples (of "
                             "references when they repeat, else of images); 0: none"))
    add_report(g, "also write {stem}_report.html: one self-contained page (no network) with the run's provenance, "
                  "metrics and intervals, per-group tables, the figures and a sortable, filterable per-image table")
    free(g.add_argument("--submission", default=None, metavar="DIR",
                        help="also write the NTIRE 2022 package (output.txt, readme.txt, submission.zip) to DIR"))
    # accepted as the official test options accept them (training data, how split files are made), not shown
    hidden = {a.dest for parent in (train_data_parser(), split_making_parser()) for a in parent._actions}
    for action in p._actions:
        if action.dest in hidden:
            action.help = argparse.SUPPRESS
    return p


@dataclass(frozen=True, kw_only=True)
class TestConfig(RunConfig, TestDataFields, TrainDataFields, ImageFields, WindowFields, LabelFields, SplitFields,
                 RunFields, ModelFields, ScoringFields):
    """test.py's configuration: :func:`test_parser`'s options."""

    parser = test_parser
    test_file_name: str
    resume: bool
    overwrite: bool
    flip: bool
    worst: int
    fit_mapping: str | None
    mapping: str | None
    allow_other_mapping: bool
    bootstrap: int
    report: bool
    submission: str | None


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
    if opt.worst < 0:
        raise AHIQError(f"--worst {opt.worst}: give a number of images (0: no figure)")
    if opt.split_part is not None and opt.split_file is None and opt.split_column is None:
        raise AHIQError(f"--split_part {opt.split_part} has no effect without --split_file or --split_column; drop "
                        "it to score the whole list, or name the split")
    return opt
