"""protocol.py options: every train.py option, plus how each split's model is tested."""
from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from typing import ClassVar

from data.datasets import PRESETS
from options.base_options import option, parse
from options.data_options import apply_preset
from options.defaults import PROTOCOL_NAME, TEST_BATCH
from options.policy import FREE
from options.test_options import n_ensemble_option, report_option
from options.train_options import TrainConfig, check_train_options
from utils.errors import AHIQError


@dataclass(frozen=True, kw_only=True)
class ProtocolFields:
    """How each split's model is tested."""

    TITLE: ClassVar[str] = "protocol"
    VIEW: ClassVar[str] = "protocol"
    n_ensemble: int = n_ensemble_option()
    test_batch_size: int = option(TEST_BATCH, "images per batch when testing", policy=FREE,
                                  minimum=1)
    cross_dataset: tuple[str, ...] = option((), "also test each split's model on these whole datasets", policy=FREE,
                                            nargs="*", choices=sorted(PRESETS))
    keep: str = option("best", "checkpoints kept of a finished split: 'best' (best.pth, what its tests and later "
                               "cross tests use; last.pth and epoch_N.pth, ~3x larger and needed only to resume its "
                               "training, are removed) or 'all'", policy=FREE, choices=("best", "all"))
    report: bool = report_option("also write protocol_report.html (one self-contained page: the summary, every "
                                 "split's numbers, per-group medians) and each split's test report")
    cross_data_root: str | None = option(None, "root of the --cross_dataset data; None: --data_root", policy=FREE)
    vary: tuple[str, ...] = option((), "an ablation: train and test the options as given (the baseline) and, on the "
                                       "same splits, each variant KEY=VALUE (one factor at a time; values separated "
                                       "by commas, or by ';' for a list option such as vit_blocks=0,1,2;0,1); any "
                                       "model or training option; repeatable. Writes ablation.json and ablation.md",
                                   policy=FREE, nargs="+", metavar="KEY=V1[,V2...]", repeat=True)
    factorial: bool = option(False, "with --vary: every combination of the varied values, not one factor at a time",
                             policy=FREE)


@dataclass(frozen=True, kw_only=True)
class LauncherFields:
    """Where the runs of a protocol or an ablation run: here, or as jobs of a SLURM cluster (through submitit)."""

    TITLE: ClassVar[str] = "launcher"
    VIEW: ClassVar[str] = "launch"
    launcher: str = option("local", "'local': the runs one after another in this process; 'slurm': one job per "
                                    "variant and split through submitit (pip install submitit), which returns at once; "
                                    "the same command again collects finished runs, reports running ones, resubmits "
                                    "failed ones and writes the tables once all are done", policy=FREE,
                           choices=("local", "slurm"))
    parallel: int = option(1, "with --launcher local: train this many splits at once, each in its own process on its "
                              "own GPU of --gpu_ids (on the CPU: the cores shared); consoles in the run folder's logs/",
                           policy=FREE, metavar="K", minimum=1)
    slurm_partition: str | None = option(None, "SLURM partition of the jobs", policy=FREE)
    slurm_time: int = option(240, "time limit of a job in minutes; a job stopped by it (or preempted) is requeued and "
                                  "continues from its last.pth", policy=FREE, metavar="MINUTES",
                           minimum=1)
    slurm_gpus: int = option(1, "GPUs per job: one process each (a SLURM task), joined in one torch.distributed group "
                                "(DDP training, a shared scoring job); 0: a CPU job", policy=FREE, minimum=0)
    slurm_account: str | None = option(None, "SLURM account to charge", policy=FREE)
    slurm_constraint: str | None = option(None, "SLURM constraint (a GPU type, e.g. a100)", policy=FREE)
    slurm_opt: tuple[str, ...] = option((), "any other sbatch option, as KEY=VALUE (e.g. qos=high); repeatable",
                                        policy=FREE, nargs="+", metavar="KEY=VALUE", repeat=True)


@dataclass(frozen=True, kw_only=True)
class ProtocolConfig(LauncherFields, ProtocolFields, TrainConfig):
    """protocol.py's configuration: every train.py option and its own."""

    DESCRIPTION: ClassVar[str] = ("Train and test AHIQ on K content-disjoint splits and report median / mean +- "
                                  "std.")
    DEFAULTS: ClassVar[dict] = {"name": PROTOCOL_NAME}  # never the released model's folder


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
