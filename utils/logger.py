"""What a training run records: console and ``log.txt`` (rank 0; other ranks show warnings), TensorBoard scalars and
figures mirrored to Weights & Biases when asked for, and the per-epoch metrics file ``metrics.jsonl`` with its curves
``metrics.png`` (as MAE's JSON lines and timm's summary file: one object per epoch, easy to plot and compare)."""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

from utils.errors import AHIQError
from utils.files import (
    LOG_FILE,
    METRICS_FIGURE,
    METRICS_FILE,
    TENSORBOARD_DIR,
    append_text,
    atomic_write,
    file_error,
    read_text,
)


def setup_logging(run_dir: str | None = None, is_main: bool = True) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.INFO if is_main else logging.WARNING)
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(console)
    if run_dir and is_main:
        path = os.path.join(run_dir, LOG_FILE)
        try:
            os.makedirs(run_dir, exist_ok=True)
            file = logging.FileHandler(path)
        except OSError as err:
            raise file_error(path, err, "written") from None
        file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(file)


def close_file_logs(folder: str) -> None:
    """Close and detach the log files written in ``folder`` (before the folder is removed)."""
    root = logging.getLogger()
    for handler in root.handlers[:]:
        if isinstance(handler, logging.FileHandler) and os.path.dirname(handler.baseFilename) == os.path.abspath(
                folder):
            root.removeHandler(handler)
            handler.close()


class Scalars:
    """TensorBoard (``{run_dir}/tensorboard``) and, with ``wandb_project``, a Weights & Biases run with the same
    scalars (the package is optional: asking for it without it installed is a one-line error)."""

    def __init__(self, run_dir: str, name: str, config: dict, wandb_project: str | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter
        self.wandb = None
        if wandb_project:
            import wandb  # checked with the options (options/train_options.py)
            self.wandb = wandb.init(project=wandb_project, name=name, dir=run_dir, config=config)
        self.writer = SummaryWriter(os.path.join(run_dir, TENSORBOARD_DIR))

    def add(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def figure(self, tag: str, figure, step: int) -> None:
        self.writer.add_figure(tag, figure, step)

    def close(self) -> None:
        self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()


class EpochLog:
    """``{run_dir}/metrics.jsonl``: one JSON object per finished epoch (epoch, step, train loss, learning rate,
    validation SRCC/PLCC/KRCC/RMSE, milliseconds a training step, seconds), appended and synced line by line, and
    ``metrics.png`` with the curves.

    A new run starts the file afresh; a resumed run keeps the epochs its checkpoint has finished and drops any later
    ones (an epoch logged after the checkpoint was written) and a line torn by a kill.
    """

    def __init__(self, run_dir: str, epochs_done: int) -> None:
        self.path = os.path.join(run_dir, METRICS_FILE)
        self.png = os.path.join(run_dir, METRICS_FIGURE)
        self.rows = [r for r in self.read(self.path) if r.get("epoch", math.inf) <= epochs_done] if epochs_done else []
        atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))

    @staticmethod
    def read(path: str) -> list[dict[str, Any]]:
        """The rows of ``path``; only a last line torn by a kill is dropped, any other bad line is an error."""
        if not os.path.isfile(path):
            return []
        lines = read_text(path).split("\n")
        rows = []
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if isinstance(row, dict):
                rows.append(row)
            elif any(rest.strip() for rest in lines[lineno:]):
                raise AHIQError(f"{path}:{lineno}: not a JSON object of epoch metrics; repair or remove that line "
                                "(only a torn last line is dropped by itself)")
        return rows

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        append_text(self.path, json.dumps(row) + "\n", sync=True)
        self.plot()

    def plot(self) -> None:
        """``metrics.png``: training loss and validation curves by epoch, the run's name, the best epoch marked."""
        import io

        try:
            import matplotlib
        except ImportError:
            if not getattr(self, "_warned", False):
                logging.getLogger("ahiq").warning("%s not drawn: matplotlib is not installed", self.png)
                self._warned = True
            return
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import LogLocator, MaxNLocator, ScalarFormatter
        fig, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
        epochs = [r["epoch"] for r in self.rows]
        losses = [r["train_loss"] for r in self.rows]
        loss_ax.plot(epochs, losses, marker=".")
        loss_ax.set(xlabel="epoch", ylabel="train loss (MSE)")
        if min(losses) > 0 and max(losses) / min(losses) > 20:  # a log axis only where it helps, with labels
            loss_ax.set_yscale("log")
            loss_ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            loss_ax.yaxis.set_major_formatter(ScalarFormatter())
        scored = [r for r in self.rows if r.get("val_srcc") is not None]
        for key in ("val_srcc", "val_plcc"):
            points = [(r["epoch"], r[key]) for r in self.rows if r.get(key) is not None]
            if points:
                val_ax.plot(*zip(*points), marker=".", label=key[4:].upper())
        chosen = [r for r in scored if r.get("best")]
        if chosen:  # the epoch best.pth holds, by the run's --best_metric (the same rule as the log's)
            best = chosen[-1]
            val_ax.axvline(best["epoch"], color="0.6", linestyle="--", linewidth=1)
            right = best["epoch"] > (epochs[0] + epochs[-1]) / 2  # the label on the side with room
            val_ax.annotate(f"best.pth: epoch {best['epoch']}\nSRCC {best['val_srcc']:.3f}",
                            (best["epoch"], best["val_srcc"]), textcoords="offset points",
                            xytext=(-6 if right else 6, -26), ha="right" if right else "left", fontsize=8)
        val_ax.set(xlabel="epoch", ylabel="validation")
        if val_ax.get_legend_handles_labels()[0]:  # outside the axes: it never hides a curve
            val_ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
        for ax in (loss_ax, val_ax):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.suptitle(os.path.basename(os.path.dirname(os.path.abspath(self.path))), fontsize=10)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        atomic_write(self.png, buf.getvalue())
