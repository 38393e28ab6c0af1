"""train.py options: the official training options (names, defaults) and the project's additions."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from data.pair_dataset import FLIP_AXES
from options.base_options import (
    HelpFormatter,
    ModelFields,
    RunConfig,
    RunFields,
    check_positive,
    model_parser,
    parse,
    run_parser,
)
from options.data_options import (
    ImageFields,
    LabelFields,
    SplitFields,
    TrainDataFields,
    WindowFields,
    apply_preset,
    image_parser,
    label_parser,
    split_parser,
    train_data_parser,
    windows_parser,
)
from options.defaults import CROPS_PER_FORWARD, TEST_BATCH, TRAIN_NAME
from options.policy import free, once, resumable
from utils.errors import AHIQError
from utils.metrics import BEST_METRICS


def train_parents() -> list[argparse.ArgumentParser]:
    return [train_data_parser(), image_parser(), windows_parser(), label_parser(), split_parser(), run_parser(),
            model_parser(), training_parser()]


def training_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("train")
    resumable(g.add_argument("--n_epoch", type=int, default=200, help="epochs to train"))
    free(g.add_argument("--save_interval", type=int, default=5, help="write epoch_N.pth every N epochs"))
    free(g.add_argument("--save_last_every", type=float, default=0, metavar="SECONDS",
                        help="write last.pth (~330 MB: everything a resume needs) at the end of an epoch only when "
                             "SECONDS have passed since the last one; 0: every epoch. It is always written at the "
                             "end of the run and on a stop; a crash costs at most SECONDS of epochs, replayed exactly"))
    g.add_argument("--learning_rate", type=float, default=1e-4, help="Adam learning rate")
    g.add_argument("--weight_decay", type=float, default=1e-5, help="Adam weight decay")
    g.add_argument("--batch_size", type=int, default=4, help="pairs per step (per process with torchrun)")
    g.add_argument("--val_freq", type=int, default=1, help="validate every N epochs")
    g.add_argument("--T_max", type=int, default=50, help="CosineAnnealingLR period, in iterations (official)")
    g.add_argument("--flip_axis", default="vertical", choices=FLIP_AXES,
                   help="axis of the random flip (p=0.5) of training crops; vertical is what the official code does "
                        "(np.fliplr on C x H x W) and what the released checkpoint was trained with")
    g.add_argument("--eta_min", type=float, default=0, help="CosineAnnealingLR minimum learning rate")
    g.add_argument("--drop_last", action="store_true",
                   help="as the released loaders: drop each epoch's last incomplete training batch, and validate on "
                        "the list's first images in whole batches of --batch_size (the rest unscored)")
    g.add_argument("--best_metric", default="srcc_or_plcc", choices=BEST_METRICS,
                   help="which epoch best.pth holds (the log, metrics.png and protocol.py say the same): "
                        "'srcc_or_plcc' is the official rule (saved when SRCC or PLCC improves); 'srcc', 'plcc' or "
                        "'main_score' (PLCC + SRCC): when that one improves")
    once(g.add_argument("--resume", action="store_true", help="continue from last.pth in checkpoints_dir/name"))
    free(g.add_argument("--val_batch_size", type=int, default=TEST_BATCH, help="images per validation batch"))
    free(g.add_argument("--crops_per_forward", type=int, default=CROPS_PER_FORWARD,
                        help="crop pairs per forward in validation"))
    free(g.add_argument("--wandb", default=None, metavar="PROJECT",
                        help="also log the scalars to this Weights & Biases project (needs `pip install wandb`)"))
    return p


@dataclass(frozen=True, kw_only=True)
class TrainingFields:
    """:func:`training_parser`'s options."""

    n_epoch: int
    save_interval: int
    save_last_every: float
    learning_rate: float
    weight_decay: float
    batch_size: int
    val_freq: int
    T_max: int
    flip_axis: str
    eta_min: float
    drop_last: bool
    best_metric: str
    resume: bool
    val_batch_size: int
    crops_per_forward: int
    wandb: str | None


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train AHIQ (deformable fusion + head; the backbones stay frozen).",
                                parents=train_parents(), formatter_class=HelpFormatter)
    p.set_defaults(name=TRAIN_NAME)  # never the released model's folder
    return p


@dataclass(frozen=True, kw_only=True)
class TrainConfig(RunConfig, TrainDataFields, ImageFields, WindowFields, LabelFields, SplitFields, RunFields,
                  ModelFields, TrainingFields):
    """train.py's configuration: :func:`train_parser`'s options."""

    parser = train_parser


def parse_train_options(argv: list[str] | None = None) -> TrainConfig:
    return check_train_options(parse(TrainConfig, argv, (apply_preset,)))


def check_train_options(opt: RunConfig) -> RunConfig:
    check_positive(opt, "n_epoch", "save_interval", "batch_size", "val_freq", "T_max", "num_avg_val")
    if not (opt.save_last_every >= 0 and opt.save_last_every != float("inf")):
        raise AHIQError(f"--save_last_every {opt.save_last_every}: give seconds (0: last.pth after every epoch)")
    if opt.learning_rate <= 0 or opt.weight_decay < 0 or opt.eta_min < 0:
        raise AHIQError(f"--learning_rate {opt.learning_rate} must be positive, --weight_decay {opt.weight_decay} "
                        f"and --eta_min {opt.eta_min} not negative")
    if opt.num_crop != 1:
        raise AHIQError(f"--num_crop {opt.num_crop}: only 1 is supported (one random crop per training sample, as "
                        "the released model was trained)")
    if opt.wandb:
        try:
            import wandb  # noqa: F401 - optional; asked for, it must be there before any work starts
        except ImportError:
            raise AHIQError("--wandb needs the wandb package: pip install wandb (or drop --wandb)") from None
    if opt.resume and opt.load_epoch >= 0:
        raise AHIQError("pass either --resume (from last.pth) or --load_epoch N (from epoch_N.pth), not both")
    return opt
