"""The exact sorting helpers every rank-based metric rests on, against np.argsort(kind="stable")."""

from __future__ import annotations

import numpy as np
import pytest

from recolab.metrics import _checks as C


def assert_sorts_like_numpy(x):
    order, new = C.stable_argsort(*C.sort_keys(x))
    np.testing.assert_array_equal(order, np.argsort(x, kind="stable"))
    xs = x[order]
    want_new = np.ones(len(x), dtype=bool)
    want_new[1:] = xs[1:] != xs[:-1]
    np.testing.assert_array_equal(new, want_new)


@pytest.mark.parametrize(
    "dtype",
    [
        np.float64,
        np.float32,
        np.float16,
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.uint8,
        np.uint32,
    ],
)
def test_sort_keys_preserve_order_and_ties(dtype):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=500) * 50).astype(dtype)
    assert_sorts_like_numpy(x)
    assert_sorts_like_numpy(np.round(x / 20).astype(dtype))  # heavy ties


def test_sort_keys_float_extremes_and_signed_zero():
    x = np.array([np.finfo(float).max, -np.finfo(float).max, 5e-324, -5e-324, 0.0, -0.0, 1.0, -1.0])
    key, _ = C.sort_keys(x)
    assert key[4] == key[5]  # -0.0 ties with 0.0
    np.testing.assert_array_equal(np.argsort(key, kind="stable"), np.argsort(x, kind="stable"))


def test_sort_keys_wide_integers():
    x = np.array([np.iinfo(np.int64).max, np.iinfo(np.int64).min, 0, -1, 1, 2**62], dtype=np.int64)
    assert_sorts_like_numpy(x)
    u = np.array([2**64 - 1, 0, 2**63, 5, 2**63 - 1], dtype=np.uint64)
    assert_sorts_like_numpy(u)
    assert_sorts_like_numpy(np.array([True, False, True]))


@pytest.mark.parametrize("seed", range(4))
def test_stable_argsort_fixes_truncated_key_collisions(seed):
    # 64-bit keys share the word with the row index, so their low bits are dropped in the packed
    # sort; values a few ulps apart collide there and must be put in order afterwards.
    rng = np.random.default_rng(seed)
    base = 1.0 + rng.integers(0, 4, 3000) * 1e-3
    x = base + rng.integers(0, 2000, 3000) * np.finfo(float).eps
    x[::7] = x[3]  # ties inside colliding runs
    assert_sorts_like_numpy(x)
    assert_sorts_like_numpy(rng.normal(size=5000))


def test_input_checks():
    with pytest.raises(ValueError, match=r"must be 1-D, got shape \(2, 3\)"):
        C.as_1d("scores", np.zeros((2, 3)))
    with pytest.raises(ValueError, match="real numbers"):
        C.as_1d("scores", np.array(["a", "b"]))
    with pytest.raises(ValueError, match=r"labels \(2,\), scores \(3,\)"):
        C.same_length(("labels", "scores"), (np.zeros(2), np.zeros(3)))
    with pytest.raises(ValueError, match="2 NaN or infinite"):
        C.check_finite("scores", np.array([np.nan, -np.inf, 0.0]))
    np.testing.assert_array_equal(C.check_binary("labels", np.array([0.0, 1.0])), [0, 1])


def test_sort_keys_keep_long_double_values_apart():
    # Values that differ only beyond float64's precision: a float64 cast would tie them.
    a = np.array([1, 1, 1], dtype=np.longdouble) + np.array([0, 1, 2], dtype=np.longdouble) * (
        np.finfo(np.longdouble).eps * 4
    )
    if np.finfo(np.longdouble).eps >= np.finfo(np.float64).eps or len(np.unique(a)) < 3:
        pytest.skip("this platform's long double is float64")
    keys, _ = C.sort_keys(a[[2, 0, 1, 0]])
    assert keys.tolist() == [2, 0, 1, 0]


def test_group_labels_without_an_order_name_the_argument():
    with pytest.raises(ValueError, match=r"groups must hold labels of one sortable kind"):
        C.group_keys("groups", np.array(["a", None, "b"], dtype=object), 3)


@pytest.mark.parametrize("seed", range(4))
def test_order_ties_by_sorts_each_tied_run_by_the_second_key(seed):
    rng = np.random.default_rng(seed)
    n = 500
    first = rng.integers(0, [3, 60, 400, 5000][seed], n)  # from nearly all tied to rare ties
    ranked = rng.permutation(n)  # the rows sorted by another key
    rank = np.argsort(ranked)  # each row's position there
    order, new = C.stable_argsort(*C.sort_keys(first))
    C.order_ties_by(order, new, C.tied_positions(new), rank, ranked)
    np.testing.assert_array_equal(order, np.lexsort((rank, first)))
