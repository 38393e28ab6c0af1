"""Correlation metrics of IQA: SRCC, PLCC, KRCC, RMSE, the NTIRE 2022 main score (PLCC + SRCC), and PLCC after
the standard 4-parameter logistic mapping of predictions to labels (VQEG FR-TV Phase II)."""
from __future__ import annotations

import warnings

import numpy as np
from scipy import optimize, stats


def logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """(b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2: monotone, from b2 (x -> -inf) to b1 (x -> +inf)."""
    z = np.clip(-(x - b3) / (np.abs(b4) + 1e-12), -500, 500)  # exp(500) is finite; beyond, the curve is flat anyway
    return (b1 - b2) / (1 + np.exp(z)) + b2


def fit_logistic4(pred: np.ndarray, label: np.ndarray) -> np.ndarray | None:
    """Least-squares parameters of :func:`logistic4` mapping predictions to labels; None when no fit converges.

    Tries a few slopes for the starting point (a single start can stall) and keeps the best fit.
    """
    best, best_sse = None, np.inf
    spread = float(np.std(pred)) or 1.0
    for slope in (spread / 4, spread, spread / 16):
        p0 = [label.max(), label.min(), float(np.median(pred)), slope]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                params, _ = optimize.curve_fit(logistic4, pred, label, p0=p0, maxfev=20000)
        except (RuntimeError, ValueError):
            continue
        sse = float(np.sum((logistic4(pred, *params) - label) ** 2))
        if np.all(np.isfinite(params)) and sse < best_sse:
            best, best_sse = params, sse
    return best


def iqa_metrics(pred: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """Metrics of predictions against labels (same scale; here the min-max normalised MOS).

    ``plcc`` is the raw PLCC (what NTIRE 2022 scored); ``plcc_logistic`` is the PLCC after the logistic mapping
    (NaN when the fit fails).
    """
    pred, label = np.asarray(pred, dtype=np.float64).ravel(), np.asarray(label, dtype=np.float64).ravel()
    if pred.shape != label.shape or pred.size < 2:
        raise ValueError(f"need two or more prediction/label pairs, got {pred.shape} and {label.shape}")
    srcc = float(stats.spearmanr(pred, label)[0])
    plcc = float(stats.pearsonr(pred, label)[0])
    krcc = float(stats.kendalltau(pred, label)[0])
    rmse = float(np.sqrt(np.mean((pred - label) ** 2)))
    params = fit_logistic4(pred, label) if pred.size >= 5 else None
    plcc_logistic = float(stats.pearsonr(logistic4(pred, *params), label)[0]) if params is not None else float("nan")
    return {"srcc": srcc, "plcc": plcc, "krcc": krcc, "rmse": rmse, "main_score": plcc + srcc,
            "plcc_logistic": plcc_logistic}
