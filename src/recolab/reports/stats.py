"""Uncertainty of metrics and of differences between configurations: pure numpy and scipy.

Two sources of noise, two kinds of interval:

- **over seeds** (training noise): a configuration's mean over its seeds gets a Student t
  interval; the difference from a baseline gets a paired t-test over seeds when both ran the same
  seeds, else Welch's t-test (`seed_difference`).
- **over users** (test-set noise): a metric that is a weighted mean of per-user values (GAUC,
  XGAUC, recall@K, NDCG@K) gets a percentile bootstrap over users (`bootstrap_interval`); the
  difference of two configurations gets a paired bootstrap (`paired_bootstrap`): users are
  resampled with replacement, the same resample for both configurations and for every seed pair,
  so the user-to-user spread that both share cancels, and seeds are pooled by averaging the
  seed pairs' differences.

The bootstrap draws resamples as count matrices (B, U) and reduces them with one matrix product
per block of resamples, so thousands of resamples of thousands of users take milliseconds.
Holm's step-down adjustment corrects p-values across the configurations compared with one
baseline (`holm`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

LEVEL = 0.95
#: Bootstrap resamples (B) unless a caller asks for another number.
BOOTSTRAP_SAMPLES = 2000
_BLOCK_CELLS = 1 << 22  # resamples x users drawn at once (32 MiB of float64)


@dataclass(frozen=True)
class Summary:
    """A configuration's metric over its seeds: mean, sample std (ddof=1), n, t interval."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Difference:
    """A configuration minus the baseline: the difference, its interval, a two-sided p-value.

    `n` counts the units the test ran over: seed pairs (paired t), seeds of the configuration and
    of the baseline (`n`, `n_baseline`; Welch), or users (bootstrap, with `pairs` seed pairs).
    """

    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    method: str
    n: int
    n_baseline: int | None = None
    pairs: int | None = None


def _nan_difference(method: str, n: int = 0) -> Difference:
    nan = float("nan")
    return Difference(nan, nan, nan, nan, method, n)


def t_summary(values: np.ndarray, level: float = LEVEL) -> Summary:
    """Mean, sample std and the Student t interval `mean +- t_{n-1} s / sqrt(n)` (nan if n < 2)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[~np.isnan(x)]
    n = int(x.size)
    if n == 0:
        nan = float("nan")
        return Summary(0, nan, nan, nan, nan)
    mean = float(x.mean())
    if n < 2:
        return Summary(n, mean, float("nan"), float("nan"), float("nan"))
    std = float(x.std(ddof=1))
    half = float(sps.t.ppf(0.5 + level / 2, n - 1)) * std / np.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def _t_test(diff: float, se: float, df: float, level: float) -> tuple[float, float, float]:
    """(low, high, p) of a t statistic `diff / se` with `df` degrees of freedom."""
    if se == 0:  # every seed moved by exactly the same amount: no spread to test against
        return diff, diff, 1.0 if diff == 0 else 0.0
    half = float(sps.t.ppf(0.5 + level / 2, df)) * se
    p = float(2 * sps.t.sf(abs(diff / se), df))
    return diff - half, diff + half, p


def paired_t(a: np.ndarray, b: np.ndarray, level: float = LEVEL) -> Difference:
    """Paired t-test of `a - b` over matched units (seeds); nan if fewer than two pairs."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = int(d.size)
    method = f"paired t over {n} seeds"
    if n < 2:
        return _nan_difference(method, n)
    diff = float(d.mean())
    low, high, p = _t_test(diff, float(d.std(ddof=1)) / np.sqrt(n), n - 1, level)
    return Difference(diff, low, high, p, method, n, n, n)


def welch_t(a: np.ndarray, b: np.ndarray, level: float = LEVEL) -> Difference:
    """Welch's unequal-variance t-test of mean(a) - mean(b); nan if either has fewer than 2."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    na, nb = int(x.size), int(y.size)
    method = f"Welch t over seeds ({na} vs {nb})"
    if na < 2 or nb < 2:
        return Difference(*[float("nan")] * 4, method, na, nb)
    va, vb = x.var(ddof=1) / na, y.var(ddof=1) / nb
    diff = float(x.mean() - y.mean())
    se = float(np.sqrt(va + vb))
    df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1)) if se > 0 else na + nb - 2
    low, high, p = _t_test(diff, se, float(df), level)
    return Difference(diff, low, high, p, method, na, nb)


def seed_difference(a: dict[str, float], b: dict[str, float], level: float = LEVEL) -> Difference:
    """A configuration's values by seed against the baseline's: paired t where both ran exactly
    the same seeds (two or more), Welch's t-test otherwise."""
    if len(a) >= 2 and set(a) == set(b):
        seeds = sorted(a)
        return paired_t([a[s] for s in seeds], [b[s] for s in seeds], level)
    return welch_t(list(a.values()), list(b.values()), level)


def _counts(rng: np.random.Generator, samples: int, users: int) -> np.ndarray:
    """(samples, users) float64: how often each user is drawn in each resample of `users` users."""
    draws = rng.integers(0, users, size=(samples, users))  # (B, U)
    draws += np.arange(samples)[:, None] * users
    return (
        np.bincount(draws.ravel(), minlength=samples * users)
        .reshape(samples, users)
        .astype(np.float64)
    )


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _prepare(values: np.ndarray, weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(S, U) values with nan -> 0 and weights with 0 where the value is nan (left out)."""
    v = np.atleast_2d(np.asarray(values, dtype=np.float64))
    w = np.ones_like(v) if weights is None else np.atleast_2d(np.asarray(weights, np.float64))
    if w.shape != v.shape:
        raise ValueError(f"values {v.shape} and weights {w.shape} must have the same shape")
    missing = np.isnan(v) | np.isnan(w)
    return np.where(missing, 0.0, v), np.where(missing, 0.0, w)


def _boot_means(
    parts: list[tuple[np.ndarray, np.ndarray]], samples: int, seed: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Full-sample and resampled weighted means of each (values, weights) part, per seed pair.

    Every part is (S, U) over the same users; returns the (len(parts), S) full-sample means and,
    per part, the (B, S) bootstrap means (nan where a resample holds no weight for a pair).
    """
    users = parts[0][0].shape[1]
    rng = np.random.default_rng(seed)
    cols = np.concatenate([np.concatenate([w * v, w]) for v, w in parts]).T  # (U, 2 P S)
    full = cols.sum(axis=0)
    block = max(1, _BLOCK_CELLS // max(users, 1))
    boots = []
    for start in range(0, samples, block):
        counts = _counts(rng, min(block, samples - start), users)  # (b, U)
        boots.append(counts @ cols)  # (b, 2 P S)
    boot = np.concatenate(boots)  # (B, 2 P S)
    s = parts[0][0].shape[0]
    full_means = np.stack(
        [
            _ratio(full[2 * i * s : (2 * i + 1) * s], full[(2 * i + 1) * s : (2 * i + 2) * s])
            for i in range(len(parts))
        ]
    )
    boot_means = [
        _ratio(boot[:, 2 * i * s : (2 * i + 1) * s], boot[:, (2 * i + 1) * s : (2 * i + 2) * s])
        for i in range(len(parts))
    ]
    return full_means, boot_means


def _percentiles(stat: np.ndarray, level: float) -> tuple[float, float]:
    ok = stat[~np.isnan(stat)]
    if ok.size == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(ok, [0.5 - level / 2, 0.5 + level / 2])
    return float(low), float(high)


def bootstrap_interval(
    values: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> tuple[float, float]:
    """Percentile bootstrap interval over users of the weighted mean `sum(w v) / sum(w)`.

    Args:
        values: (U,) per-user values; nan where a user is left out of the metric.
        weights: (U,) per-user weights (None: every user the same).
        samples: bootstrap resamples B.
        seed: seeds the resampling, so a report is the same every time it is written.
        level: the interval's coverage.

    Returns:
        (low, high); nan if no user has a value.
    """
    v, w = _prepare(values, weights)
    if not (w > 0).any():
        return float("nan"), float("nan")
    _, (boot,) = _boot_means([(v, w)], samples, seed)
    return _percentiles(boot[:, 0], level)


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    weights_a: np.ndarray | None = None,
    weights_b: np.ndarray | None = None,
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> Difference:
    """Paired bootstrap over users of `mean_a - mean_b`, pooled over seed pairs.

    Rows are seed pairs (a run of the configuration and a run of the baseline with the same
    seed), columns the users (the union over pairs, joined on user id; nan where a user is absent
    from a pair or left out of the metric). One resample of the users, with replacement, is
    applied to both configurations and to every pair; the statistic is the mean over pairs of
    the difference of weighted means `sum(w v) / sum(w)`. The interval is the resamples'
    percentile interval, and the two-sided p-value `2 min(P*(d <= 0), P*(d >= 0))` (each
    share counted as (1 + k) / (1 + B)) inverts it: p < 1 - level where the interval leaves
    out 0, up to the resolution of B.

    Args:
        a, b: (S, U) or (U,) per-user values of the configuration and of the baseline.
        weights_a, weights_b: the same shape: per-user weights (None: uniform).
        samples: bootstrap resamples B.
        seed: seeds the resampling.
        level: the interval's coverage.
    """
    va, wa = _prepare(a, weights_a)
    vb, wb = _prepare(b, weights_b)
    if va.shape != vb.shape:
        raise ValueError(f"a {va.shape} and b {vb.shape} must cover the same pairs and users")
    pairs, users = va.shape
    both = ((wa > 0) & (wb > 0)).any(axis=0)
    method = f"paired bootstrap over users (B={samples}, {pairs} seed pairs)"
    if not both.any():
        return _nan_difference(method)
    full, (boot_a, boot_b) = _boot_means([(va, wa), (vb, wb)], samples, seed)
    diff = float(np.mean(full[0] - full[1]))
    stat = np.mean(boot_a - boot_b, axis=1)  # (B,) nan where a pair lost every user
    stat = stat[~np.isnan(stat)]
    low, high = _percentiles(stat, level)
    k = stat.size
    below, above = np.count_nonzero(stat <= 0), np.count_nonzero(stat >= 0)
    p = min(1.0, 2 * min((1 + below) / (1 + k), (1 + above) / (1 + k)))
    return Difference(diff, low, high, float(p), method, int(both.sum()), pairs=pairs)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment (family-wise error); nan p-values stay nan and do not count.

    The i-th smallest of m p-values becomes `max_{j <= i} min(1, (m - j + 1) p_(j))`.
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return out.tolist()
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out.tolist()


def within_noise(low: float, high: float) -> bool | None:
    """True where the interval covers 0; None where there is no interval."""
    if np.isnan(low) or np.isnan(high):
        return None
    return bool(low <= 0 <= high)
