"""protocol.py options: every train.py option, plus how each split's model is tested."""
from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass

from data.datasets import PRESETS
from options.base_options import HelpFormatter, parse
from options.data_options import apply_preset
from options.defaults import PROTOCOL_NAME, TEST_BATCH
from options.policy import free
from options.test_options import add_n_ensemble, add_report
from options.train_options import TrainConfig, check_train_options, train_parents
from utils.errors import AHIQError


def protocol_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train and test AHIQ on K content-disjoint splits and report median / "
                                            "mean +- std.", parents=train_parents(),
                                formatter_class=HelpFormatter)
    p.set_defaults(name=PROTOCOL_NAME)  # never the released model's folder
    g = p.add_argument_group("protocol")
    add_n_ensemble(g)
    free(g.add_argument("--test_batch_size", type=int, default=TEST_BATCH, help="images per batch when testing"))
    free(g.add_argument("--cross_dataset", nargs="*", default=[], choices=sorted(PRESETS),
                        help="also test each split's model on these whole datasets"))
    free(g.add_argument("--keep", default="best", choices=("best", "all"),
                        help="checkpoints kept of a finished split: 'best' (best.pth, what its tests and later cross "
                             "tests use; last.pth and epoch_N.pth, ~3x larger and needed only to resume its training, "
                             "are removed) or 'all'"))
    add_report(g, "also write protocol_report.html (one self-contained page: the summary, every split's numbers, "
                  "per-group medians) and each split's test report")
    free(g.add_argument("--cross_data_root", default=None, help="root of the --cross_dataset data; None: --data_root"))
    return p


@dataclass(frozen=True, kw_only=True)
class ProtocolConfig(TrainConfig):
    """protocol.py's configuration: every train.py option and :func:`protocol_parser`'s own."""

    parser = protocol_parser
    n_ensemble: int
    test_batch_size: int
    cross_dataset: tuple[str, ...]
    keep: str
    cross_data_root: str | None
    report: bool


def protocol_splits(opt: argparse.Namespace) -> None:
    """The protocol's split file (``splits.json`` in its run folder unless given); one run for a split column."""
    if opt.split_column is None and opt.split_file is None:
        opt.split_file = os.path.join(opt.checkpoints_dir, opt.name, "splits.json")
    if opt.split_column is not None and opt.n_splits != 1:
        logging.getLogger("ahiq.protocol").warning("--split_column gives one fixed split: running it once")
        opt.n_splits = 1


def parse_protocol_options(argv: list[str] | None = None) -> ProtocolConfig:
    opt = check_train_options(parse(ProtocolConfig, argv, (apply_preset, protocol_splits)))
    if opt.resume or opt.load_epoch >= 0:
        raise AHIQError("protocol.py resumes by itself: run the same command again (no --resume/--load_epoch)")
    return opt
