"""Reading IQA results the way papers report them (ITU-T P.1401 is the reference): metrics per distortion type and
level, bootstrap confidence intervals (over images, or over reference images when references repeat), and the
difference between two models on the same images with its interval and Williams' test for dependent correlations.

Every resampling is seeded, so a report is reproducible. SciPy is imported where a test is computed.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np

from utils.errors import AHIQError
from utils.metrics import fit_logistic4, iqa_metrics, logistic4, logistic_fit_problem

CI_METRICS = ("srcc", "plcc", "krcc", "rmse")
MIN_BOOTSTRAP = 20  # images (and 5 references when whole references are resampled): below, an interval says nothing
MIN_REFERENCES = 5
MIN_GROUP = 3  # a correlation of fewer images says nothing: the group is listed, its numbers are None


def _interval(values: list[float], level: float) -> list[float | None]:
    """The percentile interval of bootstrap values (NaN draws, e.g. a resample of constant scores, left out); None
    where nothing finite is left (strict JSON)."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if not values.size:
        return [None, None]
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


def _too_few(n: int, groups: Sequence | None) -> str | None:
    """Why ``n`` images (of the references ``groups`` when they are resampled whole) get no interval, or None: the
    one minimum of every interval here (the whole list, a distortion group, a comparison of two models)."""
    refs = len(set(groups)) if groups is not None else n
    if n < MIN_BOOTSTRAP or refs < MIN_REFERENCES:
        return (f"too few images ({n}) or references ({refs}): an interval needs at least {MIN_BOOTSTRAP} images of "
                f"{MIN_REFERENCES} references")
    return None


def _resample_rows(groups: Sequence | None, n: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices of one bootstrap resample: images drawn with replacement, or whole reference groups (every image
    of each drawn reference), so the images of one content are not counted as independent."""
    if groups is None:
        return rng.integers(0, n, size=n)
    keys, inverse = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(len(keys))]
    return np.concatenate([members[k] for k in rng.integers(0, len(keys), size=len(keys))])


def _point(pred: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """SRCC, PLCC, KRCC and RMSE without the logistic fit (the bootstrap's inner loop)."""
    from scipy import stats
    with warnings.catch_warnings():  # a constant resample or input: NaN, left out or reported as None by callers
        warnings.simplefilter("ignore")
        return {"srcc": stats.spearmanr(pred, label)[0], "plcc": stats.pearsonr(pred, label)[0],
                "krcc": stats.kendalltau(pred, label)[0], "rmse": float(np.sqrt(np.mean((pred - label) ** 2)))}


def bootstrap_intervals(pred: np.ndarray, label: np.ndarray, groups: Sequence | None = None, n_boot: int = 1000,
                        seed: int = 0, level: float = 0.95) -> dict:
    """Percentile intervals of SRCC, PLCC, KRCC and RMSE over ``n_boot`` resamples (:func:`_resample_rows`;
    ``groups``: each image's reference, resampled whole when given)."""
    pred, label = np.asarray(pred, np.float64), np.asarray(label, np.float64)
    check_finite("the predictions", pred)
    check_finite("the labels", label)
    problem = _too_few(len(pred), groups)
    if problem:
        return {**{m: [None, None] for m in CI_METRICS}, "level": level, "resamples": 0, "seed": seed,
                "resampled": "none", "note": problem}
    rng = np.random.default_rng(seed)
    draws = {m: [] for m in CI_METRICS}
    with np.errstate(all="ignore"):
        for _ in range(n_boot):
            rows = _resample_rows(groups, len(pred), rng)
            for m, v in _point(pred[rows], label[rows]).items():
                draws[m].append(v)
    out = {m: _interval(v, level) for m, v in draws.items()}
    return {**out, "level": level, "resamples": n_boot, "seed": seed,
            "resampled": "references (all images of each drawn reference)" if groups is not None else "images"}


def group_metrics(pred: np.ndarray, label: np.ndarray, keys: Sequence[str], refs: Sequence | None = None,
                  n_boot: int = 0, seed: int = 0, names: Callable[[str], str | None] | None = None,
                  level: float = 0.95) -> dict[str, dict]:
    """SRCC and PLCC (with n) per group (a distortion type or level), with ``names(code)``'s name beside the code and,
    with ``n_boot``, 95% intervals of both over resamples of the group's images (of its references, ``refs``, when
    given) with :func:`bootstrap_intervals`' minimum; groups under :data:`MIN_GROUP` images are listed with None
    and the reason, never left out."""
    pred, label, keys = np.asarray(pred, np.float64), np.asarray(label, np.float64), np.asarray(keys)
    out = {}
    for key in sorted(set(keys.tolist())):
        rows = np.flatnonzero(keys == key)
        n = len(rows)
        entry = {"n": n, "name": names(key) if names else None}
        if n < MIN_GROUP or np.ptp(label[rows]) == 0 or np.ptp(pred[rows]) == 0:
            out[key] = {**entry, "srcc": None, "plcc": None, "srcc_interval": [None, None],
                        "plcc_interval": [None, None],
                        "note": f"too few images ({n})" if n < MIN_GROUP else "constant scores or labels"}
            continue
        m = iqa_metrics(pred[rows], label[rows])
        sub = None if refs is None else [refs[i] for i in rows]
        ci = _correlation_intervals(pred[rows], label[rows], sub, n_boot, seed, level) if n_boot else None
        out[key] = {**entry, "srcc": m["srcc"], "plcc": m["plcc"],
                    "srcc_interval": ci["srcc"] if ci else [None, None],
                    "plcc_interval": ci["plcc"] if ci else [None, None], "note": ci["note"] if ci else None}
    return out


def _correlation_intervals(pred: np.ndarray, label: np.ndarray, groups: Sequence | None, n_boot: int, seed: int,
                           level: float) -> dict:
    """Percentile intervals of SRCC and PLCC alone (a group's table), with :func:`bootstrap_intervals`' minimum."""
    from scipy import stats
    problem = _too_few(len(pred), groups)
    if problem:
        return {"srcc": [None, None], "plcc": [None, None], "note": f"no interval: {problem}"}
    rng = np.random.default_rng(seed)
    draws = {"srcc": [], "plcc": []}
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for _ in range(n_boot):
            rows = _resample_rows(groups, len(pred), rng)
            draws["srcc"].append(stats.spearmanr(pred[rows], label[rows])[0])
            draws["plcc"].append(stats.pearsonr(pred[rows], label[rows])[0])
    return {m: _interval(v, level) for m, v in draws.items()} | {"note": None}


def check_finite(name: str, values: np.ndarray) -> None:
    """Statistics of NaN or infinite values mean nothing (a NaN point inside a finite interval, a NaN in strict
    JSON): refused in one line naming what holds them."""
    bad = ~np.isfinite(np.asarray(values, np.float64))
    if bad.any():
        raise AHIQError(f"{name}: {int(bad.sum())} of {bad.size} values are NaN or infinite; statistics need finite "
                        "scores (a diverged model, or a damaged results file)")


def williams_test(r12: float, r13: float, r23: float, n: int) -> tuple[float, float] | None:
    """Williams' t for H0: r12 = r13, two correlations that share variable 1 (the MOS) measured on the same n
    images, given r23 (the two models' correlation); returns (t, two-sided p) with n - 3 degrees of freedom
    (Williams 1959; Steiger 1980, eq. 14), or None where it is undefined: fewer than 4 images, a correlation that
    is not finite (constant scores or labels), or two models that rank alike (r23 = 1: nothing to compare)."""
    from scipy import stats
    if n < 4 or not all(np.isfinite([r12, r13, r23])):
        return None
    det = 1 - r12 ** 2 - r13 ** 2 - r23 ** 2 + 2 * r12 * r13 * r23
    mean = (r12 + r13) / 2
    denominator = 2 * (n - 1) / (n - 3) * det + mean ** 2 * (1 - r23) ** 3
    if not denominator > 0:
        return None
    t = (r12 - r13) * np.sqrt((n - 1) * (1 + r23) / denominator)
    return float(t), float(2 * stats.t.sf(abs(t), n - 3))


def _number(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def compare_models(pred_a: np.ndarray, pred_b: np.ndarray, label: np.ndarray, groups: Sequence | None = None,
                   n_boot: int = 1000, seed: int = 0, level: float = 0.95, units: float = 1.0) -> dict:
    """Model A against model B on the same images: each metric of both, the difference A - B with its paired
    bootstrap interval (with :func:`bootstrap_intervals`' minimum of images and references), and for PLCC and
    SRCC Williams' test (SRCC on ranks; its p-value two-sided: H0 both correlate with the MOS alike). A value that
    is undefined (constant scores or labels, models that rank alike, too few images) is None with a note.
    ``p1401``: P.1401's tests on the mapped values (:func:`mapped_tests`; RMSE times ``units``)."""
    from scipy import stats
    a, b, y = (np.asarray(x, np.float64) for x in (pred_a, pred_b, label))
    for name, values in (("model A's scores", a), ("model B's scores", b), ("the labels", y)):
        check_finite(name, values)
    if not len(a) == len(b) == len(y) >= MIN_GROUP:
        raise AHIQError(f"compare {len(a)}, {len(b)} scores with {len(y)} labels: give both models' scores of the "
                        f"same {MIN_GROUP} or more images")
    too_few = _too_few(len(y), groups)
    enough = too_few is None
    rng = np.random.default_rng(seed)
    diffs = {m: [] for m in CI_METRICS}
    with np.errstate(all="ignore"):
        for _ in range(n_boot if enough else 0):
            rows = _resample_rows(groups, len(y), rng)
            pa, pb = _point(a[rows], y[rows]), _point(b[rows], y[rows])
            for m in CI_METRICS:
                diffs[m].append(pa[m] - pb[m])
        pa, pb = _point(a, y), _point(b, y)
    out: dict = {"n": len(y), "level": level, "resamples": n_boot if enough else 0, "seed": seed,
                 "resampled": ("references" if groups is not None else "images") if enough else "none",
                 "note": too_few}
    for m in CI_METRICS:
        out[m] = {"a": _number(pa[m]), "b": _number(pb[m]), "diff": _number(pa[m] - pb[m]),
                  "diff_interval": _interval(diffs[m], level)}
    ranks = [stats.rankdata(x) for x in (y, a, b)]
    with np.errstate(all="ignore"):
        for m, (ya, aa, bb) in (("plcc", (y, a, b)), ("srcc", ranks)):
            r = [float(np.corrcoef(u, v)[0, 1]) for u, v in ((ya, aa), (ya, bb), (aa, bb))]
            test = williams_test(*r, len(y))
            out[m]["williams_t"], out[m]["williams_p"] = test if test else (None, None)
            out[m]["williams_note"] = None if test else (
                "undefined: constant scores or labels" if not all(np.isfinite(r)) else
                "undefined: fewer than 4 images" if len(y) < 4 else "undefined: the two models rank the images alike")
    out["p1401"] = mapped_tests(a, b, y, units)
    return out


MAPPING_DOF = 4  # parameters of the 4-parameter logistic: P.1401's d in RMSE* = sqrt(sum(error^2) / (N - d))
OUTLIER_SIGMAS = 2.0  # an outlier: |mapped - MOS| above this many standard deviations of the image's ratings


def _mapping(pred: np.ndarray, label: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """The rising logistic from ``pred`` to ``label`` and why it says nothing (None: sound), with the degree of
    freedom P.1401's statistics need left after its 4 parameters."""
    if len(pred) <= MAPPING_DOF:
        return None, f"{len(pred)} images: the mapping's {MAPPING_DOF} parameters leave no degree of freedom"
    params = fit_logistic4(pred, label)
    return params, logistic_fit_problem(pred, label, params)


def p1401(pred: np.ndarray, label: np.ndarray, units: float = 1.0, std: np.ndarray | None = None) -> dict:
    """ITU-T P.1401's statistics of predictions after the rising 4-parameter logistic fitted to the labels:
    ``rmse_mapped``, the RMSE of the mapped predictions with the mapping's 4 degrees of freedom taken out
    (sqrt(sum(error^2) / (N - 4))), in the labels' units times ``units`` (test.py: the list's MOS span, so MOS
    units); ``outlier_ratio``, the share of images whose mapped error exceeds 2 standard deviations of their ratings
    (``std``, in the same units; VQEG FR-TV's definition, P.1401's without the number of ratings per image); None
    with the reason where the mapping does not fit or no std is known."""
    pred, label = np.asarray(pred, np.float64), np.asarray(label, np.float64)
    params, problem = _mapping(pred, label)
    out = {"rmse_mapped": None, "outlier_ratio": None, "outliers": None, "p1401_note": problem}
    if problem:
        return out
    error = (logistic4(pred, *params) - label) * units
    out["rmse_mapped"] = float(np.sqrt(np.sum(error ** 2) / (len(pred) - MAPPING_DOF)))
    if std is None:
        out["p1401_note"] = "no outlier ratio: the list gives no per-image std of the ratings (a 'std' column)"
    else:
        std = np.asarray(std, np.float64)
        check_finite("the std column", std)
        outliers = int(np.sum(np.abs(error) > OUTLIER_SIGMAS * std))
        out["outlier_ratio"], out["outliers"] = outliers / len(pred), outliers
    return out


def mapped_tests(a: np.ndarray, b: np.ndarray, label: np.ndarray, units: float = 1.0) -> dict:
    """P.1401's tests between two models on the same images, each after its own logistic mapping: PLCC by Fisher's
    z (z = (atanh r_a - atanh r_b) / sqrt(2 / (N - 3))) and RMSE by the F-test (F = (RMSE_a / RMSE_b)^2 with
    N - 4 and N - 4 degrees of freedom); p-values two-sided (H0: the models are equally good by that measure).
    RMSE in the labels' units times ``units``. None with the reason where a mapping does not fit."""
    from scipy import stats
    out: dict = {"n": len(label)}
    fits = {}
    for name, pred in (("a", a), ("b", b)):
        params, problem = _mapping(pred, label)
        if problem:
            return {**out, "plcc_mapped": None, "rmse_mapped": None, "note": f"model {name.upper()}: {problem}"}
        fits[name] = logistic4(pred, *params)
    n, dof = len(label), len(label) - MAPPING_DOF
    r = {k: float(np.corrcoef(v, label)[0, 1]) for k, v in fits.items()}
    rmse = {k: float(np.sqrt(np.sum((v - label) ** 2) / dof)) * units for k, v in fits.items()}
    z = (np.arctanh(min(r["a"], 1 - 1e-15)) - np.arctanh(min(r["b"], 1 - 1e-15))) / np.sqrt(2 / (n - 3))
    f = (rmse["a"] / rmse["b"]) ** 2 if rmse["b"] > 0 else np.inf
    p_f = float(min(1.0, 2 * min(stats.f.cdf(f, dof, dof), stats.f.sf(f, dof, dof))))
    return {**out, "note": None,
            "plcc_mapped": {"a": r["a"], "b": r["b"], "fisher_z": float(z), "p": float(2 * stats.norm.sf(abs(z)))},
            "rmse_mapped": {"a": rmse["a"], "b": rmse["b"], "f": float(f), "p": p_f}}
