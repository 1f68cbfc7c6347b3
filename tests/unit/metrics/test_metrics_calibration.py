"""ECE, the reliability table and the predicted/observed ratio against a per-bin loop."""

from __future__ import annotations

import numpy as np
import pytest

from recolab.metrics import ece, predicted_observed_ratio, reliability_table


def reference_ece(y, p, num_bins):
    """Sorted rows cut into near-equal bins; each row's label is the mean label of all rows
    with its probability (an O(N^2) loop), so tied rows share their labels."""
    shared = np.array(
        [np.mean([y[j] for j in range(len(p)) if p[j] == p[i]]) for i in range(len(p))]
    )
    order = np.argsort(p, kind="stable")
    total = 0.0
    for idx in np.array_split(order, num_bins):
        if len(idx):
            total += len(idx) / len(p) * abs(shared[idx].mean() - p[idx].mean())
    return total


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("num_bins", [1, 7, 15])
def test_ece_matches_per_bin_loop(seed, num_bins):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 500))
    p = rng.random(n)
    if seed % 2:
        p = np.round(p, 1)  # ties straddle bins
    y = (rng.random(n) < p**2).astype(int)
    assert ece(y, p, num_bins=num_bins) == pytest.approx(reference_ece(y, p, num_bins), abs=1e-12)


@pytest.mark.parametrize("num_bins", [2, 7, 15])
def test_ece_and_the_table_do_not_depend_on_the_order_of_tied_rows(num_bins):
    """Rows gathered from DDP ranks come in another order than on one process; heavily tied
    predictions (rounded, isotonic-calibrated) must give the same ECE and table either way."""
    rng = np.random.default_rng(num_bins)
    p = np.round(rng.random(301), 1)
    y = (rng.random(301) < p).astype(int)
    want = reliability_table(y, p, num_bins=num_bins)
    for _ in range(5):
        perm = rng.permutation(301)
        got = reliability_table(y[perm], p[perm], num_bins=num_bins)
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-12)
        assert ece(y[perm], p[perm], num_bins=num_bins) == pytest.approx(
            ece(y, p, num_bins=num_bins), abs=1e-12
        )
    # the smallest case: four rows at 0.5, two bins; the tie's two positives are shared out
    assert (
        ece([1, 1, 0, 0], [0.5] * 4, num_bins=2) == ece([0, 1, 0, 1], [0.5] * 4, num_bins=2) == 0.0
    )


def test_reliability_table_is_consistent_with_ece():
    rng = np.random.default_rng(1)
    p = rng.random(1003)
    y = (rng.random(1003) < p).astype(int)
    t = reliability_table(y, p, num_bins=10)
    assert set(t) == {"bin_lower", "bin_upper", "mean_prob", "observed_rate", "count"}
    assert t["count"].sum() == 1003 and t["count"].max() - t["count"].min() <= 1
    assert np.all(t["bin_lower"] <= t["mean_prob"]) and np.all(t["mean_prob"] <= t["bin_upper"])
    assert np.all(np.diff(t["bin_lower"]) >= 0) and np.all(
        t["bin_upper"][:-1] <= t["bin_lower"][1:]
    )
    gaps = np.abs(t["observed_rate"] - t["mean_prob"])
    assert ece(y, p, num_bins=10) == pytest.approx(np.sum(t["count"] / 1003 * gaps))


def test_fewer_rows_than_bins_drops_empty_bins():
    t = reliability_table([0, 1, 1], [0.2, 0.9, 0.5], num_bins=15)
    np.testing.assert_array_equal(t["count"], [1, 1, 1])
    np.testing.assert_allclose(t["mean_prob"], [0.2, 0.5, 0.9])
    assert ece([0, 1, 1], [0.2, 0.9, 0.5]) == pytest.approx((0.2 + 0.5 + 0.1) / 3)


def test_predicted_observed_ratio():
    assert predicted_observed_ratio([1, 0, 0, 1], [0.5, 0.5, 0.25, 0.75]) == 1.0
    with pytest.raises(ValueError, match="positive label"):
        predicted_observed_ratio([0, 0], [0.1, 0.2])


@pytest.mark.parametrize("fn", [ece, reliability_table, predicted_observed_ratio])
def test_input_errors(fn):
    with pytest.raises(ValueError, match=r"labels \(3,\).*probs \(2,\)"):
        fn(np.array([0, 1, 0]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="empty"):
        fn(np.array([]), np.array([]))
    with pytest.raises(ValueError, match="1 NaN"):
        fn(np.array([0, 1]), np.array([np.nan, 0.2]))
    with pytest.raises(ValueError, match=r"\[0, 1\].*1 values outside"):
        fn(np.array([0, 1]), np.array([0.5, 1.2]))
    with pytest.raises(ValueError, match="0 or 1"):
        fn(np.array([0, 2]), np.array([0.5, 0.2]))


def test_num_bins_must_be_positive():
    with pytest.raises(ValueError, match="num_bins"):
        ece([0, 1], [0.1, 0.2], num_bins=0)
