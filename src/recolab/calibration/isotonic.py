"""Isotonic calibration (Zadrozny and Elkan, "Transforming classifier scores into accurate
multiclass probability estimates", KDD 2002): the non-decreasing step function of the raw score
that best fits the labels in squared error, found by pool adjacent violators (scikit-learn's
`IsotonicRegression`).

Tied raw scores are pooled before fitting (scikit-learn averages their labels), so equal scores
always get equal probabilities. Between fitted thresholds the map is linear; scores below the
lowest or above the highest fitted score get the value at that end (`out_of_bounds="clip"`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.isotonic import IsotonicRegression

from recolab.calibration._checks import array, scores_1d, scores_and_labels


class IsotonicCalibrator:
    """`IsotonicCalibrator().fit(scores, labels)` returns itself; `calibrator(scores)` returns probabilities.

    The fitted map is kept as two plain arrays (thresholds and their values), so it saves and
    loads without pickling (`state_dict`, `from_state`).
    """

    kind = "isotonic"

    def __init__(self) -> None:
        self.x: np.ndarray | None = None  # (M,) increasing raw-score thresholds
        self.y: np.ndarray | None = None  # (M,) non-decreasing probabilities at the thresholds

    @property
    def fitted(self) -> bool:
        return self.x is not None

    def fit(self, scores: Any, labels: Any, sample_weight: Any = None) -> IsotonicCalibrator:
        """Fit on (N,) raw scores and (N,) 0/1 labels; returns self."""
        s, y = scores_and_labels(scores, labels)
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        iso.fit(s, y, sample_weight=sample_weight)
        self.x = np.asarray(iso.X_thresholds_, dtype=np.float64)
        self.y = np.asarray(iso.y_thresholds_, dtype=np.float64)
        return self

    def __call__(self, scores: Any) -> np.ndarray:
        """(N,) raw scores -> (N,) calibrated probabilities (clipped to the fitted range)."""
        if not self.fitted:
            raise RuntimeError("IsotonicCalibrator is not fitted: call fit(scores, labels) first")
        s = scores_1d("scores", scores)
        if len(self.x) == 1:  # every fitted score was the same: one pooled rate
            return np.full(s.shape, self.y[0])
        return np.interp(s, self.x, self.y)  # linear between thresholds, clipped at both ends

    def state_dict(self) -> dict[str, Any]:
        if not self.fitted:
            raise RuntimeError("IsotonicCalibrator is not fitted: nothing to save")
        return {"kind": self.kind, "x": self.x.copy(), "y": self.y.copy()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> IsotonicCalibrator:
        out = cls()
        out.x, out.y = array(state, "x", cls.kind), array(state, "y", cls.kind)
        if out.x.shape != out.y.shape or len(out.x) == 0:
            raise ValueError(
                f"isotonic calibrator state: x and y must be non-empty and equal in length, got {out.x.shape} and {out.y.shape}"
            )
        if (np.diff(out.x) < 0).any() or (np.diff(out.y) < 0).any():
            raise ValueError("isotonic calibrator state: x and y must be non-decreasing")
        return out
