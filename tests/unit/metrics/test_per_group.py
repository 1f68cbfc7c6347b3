"""Per-group values of GAUC, XGAUC and the retrieval metrics against slow per-user loops."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from recolab.metrics import gauc_details, retrieval_details, weighted_mean, xgauc_details


def slow_xauc(t: np.ndarray, p: np.ndarray) -> float:
    """Every pair of rows with different targets; a tied prediction counts one half."""
    num = den = 0.0
    for i, j in itertools.combinations(range(len(t)), 2):
        if t[i] == t[j]:
            continue
        den += 1
        d = (t[i] - t[j]) * (p[i] - p[j])
        num += 1.0 if d > 0 else 0.5 if p[i] == p[j] else 0.0
    return num / den if den else float("nan")


def case(seed: int, *, ties: bool, strings: bool = False):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(30, 300))
    g = rng.integers(0, int(rng.integers(2, 25)), n)
    y = rng.integers(0, 2, n)
    s = rng.normal(size=n)
    t = rng.exponential(size=n)
    if ties:
        s, t = np.round(s, 1), np.round(t, 0)
    if strings:
        g = np.array([f"u{x:03d}" for x in g])
    return y, s, t, g


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("weight", ["impressions", "positives", "uniform"])
def test_gauc_per_group_is_sklearn_auc_per_user(seed, ties, weight):
    y, s, _, g = case(seed, ties=ties, strings=seed % 2 == 1)
    d = gauc_details(y, s, g, weight=weight)
    pg = d.per_group
    assert list(pg.groups) == sorted(set(g))
    for i, u in enumerate(pg.groups):
        m = g == u
        assert pg.rows[i] == m.sum() and pg.positives[i] == y[m].sum()
        if y[m].min() == y[m].max():
            assert np.isnan(pg.values[i]) and pg.weights[i] == 0
            continue
        assert pg.values[i] == pytest.approx(roc_auc_score(y[m], s[m]), abs=1e-12)
        w = {"impressions": m.sum(), "positives": y[m].sum(), "uniform": 1}[weight]
        assert pg.weights[i] == w
    assert weighted_mean(np.nan_to_num(pg.values), pg.weights) == d.value
    assert np.count_nonzero(~np.isnan(pg.values)) == d.num_groups_used


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
def test_xgauc_per_group_is_pairwise_xauc_per_user(seed, ties):
    _, _, t, g = case(seed, ties=ties, strings=seed % 2 == 0)
    p = np.round(t + np.random.default_rng(seed).normal(size=len(t)), 1 if ties else 6)
    d = xgauc_details(t, p, g)
    pg = d.per_group
    assert list(pg.groups) == sorted(set(g)) and pg.positives is None
    for i, u in enumerate(pg.groups):
        m = g == u
        assert pg.rows[i] == m.sum()
        expected = slow_xauc(t[m], p[m])
        if np.isnan(expected):
            assert np.isnan(pg.values[i]) and pg.weights[i] == 0
        else:
            assert pg.values[i] == pytest.approx(expected, abs=1e-12)
            assert pg.weights[i] == m.sum()
    assert weighted_mean(np.nan_to_num(pg.values), pg.weights) == d.value


def test_per_group_is_left_out_of_equality():
    a = gauc_details([1, 0, 1, 0], [0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1])
    b = gauc_details([1, 0, 1, 0], [0.1, 0.2, 0.3, 0.4], [5, 5, 6, 6])
    assert a == b and a.per_group is not None


@pytest.mark.parametrize("seed", range(5))
def test_retrieval_per_user_matches_a_loop(seed):
    rng = np.random.default_rng(seed)
    users, k = 40, 5
    topk = rng.integers(1, 30, (users, 8))
    targets = rng.integers(1, 30, (users, 3))
    targets[rng.random((users, 3)) < 0.3] = -1
    targets[0] = -1  # a user without a target
    d = retrieval_details(topk, targets, k=k)
    pu = d.per_user
    for u in range(users):
        tgt = {int(x) for x in targets[u] if x >= 0}
        if not tgt:
            assert pu.targets[u] == 0 and np.isnan(pu.recall[u]) and np.isnan(pu.ndcg[u])
            continue
        first = {}
        for r, item in enumerate(topk[u], start=1):
            first.setdefault(int(item), r)
        hits = [first[x] for x in tgt if x in first and first[x] <= k]
        dcg = sum(1 / np.log2(r + 1) for r in hits)
        idcg = sum(1 / np.log2(r + 1) for r in range(1, min(len(tgt), k) + 1))
        ranks = [first[x] for x in tgt if x in first]
        assert pu.targets[u] == len(tgt)
        assert pu.recall[u] == pytest.approx(len(hits) / len(tgt), abs=1e-12)
        assert pu.ndcg[u] == pytest.approx(dcg / idcg, abs=1e-12)
        assert pu.hit[u] == float(bool(hits))
        assert pu.reciprocal_rank[u] == pytest.approx(1 / min(ranks) if ranks else 0.0)
    used = pu.targets > 0
    assert pu.recall[used].mean() == d.recall and pu.ndcg[used].mean() == d.ndcg
    assert pu.hit[used].mean() == d.hit_rate and pu.reciprocal_rank[used].mean() == d.mrr
