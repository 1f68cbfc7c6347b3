"""AUC, GAUC and logloss against scikit-learn and per-group loops, on random and tied inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss, roc_auc_score

from recolab.metrics import GroupedMetric, auc, gauc, gauc_details, logloss


def reference_gauc(y, s, g, weight="impressions"):
    """A Python loop of sklearn's AUC per group, and the counts gauc_details reports."""
    num = den = 0.0
    used = rows_out = 0
    groups = np.unique(g)
    for u in groups:
        m = g == u
        yu = y[m]
        if yu.min() == yu.max():
            rows_out += int(m.sum())
            continue
        w = {"impressions": m.sum(), "positives": yu.sum(), "uniform": 1.0}[weight]
        num += w * roc_auc_score(yu, s[m])
        den += w
        used += 1
    value = num / den if den else float("nan")
    return value, len(groups), used, rows_out


def random_case(rng, n, *, ties, num_groups):
    y = rng.integers(0, 2, n)
    s = rng.normal(size=n)
    if ties:
        s = np.round(s, 1)
    g = rng.integers(0, num_groups, n)
    return y, s, g


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("ties", [False, True])
def test_auc_matches_sklearn(seed, ties):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 400))
    y, s, _ = random_case(rng, n, ties=ties, num_groups=1)
    y[:2] = [0, 1]
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auc_counts_ties_one_half():
    # One positive and one negative with the same score: half a correct pair.
    assert auc([1, 0], [0.3, 0.3]) == 0.5
    assert auc([0, 1, 0, 1], [0.1, 0.5, 0.5, 0.9]) == pytest.approx((1 + 0.5 + 1 + 1) / 4)


def test_auc_accepts_dtypes_and_tensors():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = rng.normal(size=300)
    want = roc_auc_score(y, s)
    assert auc(y.astype(bool), s) == pytest.approx(want)
    assert auc(y.astype(np.float32), s.astype(np.float64)) == pytest.approx(want)
    s32 = torch.tensor(s, dtype=torch.float32, requires_grad=True)
    assert auc(torch.tensor(y), s32) == pytest.approx(roc_auc_score(y, s32.detach().numpy()))
    assert auc(y, (s * 100).astype(np.int16)) == pytest.approx(
        roc_auc_score(y, (s * 100).astype(np.int16))
    )
    bf16 = torch.tensor(s).to(torch.bfloat16)
    assert auc(y, bf16) == pytest.approx(roc_auc_score(y, bf16.float().numpy()))


def test_auc_treats_negative_zero_as_zero():
    assert auc([0, 1], [-0.0, 0.0]) == 0.5


def test_auc_one_class_raises_with_counts():
    with pytest.raises(ValueError, match=r"both classes.*3 positives and 0 negatives"):
        auc([1, 1, 1], [0.1, 0.2, 0.3])


@pytest.mark.parametrize("weight", ["impressions", "positives", "uniform"])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_gauc_matches_per_group_loop(weight, ties, seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 600))
    y, s, g = random_case(rng, n, ties=ties, num_groups=int(rng.integers(2, 40)))
    g = g * 7919 - 1000  # arbitrary, negative, sparse ids
    value, num_groups, used, rows_out = reference_gauc(y, s, g, weight)
    d = gauc_details(y, s, g, weight=weight)
    assert d.value == pytest.approx(value, abs=1e-12)
    assert (d.weight, d.num_groups, d.num_groups_used) == (weight, num_groups, used)
    assert d.num_groups_left_out == num_groups - used
    assert d.rows_left_out == rows_out
    assert gauc(y, s, g, weight=weight) == d.value


def test_gauc_leaves_out_single_class_and_single_row_groups():
    y = np.array([1, 0, 1, 1, 0, 1])
    s = np.array([0.9, 0.1, 0.5, 0.4, 0.3, 0.3])
    g = np.array([0, 0, 1, 1, 2, 3])  # group 1: one class; groups 2, 3: one row each
    d = gauc_details(y, s, g)
    assert d == GroupedMetric(
        value=1.0,
        weight="impressions",
        num_groups=4,
        num_groups_used=1,
        num_groups_left_out=3,
        rows_left_out=4,
    )


def test_gauc_heavy_ties_within_groups():
    rng = np.random.default_rng(3)
    n = 2000
    y = rng.integers(0, 2, n)
    s = rng.integers(0, 3, n).astype(float)  # three distinct scores
    g = rng.integers(0, 5, n)
    assert gauc(y, s, g) == pytest.approx(reference_gauc(y, s, g)[0], abs=1e-12)


def test_gauc_without_usable_group_is_nan():
    d = gauc_details([1, 0, 1], [0.1, 0.2, 0.3], [0, 1, 2])
    assert np.isnan(d.value)
    assert (d.num_groups, d.num_groups_used, d.rows_left_out) == (3, 0, 3)
    assert np.isnan(gauc([1, 1], [0.1, 0.2], [0, 0]))


def test_gauc_group_labels_of_any_sortable_kind():
    rng = np.random.default_rng(1)
    y, s, g = random_case(rng, 300, ties=True, num_groups=6)
    want = gauc(y, s, g)
    assert gauc(y, s, np.array([f"user{v}" for v in g])) == pytest.approx(want)
    assert gauc(y, s, g.astype(float) / 3) == pytest.approx(want)
    assert gauc(y, s, g.astype(np.int64) * 10**15) == pytest.approx(want)
    assert gauc(y, s, torch.tensor(g)) == pytest.approx(want)


def test_gauc_one_group_is_auc():
    rng = np.random.default_rng(2)
    y, s, _ = random_case(rng, 500, ties=True, num_groups=1)
    assert gauc(y, s, np.zeros(500, dtype=int)) == pytest.approx(auc(y, s), abs=1e-12)


def test_gauc_rejects_unknown_weight():
    with pytest.raises(ValueError, match="impressions.*positives.*uniform.*'clicks'"):
        gauc([0, 1], [0.1, 0.2], [0, 0], weight="clicks")


@pytest.mark.parametrize("seed", range(4))
def test_logloss_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    p = rng.random(300)
    p[:3] = [0.0, 1.0, 1e-9]
    want = log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1])
    assert logloss(y, p) == pytest.approx(want, rel=1e-12)


def test_logloss_rejects_bad_labels_probs_and_eps():
    with pytest.raises(ValueError, match="2 other values"):
        logloss([0, 1, 2, -1], [0.5] * 4)
    with pytest.raises(ValueError, match="1 values outside"):
        logloss([0, 1], [0.5, 1.5])
    with pytest.raises(ValueError, match="eps"):
        logloss([0, 1], [0.5, 0.5], eps=0.0)


@pytest.mark.parametrize("fn", [auc, logloss, lambda y, s: gauc(y, s, np.zeros(len(y)))])
def test_input_errors_quote_shapes(fn):
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        fn(np.array([0, 1, 0]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="empty"):
        fn(np.array([]), np.array([]))
    with pytest.raises(ValueError, match=r"2 NaN or infinite"):
        fn(np.array([0, 1, 0]), np.array([np.nan, 0.2, np.inf]))
    with pytest.raises(ValueError, match=r"1-D.*\(2, 2\)"):
        fn(np.zeros((2, 2)), np.zeros((2, 2)))


def test_gauc_groups_shape_error():
    with pytest.raises(ValueError, match=r"groups.*\(2,\).*\(3,\)"):
        gauc([0, 1, 0], [0.1, 0.2, 0.3], [0, 1])


labels_and_scores = (
    st.integers(2, 60)
    .flatmap(
        lambda n: st.tuples(
            st.lists(st.integers(0, 1), min_size=n, max_size=n),
            st.lists(st.integers(-5, 5), min_size=n, max_size=n),  # small range: many ties
        )
    )
    .filter(lambda ys: 0 < sum(ys[0]) < len(ys[0]))
)


@settings(max_examples=60, deadline=None)
@given(labels_and_scores)
def test_auc_properties(ys):
    y, s = np.array(ys[0]), np.array(ys[1], dtype=float)
    a = auc(y, s)
    assert auc(y, -s) == pytest.approx(1 - a, abs=1e-12)
    assert auc(y, np.exp(s / 3) * 2 - 7) == pytest.approx(a, abs=1e-12)  # strictly increasing
    assert gauc(y, s, np.full(len(y), 42)) == pytest.approx(a, abs=1e-12)
