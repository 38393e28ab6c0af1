"""train.py options: the official training options (names, defaults) and the project's additions."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from data.pair_dataset import FLIP_AXES
from options.base_options import (
    BackboneFields,
    ModelFields,
    RunConfig,
    RunFields,
    option,
    parse,
)
from options.data_options import (
    ImageFields,
    LabelFields,
    SplitFields,
    TrainDataFields,
    WindowFields,
    apply_preset,
)
from options.defaults import CROPS_PER_FORWARD, TEST_BATCH, TRAIN_NAME
from options.policy import FREE, ONCE, RESUMABLE
from utils.errors import AHIQError
from utils.metrics import BEST_METRICS


@dataclass(frozen=True, kw_only=True)
class TrainingFields:
    """The training schedule and what a run writes."""

    TITLE: ClassVar[str] = "train"
    VIEW: ClassVar[str] = "train"
    n_epoch: int = option(200, "epochs to train", policy=RESUMABLE, minimum=1)
    save_interval: int = option(5, "write epoch_N.pth every N epochs", policy=FREE, minimum=1)
    save_last_every: float = option(0, "write last.pth (~330 MB: everything a resume needs) at the end of an epoch "
                                       "only when SECONDS have passed since the last one; 0: every epoch. It is "
                                       "always written at the end of the run and on a stop; a crash costs at most "
                                       "SECONDS of epochs, replayed exactly", policy=FREE, metavar="SECONDS",
                                   minimum=0)
    learning_rate: float = option(1e-4, "Adam learning rate", above=0)
    weight_decay: float = option(1e-5, "Adam weight decay", minimum=0)
    batch_size: int = option(4, "pairs per step (per process with torchrun)", minimum=1)
    val_freq: int = option(1, "validate every N epochs", minimum=1)
    T_max: int = option(50, "CosineAnnealingLR period, in iterations (official)", minimum=1)
    flip_axis: str = option("vertical", "axis of the random flip (p=0.5) of training crops; vertical is what the "
                                        "official code does (np.fliplr on C x H x W) and what the released "
                                        "checkpoint was trained with", choices=FLIP_AXES)
    eta_min: float = option(0, "CosineAnnealingLR minimum learning rate", minimum=0)
    drop_last: bool = option(False, "as the released loaders: drop each epoch's last incomplete training batch, and "
                                    "validate on the list's first images in whole batches of --batch_size (the rest "
                                    "unscored)")
    best_metric: str = option("srcc_or_plcc", "which epoch best.pth holds (the log, metrics.png and protocol.py say "
                                              "the same): 'srcc_or_plcc' is the official rule (saved when SRCC or "
                                              "PLCC improves); 'srcc', 'plcc' or 'main_score' (PLCC + SRCC): when "
                                              "that one improves", choices=BEST_METRICS)
    resume: bool = option(False, "continue from last.pth in checkpoints_dir/name", policy=ONCE)
    val_batch_size: int = option(TEST_BATCH, "images per validation batch", policy=FREE, minimum=1)
    crops_per_forward: int = option(CROPS_PER_FORWARD, "crop pairs per forward in validation", policy=FREE,
                                   minimum=1)
    log_every: int = option(10, "write the training loss and learning rate (TensorBoard, W&B, the progress bar) at "
                                "step 1 and every N steps after (each write is host work beside the GPU's)",
                            policy=FREE, metavar="N", minimum=1)
    compile_mode: str | None = option(None, "torch.compile the model's training forward in this mode "
                                            "('reduce-overhead': CUDA graphs for the fixed-shape step, with "
                                            "--drop_last; 'default'); checkpoints keep their keys", policy=FREE,
                                      choices=("default", "reduce-overhead", "max-autotune"))
    wandb: str | None = option(None, "also log the scalars to this Weights & Biases project (needs `pip install "
                                     "wandb`)", policy=FREE, metavar="PROJECT")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(TrainingFields, BackboneFields, ModelFields, RunFields, SplitFields, LabelFields, WindowFields,
                  ImageFields, TrainDataFields, RunConfig):
    """train.py's configuration."""

    DESCRIPTION: ClassVar[str] = "Train AHIQ (deformable fusion + head; the backbones stay frozen)."
    DEFAULTS: ClassVar[dict] = {"name": TRAIN_NAME}  # never the released model's folder


def parse_train_options(argv: list[str] | None = None) -> TrainConfig:
    return check_train_options(parse(TrainConfig, argv, (apply_preset,)))


def check_train_options(opt: RunConfig) -> RunConfig:
    """What the options' declarations cannot say: an optional package asked for, and options that exclude each
    other."""
    if opt.wandb:
        try:
            import wandb  # noqa: F401 - optional; asked for, it must be there before any work starts
        except ImportError:
            raise AHIQError("--wandb needs the wandb package: pip install wandb (or drop --wandb)") from None
    if opt.resume and opt.load_epoch >= 0:
        raise AHIQError("pass either --resume (from last.pth) or --load_epoch N (from epoch_N.pth), not both")
    return opt
