"""The negative-downsampling correction (He et al., "Practical Lessons from Predicting Clicks on
Ads at Facebook", ADKDD 2014, section 6.2).

A model trained on data whose negatives were kept with probability `w` (the negative sampling
rate) predicts `p` on the downsampled scale; the probability on the original scale is

    q = p / (p + (1 - p) / w).

Why: downsampling multiplies the odds by `1 / w`, so `q / (1 - q) = w * p / (1 - p)`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recolab.calibration._checks import probabilities, scalar


def downsampling_correction(p: Any, rate: float) -> np.ndarray:
    """(N,) probabilities from a model trained with negatives kept at `rate` -> (N,) original-scale probabilities."""
    _check_rate(rate)
    p = probabilities("p", p)
    return p / (p + (1.0 - p) / rate)


def _check_rate(rate: float) -> None:
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"the negative sampling rate must lie in (0, 1], got {rate}")


class DownsamplingCorrection:
    """The correction as a calibrator: nothing to fit, `correction(p)` returns `q`.

    Args:
        rate: w, the share of negatives kept in the training data.
    """

    kind = "downsampling"

    def __init__(self, rate: float) -> None:
        _check_rate(rate)
        self.rate = float(rate)

    fitted = True

    def fit(self, scores: Any = None, labels: Any = None) -> DownsamplingCorrection:
        """Nothing to learn: the rate is known from the data pipeline. Returns self."""
        return self

    def __call__(self, p: Any) -> np.ndarray:
        return downsampling_correction(p, self.rate)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "rate": np.array([self.rate])}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> DownsamplingCorrection:
        return cls(scalar(state, "rate", cls.kind))
