"""Retrieval metrics against hand-computed cases and a per-user Python loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recolab.metrics import (
    hit_rate_at_k,
    mrr,
    ndcg_at_k,
    ranks_of_targets,
    recall_at_k,
    retrieval_details,
)


def reference(topk, targets, k):
    """Per-user loop over the stated definitions; users without targets are skipped."""
    rec, ndcg, hit, rr = [], [], [], []
    for row, tgt in zip(topk.tolist(), targets.tolist()):
        wanted = {t for t in tgt if t >= 0}
        if not wanted:
            continue
        seen, ranks = set(), []
        for r, item in enumerate(row, start=1):
            if item >= 0 and item not in seen:
                seen.add(item)
                if item in wanted:
                    ranks.append(r)
        in_k = [r for r in ranks if r <= k]
        rec.append(len(in_k) / len(wanted))
        hit.append(float(bool(in_k)))
        dcg = sum(1 / math.log2(r + 1) for r in in_k)
        idcg = sum(1 / math.log2(i + 1) for i in range(1, min(len(wanted), k) + 1))
        ndcg.append(dcg / idcg)
        rr.append(1 / min(ranks) if ranks else 0.0)
    return tuple(float(np.mean(x)) for x in (rec, ndcg, hit, rr)), len(rec)


def test_hand_computed_case():
    topk = np.array([[5, 3, 9, 3], [1, 2, 3, 4], [7, 7, 8, -1]])
    targets = np.array([[3, 9, 9, -1], [-1, -1, -1, -1], [8, 6, 7, 100]])
    np.testing.assert_array_equal(
        ranks_of_targets(topk, targets), [[2, 3, -1, -1], [-1, -1, -1, -1], [3, 0, 1, 0]]
    )
    d = retrieval_details(topk, targets, k=2)
    # user 0: hit 3 at rank 2 of targets {3, 9}; user 2: hit 7 at rank 1 of {8, 6, 7, 100}.
    assert d.recall == pytest.approx((1 / 2 + 1 / 4) / 2)
    idcg2 = 1 + 1 / math.log2(3)
    assert d.ndcg == pytest.approx(((1 / math.log2(3)) / idcg2 + 1 / idcg2) / 2)
    assert d.hit_rate == 1.0
    assert d.mrr == pytest.approx((1 / 2 + 1) / 2)
    assert (d.num_users, d.num_users_used, d.num_users_left_out) == (3, 2, 1)
    assert recall_at_k(topk, targets, k=2) == d.recall
    assert ndcg_at_k(topk, targets, k=2) == d.ndcg
    assert hit_rate_at_k(topk, targets, k=2) == d.hit_rate
    assert mrr(topk, targets) == d.mrr


def test_recall_divides_by_all_targets_not_k():
    topk = np.array([[1, 2]])
    targets = np.array([[1, 2, 3, 4]])
    assert recall_at_k(topk, targets, k=2) == 0.5
    assert ndcg_at_k(topk, targets, k=2) == 1.0  # IDCG over min(|targets|, K) = 2 positions


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [1, 3, 10])
def test_matches_per_user_loop(seed, k):
    rng = np.random.default_rng(seed)
    users, width, m = 60, 12, 6
    topk = rng.integers(-1, 30, (users, width))  # padding and repeated ids included
    targets = rng.integers(-1, 30, (users, m))
    targets[:5] = -1  # users without targets
    (rec, ndcg, hit, rr), used = reference(topk, targets, k)
    d = retrieval_details(topk, targets, k=k)
    assert (d.recall, d.ndcg, d.hit_rate, d.mrr) == pytest.approx((rec, ndcg, hit, rr), abs=1e-12)
    assert d.num_users_used == used and d.num_users_left_out == users - used


def test_large_and_sparse_item_ids():
    topk = np.array([[10**15, 3], [-1, 2**40]], dtype=np.int64)
    targets = np.array([[10**15, -1], [2**40, 7]], dtype=np.int64)
    np.testing.assert_array_equal(ranks_of_targets(topk, targets), [[1, -1], [2, 0]])
    d = retrieval_details(torch.tensor(topk), torch.tensor(targets), k=1)
    assert (d.recall, d.hit_rate) == (0.5, 0.5)


def test_no_user_with_targets_gives_nan():
    d = retrieval_details(np.array([[1, 2]]), np.array([[-1]]), k=1)
    assert np.isnan(d.recall) and np.isnan(d.mrr) and d.num_users_left_out == 1


def test_nothing_retrieved():
    d = retrieval_details(np.full((2, 3), -1), np.array([[1], [2]]), k=3)
    assert (d.recall, d.ndcg, d.hit_rate, d.mrr) == (0.0, 0.0, 0.0, 0.0)


def test_errors_quote_shapes():
    topk, targets = np.zeros((3, 4), dtype=int), np.zeros((3, 2), dtype=int)
    with pytest.raises(ValueError, match=r"fewer than k=5.*topk \(3, 4\) and targets \(3, 2\)"):
        recall_at_k(topk, targets, k=5)
    with pytest.raises(ValueError, match=r"same number of users.*\(3, 4\).*\(2, 2\)"):
        ndcg_at_k(topk, targets[:2], k=2)
    with pytest.raises(ValueError, match=r"2-D.*\(4,\)"):
        mrr(topk[0], targets)
    with pytest.raises(ValueError, match="integer item ids"):
        hit_rate_at_k(topk.astype(float), targets, k=1)
    with pytest.raises(ValueError, match="positive integer"):
        recall_at_k(topk, targets, k=0)
    with pytest.raises(ValueError, match="non-empty"):
        recall_at_k(np.zeros((0, 4), dtype=int), np.zeros((0, 2), dtype=int), k=1)


def test_uint64_ids_beyond_int64_are_refused_not_taken_for_padding():
    # As int64, 2**63 + 5 wraps to a negative id, which means padding: the user would be left out.
    big = np.uint64(2**63 + 5)
    topk = np.array([[big], [np.uint64(2)]], dtype=np.uint64)
    targets = np.array([[big], [np.uint64(7)]], dtype=np.uint64)
    with pytest.raises(
        ValueError, match=r"topk must hold item ids below 2\*\*63.*9223372036854775813"
    ):
        recall_at_k(topk, targets, k=1)
    # Below 2**63 uint64 ids are taken as they are.
    ok = topk.copy()
    ok[0, 0] = targets[0, 0] = np.uint64(2**63 - 1)
    assert recall_at_k(ok, targets, k=1) == 0.5
