"""Calibration of predicted probabilities: ECE with equal-mass bins, the reliability table, and
the predicted/observed ratio.

Equal-mass bins: rows are sorted by probability and cut into `num_bins` consecutive bins whose
sizes differ by at most one, the first `N % num_bins` bins holding one row more
(`np.array_split`). With fewer rows than bins, the empty bins are dropped. A run of tied
probabilities may straddle two bins; its rows share its labels (each counts as the run's mean
label in the observed rates), so each bin gets its share of the run's positives however the tied
rows happen to be ordered. Every value is then a function of the (label, probability) pairs
alone, not of their order: the same whether the rows come from one process or are gathered from
several DDP ranks (rounded or isotonic-calibrated predictions tie a lot).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recolab.metrics import _checks as C

#: The equal-mass bins of every ECE and reliability table recolab logs or reports.
ECE_BINS = 15


def _check_inputs(labels: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    y, p = C.finite_pair(("labels", "probs"), labels, probs)
    C.check_unit_interval("probs", p)
    return C.check_binary("labels", y), p.astype(np.float64)


def reliability_table(
    labels: Any, probs: Any, *, num_bins: int = ECE_BINS
) -> dict[str, np.ndarray]:
    """Per equal-mass bin: the probability range, mean probability, observed rate and count.

    Args:
        labels: (N,) 0/1 labels.
        probs: (N,) predicted probabilities in [0, 1].
        num_bins: how many equal-mass bins (see the module docstring).

    Returns:
        A dict of (B,) arrays, B = min(num_bins, N): `bin_lower` and `bin_upper` (the smallest and
        largest probability in the bin), `mean_prob`, `observed_rate` (mean label, tied rows
        sharing their labels) and `count` (int64 rows).

    Raises:
        ValueError: on mismatched or non-1-D shapes, empty input, NaN or inf, labels other than
            0/1, probabilities outside [0, 1], or num_bins < 1.
    """
    if isinstance(num_bins, bool) or int(num_bins) != num_bins or num_bins < 1:
        raise ValueError(f"num_bins must be a positive integer, got {num_bins!r}")
    y, p = _check_inputs(labels, probs)
    n = p.shape[0]
    order = np.argsort(p)
    p, y = p[order], y[order]
    _, ties, tied = np.unique(p, return_index=True, return_counts=True)  # runs of equal p
    shared = np.repeat(np.add.reduceat(y, ties, dtype=np.int64) / tied, tied)  # run's mean label
    bins = min(int(num_bins), n)
    count = np.full(bins, n // bins, dtype=np.int64)
    count[: n % bins] += 1
    start = np.cumsum(count) - count  # (B,)
    return {
        "bin_lower": p[start],
        "bin_upper": p[start + count - 1],
        "mean_prob": np.add.reduceat(p, start) / count,
        "observed_rate": np.add.reduceat(shared, start) / count,
        "count": count,
    }


def ece(labels: Any, probs: Any, *, num_bins: int = ECE_BINS) -> float:
    """Expected calibration error with equal-mass bins.

    `sum_b (n_b / N) |observed_rate_b - mean_prob_b|` over the bins of `reliability_table`;
    every row weighs the same.

    Args:
        labels: (N,) 0/1 labels.
        probs: (N,) predicted probabilities in [0, 1].
        num_bins: how many equal-mass bins.

    Returns:
        The ECE in [0, 1].

    Raises:
        ValueError: as `reliability_table`.
    """
    table = reliability_table(labels, probs, num_bins=num_bins)
    weight = table["count"] / table["count"].sum()
    return float(np.sum(weight * np.abs(table["observed_rate"] - table["mean_prob"])))


def predicted_observed_ratio(labels: Any, probs: Any) -> float:
    """Sum of predicted probabilities over the number of positives (1 when calibrated on average).

    Args:
        labels: (N,) 0/1 labels.
        probs: (N,) predicted probabilities in [0, 1].

    Returns:
        `sum(probs) / sum(labels)`.

    Raises:
        ValueError: on mismatched or non-1-D shapes, empty input, NaN or inf, labels other than
            0/1, probabilities outside [0, 1], or no positive label.
    """
    y, p = _check_inputs(labels, probs)
    positives = int(np.count_nonzero(y))
    if positives == 0:
        raise ValueError(f"predicted_observed_ratio needs a positive label, got none in {y.shape}")
    return float(p.sum() / positives)
