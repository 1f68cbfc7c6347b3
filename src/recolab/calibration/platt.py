"""Platt scaling (Platt, "Probabilistic Outputs for Support Vector Machines and Comparisons to
Regularized Likelihood Methods", 1999): a logistic regression on one input, the model's score,
`q = sigmoid(a * s + b)`.

As in the paper, the 0/1 labels are replaced by the smoothed targets `(N+ + 1) / (N+ + 2)` and
`1 / (N- + 2)`, which keeps `a` and `b` finite on separable data. `s` is the logit of the
predicted probability (`input="probability"`, the default) or the raw score itself
(`input="score"`). The two parameters are fitted by Newton's method on the log likelihood.
A calibrator must never reverse the model's order, so `a` is constrained to be >= 0: if the best
unconstrained slope is negative, `a = 0` and `q` is the (smoothed) base rate.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from recolab.calibration._checks import probabilities, scalar, scores_1d, scores_and_labels
from recolab.params import Count, checked

EPS = 1e-7


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free


class PlattCalibrator:
    """`PlattCalibrator().fit(scores, labels)` returns itself; `calibrator(scores)` returns probabilities.

    Args:
        input: `probability` (scores are probabilities; the fit is on their logit) or `score`
            (scores are used as they are, e.g. logits or margins).
        max_iter: Newton steps at most.
    """

    kind = "platt"

    @checked
    def __init__(
        self, *, input: Literal["probability", "score"] = "probability", max_iter: Count = 100
    ) -> None:
        self.input = input
        self.max_iter = max_iter
        self.a: float | None = None
        self.b: float | None = None

    @property
    def fitted(self) -> bool:
        return self.a is not None

    def _features(self, scores: Any) -> np.ndarray:
        if self.input == "probability":
            return _logit(probabilities("scores", scores))
        return scores_1d("scores", scores)

    def fit(self, scores: Any, labels: Any) -> PlattCalibrator:
        """Fit on (N,) scores and (N,) 0/1 labels; returns self."""
        s, y = scores_and_labels(scores, labels)
        x = self._features(s)
        n_pos = float(y.sum())
        n_neg = float(len(y) - n_pos)
        t = np.where(y == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
        a, b = self._newton(x, t, fit_slope=True)
        if a < 0:
            a, b = self._newton(x, t, fit_slope=False)
        self.a, self.b = float(a), float(b)
        return self

    def _newton(self, x: np.ndarray, t: np.ndarray, *, fit_slope: bool) -> tuple[float, float]:
        """Maximize sum t log q + (1 - t) log(1 - q) over (a, b), or over b alone with a = 0."""
        tm = float(t.mean())
        theta = np.array([0.0, np.log(tm) - np.log1p(-tm)])  # start at the base rate
        design = np.stack([x, np.ones_like(x)], axis=1)  # (N, 2)
        if not fit_slope:
            return 0.0, float(theta[1])
        for _ in range(self.max_iter):
            q = _sigmoid(design @ theta)
            grad = design.T @ (t - q)  # (2,)
            w = q * (1.0 - q)
            hess = (design * w[:, None]).T @ design + 1e-10 * np.eye(
                2
            )  # (2, 2), negative log-lik Hessian
            step = np.linalg.solve(hess, grad)
            # Halve the step until the log likelihood does not fall (Newton can overshoot).
            ll = _loglik(design @ theta, t)
            scale = 1.0
            while scale > 1e-6 and _loglik(design @ (theta + scale * step), t) < ll - 1e-12:
                scale *= 0.5
            theta = theta + scale * step
            if np.abs(scale * step).max() < 1e-10:
                break
        return float(theta[0]), float(theta[1])

    def __call__(self, scores: Any) -> np.ndarray:
        """(N,) scores -> (N,) calibrated probabilities."""
        if not self.fitted:
            raise RuntimeError("PlattCalibrator is not fitted: call fit(scores, labels) first")
        return _sigmoid(self.a * self._features(scores) + self.b)

    def state_dict(self) -> dict[str, Any]:
        if not self.fitted:
            raise RuntimeError("PlattCalibrator is not fitted: nothing to save")
        return {
            "kind": self.kind,
            "input": self.input,
            "a": np.array([self.a]),
            "b": np.array([self.b]),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PlattCalibrator:
        out = cls(input=str(state.get("input", "probability")))
        out.a, out.b = scalar(state, "a", cls.kind), scalar(state, "b", cls.kind)
        return out


def _loglik(z: np.ndarray, t: np.ndarray) -> float:
    # log sigmoid(z) = -softplus(-z); log(1 - sigmoid(z)) = -softplus(z)
    return float(-(t * np.logaddexp(0.0, -z) + (1.0 - t) * np.logaddexp(0.0, z)).sum())
