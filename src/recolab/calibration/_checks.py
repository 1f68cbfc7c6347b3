"""Input checks shared by the calibrators (numpy only: `recolab.calibration` imports nothing else from recolab)."""

from __future__ import annotations

from typing import Any

import numpy as np


def scores_1d(name: str, x: Any) -> np.ndarray:
    """`x` as a finite (N,) float64 array, or a ValueError that quotes its shape."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: {int((~np.isfinite(a)).sum())} non-finite value(s) (NaN or inf)")
    return a


def scores_and_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Finite (N,) scores and 0/1 labels of the same length, N >= 1."""
    s = scores_1d("scores", scores)
    y = scores_1d("labels", labels)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.shape} vs {y.shape}")
    if len(s) == 0:
        raise ValueError("cannot fit a calibrator on no rows")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(
            f"labels must be 0 or 1; got values such as {np.unique(y[~np.isin(y, (0.0, 1.0))])[:5]}"
        )
    return s, y


def probabilities(name: str, p: Any) -> np.ndarray:
    a = scores_1d(name, p)
    if ((a < 0) | (a > 1)).any():
        raise ValueError(f"{name} must lie in [0, 1]; got min {a.min():.4g}, max {a.max():.4g}")
    return a


def array(state: dict[str, Any], key: str, kind: str) -> np.ndarray:
    """A 1-D array field of a saved calibrator's state (numpy, list or CPU tensor)."""
    if key not in state:
        raise KeyError(f"{kind} calibrator state has no {key!r} (keys: {sorted(state)})")
    value = state[key]
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64).reshape(-1)


def scalar(state: dict[str, Any], key: str, kind: str) -> float:
    return float(array(state, key, kind)[0])
