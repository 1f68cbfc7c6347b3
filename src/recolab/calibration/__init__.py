"""Calibration: post-hoc maps from a model's scores to probabilities that match observed rates.

    calibrator = IsotonicCalibrator().fit(val_scores, val_labels)   # returns itself
    test_probs = calibrator(test_scores)

- `IsotonicCalibrator`: pool adjacent violators (scikit-learn's `IsotonicRegression`).
- `PlattCalibrator`: logistic regression on the score's logit (Platt 1999).
- `downsampling_correction` / `DownsamplingCorrection`: `q = p / (p + (1 - p) / w)` for a model
  trained with negatives kept at rate `w` (He et al., ADKDD 2014).

Every calibrator saves to plain arrays (`state_dict()`, loadable by `from_state`, so it can sit
in a checkpoint read with `torch.load(weights_only=True)`) and to JSON (`save_json`,
`load_json`). Pure: this package imports nothing else from recolab.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from recolab.calibration.downsampling import DownsamplingCorrection, downsampling_correction
from recolab.calibration.isotonic import IsotonicCalibrator
from recolab.calibration.platt import PlattCalibrator

Calibrator = IsotonicCalibrator | PlattCalibrator | DownsamplingCorrection
KINDS = {c.kind: c for c in (IsotonicCalibrator, PlattCalibrator, DownsamplingCorrection)}

__all__ = [
    "Calibrator",
    "DownsamplingCorrection",
    "IsotonicCalibrator",
    "PlattCalibrator",
    "downsampling_correction",
    "from_state",
    "load_json",
    "save_json",
]


def from_state(state: dict[str, Any]) -> Calibrator:
    """A calibrator from its `state_dict()` (arrays may be numpy, lists or CPU tensors)."""
    kind = state.get("kind")
    if kind not in KINDS:
        raise ValueError(
            f"calibrator state: unknown kind {kind!r}; expected one of {sorted(KINDS)}"
        )
    return KINDS[kind].from_state(state)


def _plain(value: Any) -> Any:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def save_json(calibrators: dict[str, Calibrator], path: str | Path) -> Path:
    """Write `{name: calibrator}` (e.g. one per task) as JSON; returns the path."""
    path = Path(path)
    path.write_text(
        json.dumps(
            {k: {f: _plain(v) for f, v in c.state_dict().items()} for k, c in calibrators.items()},
            indent=1,
        )
    )
    return path


def load_json(path: str | Path) -> dict[str, Calibrator]:
    """Read what `save_json` wrote."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a calibrator file ({e})") from e
    return {name: from_state(state) for name, state in raw.items()}
