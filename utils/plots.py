"""Figures: the prediction-vs-MOS scatter plot with the 4-parameter logistic fit (test.py PNG, TensorBoard), the
patch-map panel of a pair (predict.py --maps) and the worst predictions with their maps (test.py --worst)."""
from __future__ import annotations

import io
import logging
import textwrap

import numpy as np

from utils.errors import AHIQError
from utils.metrics import fit_logistic4, logistic4


def scatter_figure(preds: np.ndarray, labels: np.ndarray, metrics: dict, title: str = "", norm=None):
    """A matplotlib figure: predictions (x) against labels (y), the fitted logistic curve when the fit is sound,
    metrics in the title (wrapped to fit), the legend outside the axes (it never hides a point). ``norm`` (the
    list's :class:`data.label_norm.LabelNorm`): the labels and the curve in the list's own MOS (or DMOS) units."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    units = (lambda y: y) if norm is None else norm.invert
    fig, ax = plt.subplots(figsize=(6.2, 4.5))
    ax.scatter(preds, units(np.asarray(labels, float)), s=8, alpha=0.6, label="images")
    if metrics.get("plcc_logistic") is not None:
        params = fit_logistic4(np.asarray(preds, float), np.asarray(labels, float))
        xs = np.linspace(np.min(preds), np.max(preds), 200)
        ax.plot(xs, units(logistic4(xs, *params)), color="C3", label="4-parameter\nlogistic fit")
    ax.set_xlabel("prediction")
    ax.set_ylabel("MOS (min-max normalised)" if norm is None else
                  "DMOS (the list's units; lower is better)" if norm.lower_better else "MOS (the list's units)")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5))  # readable ticks, also on a narrow range
    ax.ticklabel_format(axis="x", useOffset=True, style="plain")
    ax.tick_params(axis="x", labelrotation=30)
    logistic = "n/a" if metrics.get("plcc_logistic") is None else f"{metrics['plcc_logistic']:.3f}"
    line = (f"SRCC {_num(metrics.get('srcc'))}  PLCC {_num(metrics.get('plcc'))} (logistic {logistic})  "
            f"n={len(preds)}")
    ax.set_title("\n".join(textwrap.wrap(title, 60) + [line]), fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def scatter_png(preds: np.ndarray, labels: np.ndarray, metrics: dict, title: str = "", norm=None) -> bytes:
    return _png(scatter_figure(preds, labels, metrics, title, norm), dpi=120)


def groups_png(tables: dict[str, dict], title: str) -> bytes:
    """SRCC per distortion group (:func:`utils.stats.group_metrics` tables: one panel per grouping), each bar with
    its number of images; a group too small for a correlation is drawn as an empty row marked n/a."""
    plt = _pyplot()
    keys = [k for k, groups in tables.items() if groups]
    heights = [0.8 + 0.24 * len(tables[k]) for k in keys]
    fig, axes = plt.subplots(len(keys), 1, figsize=(7.5, sum(heights) + 0.8), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, key in zip(axes[:, 0], keys):
        names = list(tables[key])
        srcc = [tables[key][g].get("srcc") for g in names]
        ys = np.arange(len(names))[::-1]
        ax.barh(ys, [0 if v is None else v for v in srcc], color=["C0" if v is None or v >= 0 else "C3" for v in srcc])
        for y, g, v in zip(ys, names, srcc):
            label = f"n={tables[key][g]['n']}" + ("" if v is not None else "  SRCC n/a (too few images)")
            ax.text(0.01 if v is None or v < 0.15 else v - 0.01, y, f"{v:.3f}  {label}" if v is not None else label,
                    va="center", ha="left" if v is None or v < 0.15 else "right", fontsize=7,
                    color="black" if v is None or v < 0.15 else "white")
        ax.set_yticks(ys, [_shorten(str(g), 28) for g in names], fontsize=7)
        ax.set_xlim(min(0.0, *(v for v in srcc if v is not None)) if any(v is not None for v in srcc) else 0, 1)
        ax.axvline(0, color="0.5", linewidth=0.6)
        ax.set_title(f"SRCC per {key.removeprefix('by_')}", fontsize=9)
    axes[-1, 0].set_xlabel("SRCC")
    fig.suptitle("\n".join(textwrap.wrap(title, 90)), fontsize=9)
    fig.tight_layout()
    return _png(fig)


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise AHIQError("figures need matplotlib (in requirements.txt): pip install matplotlib",
                        kind="missing_matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def optional_figure(make, what: str):
    """``make()``, or None with one warning when matplotlib is missing (a figure nobody asked for explicitly, e.g.
    on a bare GPU image: the numbers are still written)."""
    try:
        return make()
    except AHIQError as err:
        if err.kind != "missing_matplotlib":
            raise
        logging.getLogger("ahiq").warning("%s not drawn: %s", what, err)
        return None


def _maps_row(fig, axes, dis: np.ndarray, ref: np.ndarray, maps, titles: tuple[str, str],
              limits: dict[str, tuple[float, float]] | None = None, headers: bool = True) -> None:
    """One row of five panels: distorted, reference, then the score, weight and contribution maps laid over the
    distorted image (grey where no window covered it), each map with its colour bar."""
    import matplotlib

    axes[0].imshow(dis)
    axes[0].set_title(titles[0], fontsize=9)
    axes[1].imshow(ref)
    axes[1].set_title(titles[1], fontsize=9)
    grey = dis.astype(np.float32).mean(axis=2)
    for ax, (name, values, cmap) in zip(axes[2:], _panels(maps)):
        ax.imshow(grey, cmap="gray", vmin=0, vmax=255)
        if values is None:
            ax.set_title(f"{name}: none (mean pooling)", fontsize=9)
        else:
            colours = matplotlib.colormaps[cmap].with_extremes(bad="0.6")  # sequential: one-sided values
            lo, hi = (limits or {}).get(name, (None, None))
            shown = ax.imshow(np.ma.masked_invalid(values), cmap=colours, alpha=0.7, vmin=lo, vmax=hi)
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
            uncovered = "" if maps.covered.all() else f"grey: {100 * (1 - maps.covered.mean()):.0f}% not covered"
            ax.set_title("\n".join(filter(None, (name if headers else "", uncovered))), fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])


def _panels(maps) -> tuple[tuple[str, np.ndarray | None, str], ...]:
    """The map panels: name, values, a sequential colour map (the weights and contributions are never negative)."""
    return (("patch score f", maps.f, "viridis"), ("patch weight w", maps.w, "magma"),
            ("contribution f*w/sum(w)", maps.contribution, "inferno"))


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else "..." + text[-(limit - 3):]


def maps_panel_png(dis: np.ndarray, ref: np.ndarray, maps, name: str) -> bytes:
    """A PNG of one pair: the images and its maps (:class:`utils.quality_maps.ImageMaps`), the score in the title."""
    plt = _pyplot()
    h, w = dis.shape[:2]
    panel_w = 3.2
    fig, axes = plt.subplots(1, 5, figsize=(5 * panel_w, panel_w * h / w + 0.9), squeeze=False)
    _maps_row(fig, axes[0], dis, ref, maps, ("distorted", "reference"))
    fig.suptitle(f"{_shorten(name)}: score {maps.score:.4f} (higher is better; {len(maps.windows)} windows of "
                 f"{maps.crop} px)", fontsize=11)
    fig.tight_layout()
    return _png(fig)


def worst_png(rows: list[tuple[str, np.ndarray, np.ndarray, object, float, float]], title: str) -> bytes:
    """A PNG with one row per image (name, distorted, reference, maps, prediction mapped to the MOS scale, MOS):
    the images furthest from their MOS, worst first."""
    plt = _pyplot()
    h, w = rows[0][1].shape[:2]
    panel_w = 3.0
    fig, axes = plt.subplots(len(rows), 5, figsize=(5 * panel_w, len(rows) * (panel_w * h / w + 0.5) + 0.6),
                             squeeze=False)
    limits = {}  # one colour scale per kind of map over all rows, so rows compare
    for name, *_ in _panels(rows[0][3]):
        values = [v for r in rows for n, v, _ in _panels(r[3]) if n == name and v is not None]
        if values:
            limits[name] = (float(min(np.nanmin(v) for v in values)), float(max(np.nanmax(v) for v in values)))
    for i, (ax_row, (name, dis, ref, maps, fitted, mos)) in enumerate(zip(axes, rows)):
        _maps_row(fig, ax_row, dis, ref, maps, (f"{_shorten(name, 34)}: score {maps.score:.3f}\n"
                                                f"fitted {fitted:.4g}, MOS {mos:.4g}", "reference" if i == 0 else ""),
                  limits, headers=i == 0)
    fig.suptitle("\n".join(textwrap.wrap(title, 110)), fontsize=11)
    fig.tight_layout()
    return _png(fig)


def _png(fig, dpi: int = 100) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()
