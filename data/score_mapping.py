"""A calibrated score scale: the rising 4-parameter logistic from a model's scores to the MOS of a list, fitted once
(``test.py --fit_mapping FILE``), saved as JSON, and applied anywhere (``--mapping FILE``: predict.py, test.py,
``load_scorer(mapping=...)``), so a score reads in that list's MOS units. P.1401 fits such a monotone mapping
before RMSE; here it is also kept, with what it was fitted on, for new images.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from data.label_norm import LabelNorm
from utils.errors import AHIQError
from utils.files import atomic_write, read_json
from utils.metrics import fit_logistic4, logistic4, logistic_fit_problem
from utils.records import require_same
from utils.values import expected

FORMAT = "ahiq-mapping-1"


@dataclass(frozen=True)
class Mapping:
    """Scores -> the MOS units of the list it was fitted on: the logistic (to the list's min-max normalised,
    higher-is-better labels), then that list's range (DMOS stays DMOS: lower is better)."""

    params: tuple[float, float, float, float]
    norm: LabelNorm
    fitted_on: str
    n: int
    checkpoint: str | None
    weights: dict[str, str] | None = None  # digests of the weights it was fitted for (Scorer.weights); None: older
    file: str | None = None  # where it was read from (messages)

    @property
    def units(self) -> str:
        direction = "DMOS, lower is better" if self.norm.lower_better else "MOS, higher is better"
        return f"{os.path.basename(self.fitted_on)} {direction}, {self.norm.mos_min:g} to {self.norm.mos_max:g}"

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        return self.norm.invert(logistic4(np.asarray(scores, np.float64), *self.params))

    def save(self, path: str) -> None:
        atomic_write(path, json.dumps({"format": FORMAT, "params": list(self.params), "label_norm": self.norm.to_dict(),
                                       "fitted_on": self.fitted_on, "n": self.n, "checkpoint": self.checkpoint,
                                       "weights": self.weights}, indent=2))

    def check_model(self, weights: dict[str, str], allow_other: bool = False) -> str | None:
        """Refuse to put another model's scores on this scale (compared by the weights' digests, not by path) unless
        ``allow_other``; returns a note when the file predates the record (it cannot tell)."""
        if self.weights is None:
            return (f"{self.file}: records no model digest (an older file): make sure it was fitted for "
                    f"{self.checkpoint or 'this model'}, or fit it again with test.py --fit_mapping")
        if not allow_other:
            require_same(self.weights, weights, self.file, f"fitted for another model than {self.checkpoint}",
                         "fit one for this model with test.py --fit_mapping FILE, or pass --allow_other_mapping "
                         "(allow_other_mapping=True) to use it anyway")
        return None


def fit_mapping(scores: np.ndarray, raw_labels: np.ndarray, norm: LabelNorm, fitted_on: str,
                checkpoint: str | None, weights: dict[str, str] | None = None) -> Mapping:
    """The mapping of ``scores`` to ``raw_labels`` (normalised by ``norm``); refused in one line when the rising
    logistic does not fit (too few images, a backwards ranking, a step)."""
    scores = np.asarray(scores, np.float64)
    labels = norm.apply(np.asarray(raw_labels, np.float64))
    params = fit_logistic4(scores, labels)
    problem = logistic_fit_problem(scores, labels, params)
    if problem:
        raise AHIQError(f"{fitted_on}: no mapping fitted: {problem}")
    return Mapping(tuple(float(p) for p in params), norm, os.path.abspath(fitted_on), len(scores), checkpoint,
                   weights)


def load_mapping(path: str) -> Mapping:
    """A mapping :meth:`Mapping.save` wrote, checked as a checkpoint is: every field of its type, the logistic
    rising (b1 > b2, scale b4 > 0) and finite over any score a model gives (-1 to 2); anything else is refused in
    one line naming the file."""
    d = read_json(path, "a score mapping of this project", "fit one with test.py --fit_mapping FILE", FORMAT)
    problem, mapping = _field_problem(d), None
    norm = None if problem else LabelNorm.from_meta({"label_norm": d.get("label_norm")}, path)
    if not problem and norm is None:
        problem = "holds no label range"
    elif not problem:
        b1, b2, b3, b4 = (float(p) for p in d["params"])
        mapping = Mapping((b1, b2, b3, b4), norm, d["fitted_on"], d["n"], d.get("checkpoint"), d.get("weights"), path)
        with np.errstate(over="ignore", invalid="ignore"):
            if not (b1 > b2 and b4 > 0):
                problem = (f"params {d['params']} do not rise (need b1 > b2 and a scale b4 > 0): they would reverse or "
                           "flatten the scale")
            elif not np.isfinite(mapping(np.linspace(-1.0, 2.0, 61))).all():
                problem = f"params {d['params']} overflow (not finite) for scores between -1 and 2"
    if problem:
        raise AHIQError(f"{path}: {problem}; fit the mapping again with test.py --fit_mapping FILE")
    return mapping


FIELDS = {"params": (tuple[float, ...], 4, None), "n": (int, None, 1), "fitted_on": (str, None, None),
          "checkpoint": (str | None, None, None)}  # a mapping file's fields: type, list length, minimum


def _field_problem(d: dict) -> str | None:
    """What is wrong with the fields of a mapping file (the values' one checker, utils/values.py), or None."""
    for key, (hint, length, minimum) in FIELDS.items():
        problem = expected(hint, d.get(key), minimum=minimum, length=length)
        if problem:
            return f"{key} {d.get(key)!r}: expected {problem}"
    weights = d.get("weights")
    if not (weights is None or isinstance(weights, dict) and all(isinstance(v, str) for v in weights.values())):
        return f"weights {weights!r}: expected digests (an object of strings)"
    return None
