"""The prediction-vs-MOS scatter plot with the 4-parameter logistic fit (test.py PNG, TensorBoard figure)."""
from __future__ import annotations

import io

import numpy as np

from utils.metrics import fit_logistic4, logistic4


def scatter_figure(preds: np.ndarray, labels: np.ndarray, metrics: dict, title: str = ""):
    """A matplotlib figure: predictions (x) against labels (y), the fitted logistic curve, metrics in the title."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.scatter(preds, labels, s=8, alpha=0.6, label="images")
    params = fit_logistic4(np.asarray(preds, float), np.asarray(labels, float)) if len(preds) >= 5 else None
    if params is not None:
        xs = np.linspace(np.min(preds), np.max(preds), 200)
        ax.plot(xs, logistic4(xs, *params), color="C3", label="4-parameter logistic fit")
    ax.set_xlabel("prediction")
    ax.set_ylabel("MOS (min-max normalised)")
    ax.set_title(f"{title + ': ' if title else ''}SRCC {metrics['srcc']:.3f}  PLCC {metrics['plcc']:.3f} "
                 f"(logistic {metrics['plcc_logistic']:.3f})", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def scatter_png(preds: np.ndarray, labels: np.ndarray, metrics: dict, title: str = "") -> bytes:
    import matplotlib.pyplot as plt

    fig = scatter_figure(preds, labels, metrics, title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()
