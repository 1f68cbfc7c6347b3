"""Faiss indexes against the exact top-k, and exclusion of seen items."""

import logging

import numpy as np
import pytest
import torch

from recolab.index import FaissIndex, csr_from_pairs, exact_topk, recall_against_exact

NUM_ITEMS, DIM, NUM_USERS, K = 2000, 32, 200, 20


@pytest.fixture(scope="module")
def data():
    generator = torch.Generator().manual_seed(0)
    items = torch.randn(NUM_ITEMS + 1, DIM, generator=generator)  # row 0: padding
    users = torch.randn(NUM_USERS, DIM, generator=generator)
    # every user saw 0..29 random items
    counts = torch.randint(0, 30, (NUM_USERS,), generator=generator)
    rows = torch.repeat_interleave(torch.arange(NUM_USERS), counts)
    cols = torch.randint(1, NUM_ITEMS + 1, (int(counts.sum()),), generator=generator)
    return items, users, csr_from_pairs(rows, cols, num_rows=NUM_USERS)


def test_flat_index_equals_exact_topk(data):
    items, users, _ = data
    index = FaissIndex(kind="flat").build(items)
    scores, ids = index.search(users, K)
    exact_scores, exact_ids = exact_topk(users, items, k=K)
    assert scores.shape == ids.shape == (NUM_USERS, K)
    np.testing.assert_allclose(scores, exact_scores.numpy(), rtol=1e-4, atol=1e-4)
    # same ids up to ties: wherever ids differ, the scores are tied
    differ = ids != exact_ids.numpy()
    assert differ.mean() < 0.01
    assert recall_against_exact(ids, exact_ids) > 0.99


@pytest.mark.parametrize(
    "index",
    [
        # isotropic random vectors have no clusters: IVF must visit over half of its cells
        FaissIndex(kind="ivf", nlist=32, nprobe=20),
        FaissIndex(kind="hnsw", hnsw_m=32, ef_search=128),
    ],
    ids=["ivf", "hnsw"],
)
def test_approximate_indexes_recall_the_exact_top_k(data, index):
    items, users, _ = data
    index.build(items[1:], ids=torch.arange(1, NUM_ITEMS + 1))
    _, ids = index.search(users, K)
    _, exact_ids = exact_topk(users, items, k=K)
    assert recall_against_exact(ids, exact_ids) > 0.9


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_exclusion_removes_seen_items_and_keeps_k_results(data, kind):
    items, users, (indptr, indices) = data
    index = FaissIndex(kind=kind, ef_search=256).build(items)
    scores, ids = index.search(users, K, exclude=(indptr, indices))
    assert (ids > 0).all() and np.isfinite(scores).all()  # k real results for every user
    for u in range(NUM_USERS):
        seen = set(indices[indptr[u] : indptr[u + 1]].tolist())
        assert not seen & set(ids[u].tolist())
        assert len(set(ids[u].tolist())) == K
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # still ranked
    _, exact_ids = exact_topk(users, items, k=K, exclude=(indptr, indices))
    assert recall_against_exact(ids, exact_ids) > (0.99 if kind == "flat" else 0.9)


def test_l2_metric_scores_are_negated_distances(data):
    items, users, _ = data
    scores, ids = FaissIndex(kind="flat", metric="l2").build(items).search(users[:5], 3)
    distances = torch.cdist(users[:5], items[1:]).pow(2)
    np.testing.assert_allclose(-scores, distances.topk(3, largest=False).values.numpy(), rtol=1e-4)


def test_gpu_request_falls_back_to_cpu_with_a_warning(data, caplog):
    items, users, _ = data
    with caplog.at_level(logging.WARNING):
        index = FaissIndex(kind="flat", use_gpu=True).build(items)
    import faiss

    if faiss.get_num_gpus() == 0:
        assert not index.on_gpu and "GPU" in caplog.text
    assert index.search(users[:2], 5)[1].shape == (2, 5)


def test_recall_against_exact_counts_overlap_share():
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, -1]])
    approx = np.array([[4, 9, 1, 8], [7, 5, 6, 2]])
    assert recall_against_exact(approx, exact) == pytest.approx((2 / 4 + 3 / 3) / 2)
