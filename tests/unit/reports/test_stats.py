"""The statistics of `recolab compare` and the reports: against scipy, slow references, and
their error rates on simulated A/A and A/B comparisons."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from recolab.reports import stats as S

#: Over 400 A/A repetitions, a 5% test rejects 20 times on average (sd 4.4): accept 3 sd around it.
REPS, LOW, HIGH = 400, 7, 34


def test_t_summary_is_scipys_t_interval():
    x = np.random.default_rng(0).normal(0.7, 0.01, 5)
    s = S.t_summary(x)
    low, high = sps.t.interval(0.95, 4, loc=x.mean(), scale=sps.sem(x))
    assert (s.n, s.mean, s.std) == (5, pytest.approx(x.mean()), pytest.approx(x.std(ddof=1)))
    assert (s.ci_low, s.ci_high) == (pytest.approx(low, abs=1e-14), pytest.approx(high, abs=1e-14))
    one = S.t_summary(np.array([0.5]))
    assert one.n == 1 and one.mean == 0.5 and np.isnan(one.ci_low) and np.isnan(one.std)


def test_paired_and_welch_t_are_scipys():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.70, 0.01, 5), rng.normal(0.69, 0.01, 5)
    ref = sps.ttest_rel(a, b)
    d = S.paired_t(a, b)
    assert d.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert (d.ci_low, d.ci_high) == pytest.approx(tuple(ref.confidence_interval(0.95)), rel=1e-10)
    assert d.diff == pytest.approx((a - b).mean()) and d.method == "paired t over 5 seeds"
    c = rng.normal(0.69, 0.03, 3)
    ref = sps.ttest_ind(a, c, equal_var=False)
    d = S.welch_t(a, c)
    assert d.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert (d.ci_low, d.ci_high) == pytest.approx(tuple(ref.confidence_interval(0.95)), rel=1e-10)
    assert d.method == "Welch t over seeds (5 vs 3)"


def test_seed_difference_pairs_only_matching_seeds():
    a = {"1": 0.71, "2": 0.73, "3": 0.72}
    assert S.seed_difference(a, {"1": 0.70, "2": 0.71, "3": 0.70}).method.startswith("paired t")
    assert S.seed_difference(a, {"1": 0.70, "2": 0.71, "4": 0.7}).method.startswith("Welch")
    assert np.isnan(S.seed_difference({"1": 0.7}, {"1": 0.6}).p_value)  # one seed: no test
    same = S.paired_t([0.7, 0.8], [0.7, 0.8])  # no spread at all: nothing to tell apart
    assert (same.diff, same.p_value, same.ci_low, same.ci_high) == (0, 1.0, 0, 0)


def slow_paired_bootstrap(a, b, wa, wb, samples, seed, level=0.95):
    """The obvious loop over resamples, seed pairs and drawn users (the same random draws)."""
    pairs, users = a.shape
    idx = np.random.default_rng(seed).integers(0, users, size=(samples, users))

    def mean(v, w, rows):
        num = den = 0.0
        for u in rows:
            if not np.isnan(v[u]) and w[u] > 0:
                num, den = num + w[u] * v[u], den + w[u]
        return num / den

    stat = np.array(
        [
            np.mean([mean(a[s], wa[s], idx[i]) - mean(b[s], wb[s], idx[i]) for s in range(pairs)])
            for i in range(samples)
        ]
    )
    full = range(users)
    diff = np.mean([mean(a[s], wa[s], full) - mean(b[s], wb[s], full) for s in range(pairs)])
    low, high = np.quantile(stat, [(1 - level) / 2, (1 + level) / 2])
    k = samples
    p = min(1, 2 * min((1 + (stat <= 0).sum()) / (1 + k), (1 + (stat >= 0).sum()) / (1 + k)))
    return diff, low, high, p


def test_paired_bootstrap_matches_the_slow_loop():
    rng = np.random.default_rng(2)
    pairs, users = 2, 30
    a = rng.random((pairs, users))
    b = a - 0.02 + 0.05 * rng.normal(size=(pairs, users))
    a[0, 3] = np.nan  # left out of the metric in one run
    wa = rng.integers(1, 20, (pairs, users)).astype(float)
    wb = wa.copy()
    d = S.paired_bootstrap(a, b, wa, wb, samples=200, seed=7)
    diff, low, high, p = slow_paired_bootstrap(a, b, wa, wb, 200, 7)
    assert (d.diff, d.ci_low, d.ci_high, d.p_value) == pytest.approx(
        (diff, low, high, p), abs=1e-12
    )
    assert d.n == users and d.pairs == pairs and "paired bootstrap over users" in d.method


def test_paired_bootstrap_is_scipys_on_a_plain_mean():
    rng = np.random.default_rng(3)
    a = rng.random(300)
    b = a - 0.01 + 0.1 * rng.normal(size=300)
    d = S.paired_bootstrap(a, b, samples=20000, seed=0)
    ref = sps.bootstrap(
        (a - b,), np.mean, n_resamples=20000, method="percentile", random_state=1
    ).confidence_interval
    se = (a - b).std() / np.sqrt(300)
    assert d.diff == pytest.approx((a - b).mean())
    assert abs(d.ci_low - ref.low) < 0.05 * se and abs(d.ci_high - ref.high) < 0.05 * se


def test_bootstrap_interval_of_a_weighted_mean():
    rng = np.random.default_rng(4)
    v, w = rng.random(50), rng.integers(1, 9, 50).astype(float)
    v[0] = np.nan
    low, high = S.bootstrap_interval(v, w, samples=300, seed=3)
    _, slow_low, slow_high, _ = slow_paired_bootstrap(
        v[None], np.zeros((1, 50)), w[None], np.ones((1, 50)), 300, 3
    )
    assert (low, high) == pytest.approx((slow_low, slow_high), abs=1e-12)
    mean = np.nansum(v * w) / w[1:].sum()
    assert low < mean < high
    assert np.isnan(S.bootstrap_interval(np.full(3, np.nan))[0])


def test_holm_by_hand():
    # Sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> 0.06 (monotone).
    assert S.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = S.holm([0.01, float("nan"), 0.04])  # nan: not tested, not counted
    assert out[0] == pytest.approx(0.02) and np.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert S.holm([0.5, 0.9]) == [1.0, 1.0]


def simulated_users(rng, users, pairs):
    """Per-user AUC-like values of two runs of the same configuration (an A/A pair) and weights.

    The users differ a lot from each other (the spread a paired test removes); a run adds its own
    per-user noise.
    """
    quality = rng.beta(6, 3, users)  # (U,)
    rows = rng.integers(2, 40, users).astype(float)
    noise = 0.08 / np.sqrt(rows)
    a = np.clip(quality + noise * rng.normal(size=(pairs, users)), 0, 1)
    b = np.clip(quality + noise * rng.normal(size=(pairs, users)), 0, 1)
    return a, b, np.broadcast_to(rows, (pairs, users))


def test_aa_paired_bootstrap_is_within_noise_at_the_nominal_rate():
    rng = np.random.default_rng(5)
    flagged = 0
    for rep in range(REPS):
        a, b, w = simulated_users(rng, 150, 2)
        d = S.paired_bootstrap(a, b, w, w, samples=500, seed=rep)
        flagged += not S.within_noise(d.ci_low, d.ci_high)
    assert LOW <= flagged <= HIGH, f"{flagged} of {REPS} A/A comparisons flagged (5% expected)"


def test_aa_user_halves_are_within_noise_at_the_nominal_rate():
    # One run's users split in two random halves: the same model, different users (unpaired
    # users, so the halves are compared as two seed pairs' worth of Welch-like noise by t).
    rng = np.random.default_rng(6)
    flagged = 0
    for _ in range(REPS):
        a, _, _ = simulated_users(rng, 200, 1)
        half = rng.permutation(200)
        d = S.welch_t(a[0, half[:100]], a[0, half[100:]])
        flagged += d.p_value < 0.05
    assert LOW <= flagged <= HIGH


def test_aa_seed_tests_are_within_noise_at_the_nominal_rate():
    rng = np.random.default_rng(7)
    paired = welch = 0
    for _ in range(REPS):
        seed_effect = rng.normal(0, 0.01, 5)  # shared by both configurations at a seed
        a = 0.7 + seed_effect + rng.normal(0, 0.003, 5)
        b = 0.7 + seed_effect + rng.normal(0, 0.003, 5)
        paired += not S.within_noise(*_ci(S.paired_t(a, b)))
        # Unmatched seeds (Welch): each run its own seed effect.
        c = 0.7 + rng.normal(0, 0.01, 4)
        welch += not S.within_noise(*_ci(S.welch_t(a, c)))
    assert LOW <= paired <= HIGH and LOW <= welch <= HIGH


def _ci(d: S.Difference) -> tuple[float, float]:
    return d.ci_low, d.ci_high


def test_a_clear_difference_is_significant():
    rng = np.random.default_rng(8)
    a, b, w = simulated_users(rng, 150, 2)
    d = S.paired_bootstrap(a + 0.02, b, w, w, samples=1000, seed=0)
    assert d.p_value < 0.01 and not S.within_noise(d.ci_low, d.ci_high)
    assert d.ci_low < 0.02 < d.ci_high
    t = S.paired_t(np.array([0.75, 0.76, 0.74]), np.array([0.60, 0.62, 0.61]))
    assert t.p_value < 0.01 and t.ci_low > 0.1
