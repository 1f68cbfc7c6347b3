"""Calibrators: monotone, tie-aware, clipped outside the fitted range, saved and loaded exactly;
the downsampling correction recovers the true rate."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from recolab.calibration import (
    DownsamplingCorrection,
    IsotonicCalibrator,
    PlattCalibrator,
    downsampling_correction,
    from_state,
    load_json,
    save_json,
)


def miscalibrated(n: int = 5000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores that rank well but overstate the rate: true p = s ** 2."""
    rng = np.random.default_rng(seed)
    s = rng.random(n)
    p = s**2
    return s, (rng.random(n) < p).astype(float), p


CALIBRATORS = [IsotonicCalibrator, PlattCalibrator]


@pytest.mark.parametrize("make", CALIBRATORS)
def test_fit_returns_self_and_outputs_are_probabilities(make) -> None:
    s, y, _ = miscalibrated()
    cal = make()
    assert cal.fit(s, y) is cal
    q = cal(s)
    assert q.shape == s.shape and ((q >= 0) & (q <= 1)).all()


@pytest.mark.parametrize("make", CALIBRATORS)
def test_calibrated_scores_are_non_decreasing_in_the_raw_scores(make) -> None:
    s, y, _ = miscalibrated()
    cal = make().fit(s, y)
    grid = np.sort(np.concatenate([s, np.linspace(-0.0, 1.0, 1001)]))
    assert (np.diff(cal(grid)) >= 0).all()


@pytest.mark.parametrize("make", CALIBRATORS)
def test_calibration_lowers_the_error_against_the_true_rate(make) -> None:
    s, y, p = miscalibrated(20000)
    cal = make().fit(s, y)
    s2, _, p2 = miscalibrated(20000, seed=1)
    before = np.abs(s2 - p2).mean()
    after = np.abs(cal(s2) - p2).mean()
    assert after < 0.3 * before, (before, after)


def test_platt_never_reverses_the_order() -> None:
    # Scores anti-correlated with the labels: the best non-decreasing Platt map is the base rate.
    rng = np.random.default_rng(0)
    s = rng.random(2000)
    y = (rng.random(2000) < 1 - s).astype(float)
    cal = PlattCalibrator().fit(s, y)
    assert cal.a == 0.0
    q = cal(s)
    assert np.allclose(q, q[0]) and abs(q[0] - y.mean()) < 0.01


def test_isotonic_matches_scikit_learn_and_pools_ties() -> None:
    rng = np.random.default_rng(3)
    s = rng.integers(0, 20, size=3000) / 20.0  # many tied scores
    y = (rng.random(3000) < s).astype(float)
    cal = IsotonicCalibrator().fit(s, y)
    ref = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(s, y)
    np.testing.assert_allclose(cal(s), ref.predict(s))
    # Equal scores get one probability: the pooled label mean of their block (or of the
    # violator block it was merged into, which is then constant across that block too).
    for v in np.unique(s):
        assert np.ptp(cal(s[s == v])) == 0
    # A tie block that is not merged with a neighbour gets exactly its own label mean.
    s2 = np.array([0.1, 0.1, 0.1, 0.5, 0.5, 0.9, 0.9, 0.9, 0.9])
    y2 = np.array([0, 0, 1, 0, 1, 1, 1, 1, 0], dtype=float)
    q = IsotonicCalibrator().fit(s2, y2)(np.array([0.1, 0.5, 0.9]))
    np.testing.assert_allclose(q, [1 / 3, 1 / 2, 3 / 4])


def test_isotonic_clips_scores_outside_the_fitted_range() -> None:
    s = np.array([0.2, 0.3, 0.4, 0.6, 0.7, 0.8])
    y = np.array([0, 0, 1, 0, 1, 1], dtype=float)
    cal = IsotonicCalibrator().fit(s, y)
    low, high = cal(np.array([0.2])), cal(np.array([0.8]))
    np.testing.assert_allclose(cal(np.array([-5.0, 0.0, 0.19])), np.repeat(low, 3))
    np.testing.assert_allclose(cal(np.array([0.81, 1.0, 7.0])), np.repeat(high, 3))


def test_isotonic_with_a_single_distinct_score() -> None:
    cal = IsotonicCalibrator().fit(
        np.full(10, 0.3), np.array([1, 0, 0, 0, 1, 0, 0, 0, 0, 0], dtype=float)
    )
    np.testing.assert_allclose(cal(np.array([0.0, 0.3, 0.9])), [0.2, 0.2, 0.2])


def test_platt_on_logit_recovers_a_known_map() -> None:
    # Labels drawn from sigmoid(2 * logit(p) - 1): Platt should find a = 2, b = -1.
    rng = np.random.default_rng(0)
    p = rng.uniform(0.02, 0.98, size=200_000)
    z = np.log(p / (1 - p))
    y = (rng.random(len(p)) < 1 / (1 + np.exp(-(2 * z - 1)))).astype(float)
    cal = PlattCalibrator().fit(p, y)
    assert cal.a == pytest.approx(2.0, abs=0.05) and cal.b == pytest.approx(-1.0, abs=0.05)


@pytest.mark.parametrize(
    "make", [IsotonicCalibrator, PlattCalibrator, lambda: DownsamplingCorrection(0.1)]
)
def test_saved_calibrator_loads_back_and_gives_the_same_outputs(make, tmp_path: Path) -> None:
    s, y, _ = miscalibrated()
    cal = make().fit(s, y)
    grid = np.linspace(-0.5, 1.5, 301).clip(0, 1)
    again = from_state(cal.state_dict())
    np.testing.assert_array_equal(again(grid), cal(grid))
    path = save_json({"click": cal}, tmp_path / "calibration.json")
    loaded = load_json(path)["click"]
    assert type(loaded) is type(cal)
    np.testing.assert_array_equal(loaded(grid), cal(grid))


def test_state_dict_holds_only_plain_arrays_and_strings() -> None:
    torch = pytest.importorskip("torch")
    s, y, _ = miscalibrated()
    cal = IsotonicCalibrator().fit(s, y)
    state = {
        k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
        for k, v in cal.state_dict().items()
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)  # no pickled objects
    np.testing.assert_array_equal(from_state(loaded)(s), cal(s))


def test_downsampling_correction_recovers_the_true_rate() -> None:
    rng = np.random.default_rng(0)
    n, w = 400_000, 0.05
    bucket = rng.integers(0, 5, size=n)
    true_rate = np.array([0.002, 0.01, 0.03, 0.1, 0.3])
    y = rng.random(n) < true_rate[bucket]
    keep = y | (rng.random(n) < w)  # every positive, negatives at rate w
    # The best model on the downsampled data predicts each bucket's downsampled rate.
    p_ds = np.array([y[keep & (bucket == b)].mean() for b in range(5)])
    assert (p_ds > 2 * true_rate).all()  # downsampling inflates every rate
    q = downsampling_correction(p_ds, w)
    np.testing.assert_allclose(q, true_rate, rtol=0.1)
    np.testing.assert_allclose(DownsamplingCorrection(w).fit()(p_ds), q)
    np.testing.assert_allclose(downsampling_correction(p_ds, 1.0), p_ds)  # w = 1: nothing changes


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: IsotonicCalibrator().fit(np.zeros(3), np.array([0, 1, 2])),
            "labels must be 0 or 1",
        ),
        (lambda: IsotonicCalibrator().fit(np.zeros(3), np.zeros(4)), "differ in length"),
        (lambda: IsotonicCalibrator().fit(np.array([0.1, np.nan]), np.zeros(2)), "non-finite"),
        (
            lambda: IsotonicCalibrator().fit(np.zeros((2, 2)), np.zeros(2)),
            r"1-D, got shape \(2, 2\)",
        ),
        (lambda: IsotonicCalibrator()(np.zeros(3)), "not fitted"),
        (
            lambda: PlattCalibrator().fit(np.array([0.5, 1.5]), np.array([0, 1])),
            r"must lie in \[0, 1\]",
        ),
        (
            lambda: PlattCalibrator(input="logits"),
            "input='logits': expected one of 'probability' or 'score'",
        ),
        (lambda: downsampling_correction(np.array([0.5]), 0.0), r"rate must lie in \(0, 1\]"),
        (lambda: from_state({"kind": "spline"}), "unknown kind 'spline'"),
        (lambda: from_state({"kind": "isotonic", "x": [0.1]}), "no 'y'"),
    ],
)
def test_bad_input_fails_with_a_clear_error(call, match: str) -> None:
    with pytest.raises((ValueError, RuntimeError, KeyError), match=match):
        call()
