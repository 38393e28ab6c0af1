"""Correlation metrics of IQA: SRCC, PLCC, KRCC, RMSE, the NTIRE 2022 main score (PLCC + SRCC), and PLCC after
the standard 4-parameter logistic mapping of predictions to labels (VQEG FR-TV Phase II)."""
from __future__ import annotations

import functools
import warnings

import numpy as np

BEST_METRICS = ("srcc_or_plcc", "srcc", "plcc", "main_score")  # train.py --best_metric: which epoch best.pth holds


def improves(rule: str, srcc: float, plcc: float, best_srcc: float, best_plcc: float) -> bool:
    """Whether an epoch's validation SRCC/PLCC beat the best epoch's under ``rule`` (:data:`BEST_METRICS`):
    ``srcc_or_plcc`` is the official rule (either one improved); ``main_score`` compares PLCC + SRCC."""
    return {"srcc_or_plcc": srcc > best_srcc or plcc > best_plcc, "srcc": srcc > best_srcc, "plcc": plcc > best_plcc,
            "main_score": srcc + plcc > best_srcc + best_plcc}[rule]


def logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """(b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2: monotone, from b2 (x -> -inf) to b1 (x -> +inf)."""
    z = np.clip(-(x - b3) / (np.abs(b4) + 1e-12), -500, 500)  # exp(500) is finite; beyond, the curve is flat anyway
    return (b1 - b2) / (1 + np.exp(z)) + b2


def _rising(x: np.ndarray, low: float, span: float, b3: float, b4: float) -> np.ndarray:
    return logistic4(x, low + span, low, b3, b4)


def _rising_jacobian(x: np.ndarray, low: float, span: float, b3: float, b4: float) -> np.ndarray:
    """(N, 4) derivatives of :func:`_rising` by (low, span, b3, b4): low + span * s with s = 1 / (1 + exp(z)),
    z = -(x - b3) / |b4|, ds/dz = -s (1 - s); zero where :func:`logistic4` clips z. Analytic: a numerical Jacobian
    costs four more evaluations per step, and a fit that turns into a step takes hundreds of steps."""
    scale = np.abs(b4) + 1e-12
    z = -(x - b3) / scale
    s = 1 / (1 + np.exp(np.clip(z, -500, 500)))
    dz = np.where(np.abs(z) < 500, -span * s * (1 - s), 0.0)  # d rising / d z
    return np.stack([np.ones_like(x), s, dz / scale, dz * (x - b3) / scale ** 2 * np.sign(b4)], axis=1)


FIT_EVALUATIONS = 1000  # a start's evaluations at most (a step-like fit would take thousands, seconds each list)


def fit_logistic4(pred: np.ndarray, label: np.ndarray) -> np.ndarray | None:
    """Least-squares parameters (b1, b2, b3, b4) of :func:`logistic4` mapping predictions to labels, constrained to
    rise (b1 >= b2, b4 > 0: labels are on a higher-is-better scale, DMOS flipped before normalising), so a model
    that ranks backwards never gains from the mapping; None when no start gives a finite fit.

    Tries a few slopes for the starting point (a single start can stall) and keeps the best fit. A sound fit
    converges in about ten evaluations; one that turns into a step (b4 -> 0) never does, and is stopped after
    :data:`FIT_EVALUATIONS` as it is (:func:`logistic_fit_problem` then names it a step). The last few fits are
    kept: test.py's metrics, P.1401's statistics and its figures map the same scores to the same labels.
    """
    params = _fit_logistic4(*(np.ascontiguousarray(a, np.float64).tobytes() for a in (pred, label)))
    return None if params is None else np.array(params)


@functools.lru_cache(maxsize=8)
def _fit_logistic4(pred_bytes: bytes, label_bytes: bytes) -> tuple[float, ...] | None:
    from scipy import optimize  # imported when used: runs without labels never load SciPy
    pred, label = np.frombuffer(pred_bytes), np.frombuffer(label_bytes)
    best, best_sse = None, np.inf
    spread = float(np.std(pred)) or 1.0
    span = max(float(label.max() - label.min()), 1e-6)
    bounds = ([-np.inf, 0.0, -np.inf, 1e-12], [np.inf, np.inf, np.inf, np.inf])
    for slope in (spread / 4, spread, spread / 16):
        p0 = [float(label.min()), span, float(np.median(pred)), slope]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fitted = optimize.least_squares(lambda p: _rising(pred, *p) - label, p0, bounds=bounds, method="trf",
                                                jac=lambda p: _rising_jacobian(pred, *p), max_nfev=FIT_EVALUATIONS).x
        except (RuntimeError, ValueError):
            continue
        params = np.array([fitted[0] + fitted[1], fitted[0], fitted[2], fitted[3]])
        sse = float(np.sum((logistic4(pred, *params) - label) ** 2))
        if np.all(np.isfinite(params)) and sse < best_sse:
            best, best_sse = tuple(float(p) for p in params), sse
    return best


MIN_FIT_IMAGES = 5  # below this the 4-parameter logistic is not fitted
ON_SLOPE = 3.0  # |x - b3| / |b4| below this: a prediction on the logistic's slope (between ~5% and ~95%)


def logistic_fit_problem(pred: np.ndarray, label: np.ndarray, params: np.ndarray | None) -> str | None:
    """Why the logistic-mapped PLCC of this fit says nothing (None: it is sound): too few images, predictions that
    rank the labels backwards (the fit only rises: a DMOS list read as MOS must not look good), no fit, or a fit
    that is a step (fewer than 3 predictions, or under a fifth of them, on its slope: every other one is mapped to
    one of two values, and the PLCC measures how the step splits the images, not the model)."""
    from scipy import stats
    if pred.size < MIN_FIT_IMAGES:
        return f"fewer than {MIN_FIT_IMAGES} images"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        srcc = float(stats.spearmanr(pred, label)[0])
    if not srcc > 0:
        return (f"the predictions rank the labels backwards (SRCC {srcc:.3f}), which no rising mapping can fit; "
                "if the labels are DMOS (lower is better), give --label_direction lower_better")
    if params is None:
        return "the 4-parameter logistic did not converge"
    on_slope = int(np.sum(np.abs(pred - params[2]) / (np.abs(params[3]) + 1e-12) < ON_SLOPE))
    if on_slope < max(3, pred.size / 5):
        return f"the fitted logistic is a step ({on_slope} of {pred.size} predictions on its slope)"
    return None


def iqa_metrics(pred: np.ndarray, label: np.ndarray) -> dict[str, float | str | None]:
    """Metrics of predictions against labels (same scale; here the min-max normalised MOS).

    ``plcc`` is the raw PLCC (what NTIRE 2022 scored); ``plcc_logistic`` is the PLCC after the logistic mapping, None
    when the fit is not sound, with the reason in ``plcc_logistic_note`` (:func:`logistic_fit_problem`). Every value
    is a finite float or None, so the dict is strict JSON.
    """
    from scipy import stats
    pred, label = np.asarray(pred, dtype=np.float64).ravel(), np.asarray(label, dtype=np.float64).ravel()
    if pred.shape != label.shape or pred.size < 2:
        raise ValueError(f"need two or more prediction/label pairs, got {pred.shape} and {label.shape}")
    with warnings.catch_warnings():  # a constant input: the correlation is NaN, reported below as None
        warnings.simplefilter("ignore")
        srcc = float(stats.spearmanr(pred, label)[0])
        plcc = float(stats.pearsonr(pred, label)[0])
        krcc = float(stats.kendalltau(pred, label)[0])
        rmse = float(np.sqrt(np.mean((pred - label) ** 2)))
        params = fit_logistic4(pred, label) if pred.size >= MIN_FIT_IMAGES else None
        problem = logistic_fit_problem(pred, label, params)
        plcc_logistic = None if problem else float(stats.pearsonr(logistic4(pred, *params), label)[0])
    metrics = {"srcc": srcc, "plcc": plcc, "krcc": krcc, "rmse": rmse, "main_score": plcc + srcc,
               "plcc_logistic": plcc_logistic, "plcc_logistic_note": problem}
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in metrics.items()}


METRIC_NAMES = ("srcc", "plcc", "plcc_logistic", "krcc", "rmse", "main_score")  # the numbers iqa_metrics gives


def metrics_line(metrics: dict) -> str:
    """The metrics of :func:`iqa_metrics` on one line, as train.py, test.py and predict.py print them."""
    return (f"SRCC {fmt(metrics['srcc'])}  PLCC {fmt(metrics['plcc'])} (raw; {fmt(metrics['plcc_logistic'])} after "
            f"the 4-parameter logistic mapping)  KRCC {fmt(metrics['krcc'])}  RMSE {fmt(metrics['rmse'])}  main score "
            f"(raw PLCC + SRCC) {fmt(metrics['main_score'])}")


def fmt(value: float | None, digits: int = 4) -> str:
    """A metric for a log line: its value, or n/a when it could not be computed."""
    return "n/a" if value is None else f"{value:.{digits}f}"
