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
from utils.files import atomic_write, read_text
from utils.metrics import fit_logistic4, logistic4, logistic_fit_problem

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

    @property
    def units(self) -> str:
        direction = "DMOS, lower is better" if self.norm.lower_better else "MOS, higher is better"
        return f"{os.path.basename(self.fitted_on)} {direction}, {self.norm.mos_min:g} to {self.norm.mos_max:g}"

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        return self.norm.invert(logistic4(np.asarray(scores, np.float64), *self.params))

    def save(self, path: str) -> None:
        atomic_write(path, json.dumps({"format": FORMAT, "params": list(self.params), "label_norm": self.norm.to_dict(),
                                       "fitted_on": self.fitted_on, "n": self.n, "checkpoint": self.checkpoint},
                                      indent=2))


def fit_mapping(scores: np.ndarray, raw_labels: np.ndarray, norm: LabelNorm, fitted_on: str,
                checkpoint: str | None) -> Mapping:
    """The mapping of ``scores`` to ``raw_labels`` (normalised by ``norm``); refused in one line when the rising
    logistic does not fit (too few images, a backwards ranking, a step)."""
    scores = np.asarray(scores, np.float64)
    labels = norm.apply(np.asarray(raw_labels, np.float64))
    params = fit_logistic4(scores, labels)
    problem = logistic_fit_problem(scores, labels, params)
    if problem:
        raise AHIQError(f"{fitted_on}: no mapping fitted: {problem}")
    return Mapping(tuple(float(p) for p in params), norm, os.path.abspath(fitted_on), len(scores), checkpoint)


def load_mapping(path: str) -> Mapping:
    """A mapping :meth:`Mapping.save` wrote; anything else is refused in one line naming the file."""
    try:
        d = json.loads(read_text(path))
    except (AHIQError, ValueError) as err:
        raise AHIQError(f"{path}: cannot be read as a score mapping ({err}); fit one with test.py --fit_mapping "
                        "FILE") from None
    ok = isinstance(d, dict) and d.get("format") == FORMAT and isinstance(d.get("params"), list) \
        and len(d["params"]) == 4 and all(isinstance(p, (int, float)) and np.isfinite(p) for p in d["params"])
    if not ok:
        raise AHIQError(f"{path}: not a score mapping of this project (format {FORMAT}); fit one with test.py "
                        "--fit_mapping FILE")
    norm = LabelNorm.from_meta({"label_norm": d.get("label_norm")}, path)
    if norm is None:
        raise AHIQError(f"{path}: holds no label range; fit the mapping again with test.py --fit_mapping FILE")
    return Mapping(tuple(float(p) for p in d["params"]), norm, str(d.get("fitted_on")), int(d.get("n", 0)),
                   d.get("checkpoint"))
