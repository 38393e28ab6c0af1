"""Correlation metrics of IQA: SRCC, PLCC, KRCC, RMSE and the NTIRE 2022 main score (PLCC + SRCC)."""
from __future__ import annotations

import numpy as np
from scipy import stats


def iqa_metrics(pred: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """Metrics of predictions against labels (same scale; here the min-max normalised MOS)."""
    pred, label = np.asarray(pred, dtype=np.float64).ravel(), np.asarray(label, dtype=np.float64).ravel()
    if pred.shape != label.shape or pred.size < 2:
        raise ValueError(f"need two or more prediction/label pairs, got {pred.shape} and {label.shape}")
    srcc = float(stats.spearmanr(pred, label)[0])
    plcc = float(stats.pearsonr(pred, label)[0])
    krcc = float(stats.kendalltau(pred, label)[0])
    rmse = float(np.sqrt(np.mean((pred - label) ** 2)))
    return {"srcc": srcc, "plcc": plcc, "krcc": krcc, "rmse": rmse, "main_score": plcc + srcc}
