"""The one label normalisation: fitted on a label list, applied to train, inverted to report scores in its units.

The official normalisation is min-max over the list: ``(s - min) / (max - min)``. Lower-is-better labels (DMOS:
LIVE, CSIQ) are flipped first, ``(max - s) / (max - min)``, so a normalised score is always higher-is-better.
Checkpoints store it (``ckpt["ahiq"]["label_norm"]``) so predictions map back to the training labels' units.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from utils.errors import AHIQError


def require_scores(raw: np.ndarray | None, source: str, purpose: str, fix: str, minimum: int = 2,
                   vary: bool = True) -> None:
    """The one check that a list's scores serve ``purpose`` (training, validation, SRCC/PLCC, a fitted mapping): a
    score on every row, ``minimum`` rows or more and (``vary``) not all equal; else one line naming ``source``."""
    n = 0 if raw is None else len(raw)
    problem = ("has no scores" if raw is None else f"has {n} image(s) with a score" if n < minimum
               else f"every listed score is {raw[0]:g}" if vary and np.ptp(raw) == 0 else None)
    if problem:
        raise AHIQError(f"{source}: {problem}; {purpose} needs {minimum} or more scored images"
                        f"{' of different quality' if vary else ''}: {fix}")


@dataclass(frozen=True)
class LabelNorm:
    mos_min: float
    mos_max: float
    lower_better: bool = False

    def __post_init__(self) -> None:
        if not (np.isfinite(self.mos_min) and np.isfinite(self.mos_max) and np.isfinite(self.mos_max - self.mos_min)):
            raise AHIQError(f"label range {self.mos_min:g} to {self.mos_max:g}: not finite (labels beyond +-1e308 "
                            "overflow the range); rescale the labels", kind="label_range")
        if self.mos_min > self.mos_max:
            raise AHIQError(f"label range {self.mos_min:g} to {self.mos_max:g}: the lowest label is above the "
                            "highest; give it as LO HI (for DMOS, lower is better: use the label direction)",
                            kind="label_range")

    @classmethod
    def fit(cls, raw: np.ndarray, lower_better: bool = False) -> LabelNorm:
        raw = np.asarray(raw, dtype=np.float64)
        return cls(float(raw.min()), float(raw.max()), bool(lower_better))

    @property
    def span(self) -> float:
        return self.mos_max - self.mos_min

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Raw labels -> [0, 1] over the fitted range, higher is better (all zeros when every label is equal)."""
        raw = np.asarray(raw, dtype=np.float64)
        if self.span <= 0:
            return np.zeros_like(raw)
        return (self.mos_max - raw) / self.span if self.lower_better else (raw - self.mos_min) / self.span

    def invert(self, scores: np.ndarray) -> np.ndarray:
        """Normalised scores in the raw units of the training labels (DMOS stays DMOS)."""
        s = np.asarray(scores, dtype=np.float64)
        return self.mos_max - s * self.span if self.lower_better else self.mos_min + s * self.span

    def to_dict(self) -> dict[str, Any]:
        return {"method": "minmax", "mos_min": self.mos_min, "mos_max": self.mos_max,
                "lower_better": self.lower_better}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], source: str = "") -> LabelNorm | None:
        """From a checkpoint's ``ahiq`` metadata (also the older ``mos_min``/``mos_max`` entries); None if absent."""
        norm = meta.get("label_norm") or (meta if meta.get("mos_min") is not None else None)
        if not norm:
            return None
        result, problem = None, "expected numbers mos_min, mos_max, true/false lower_better and method minmax"
        if isinstance(norm, Mapping) and norm.get("method", "minmax") == "minmax":
            lo, hi, lower = norm.get("mos_min"), norm.get("mos_max"), norm.get("lower_better", False)
            if isinstance(lower, bool) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                               for v in (lo, hi)):
                try:
                    result = cls(float(lo), float(hi), lower)
                except AHIQError as err:  # not finite, or the lowest above the highest
                    problem = err.message
        if result is not None and result.span == 0:  # scores would all map to one MOS
            result, problem = None, f"its MOS range is {lo:g} to {hi:g}, no range at all"
        if result is None:
            raise AHIQError(f"label_norm {norm!r}: {problem}; give the training range with --mos_range LO HI / "
                            "mos_range=(lo, hi)", source=source)
        return result
