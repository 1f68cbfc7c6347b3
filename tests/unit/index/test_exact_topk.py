"""Exact top-k with exclusion of seen items."""

import pytest
import torch

from recolab.index import csr_from_pairs, exact_topk


def _slow_topk(users, items, k, seen):
    scores, ids = [], []
    for u, row in enumerate(users):
        candidates = [
            (float(row @ items[i]), i) for i in range(1, items.shape[0]) if i not in seen[u]
        ]
        candidates.sort(key=lambda c: -c[0])
        scores.append([c[0] for c in candidates[:k]])
        ids.append([c[1] for c in candidates[:k]])
    return torch.tensor(scores), torch.tensor(ids)


def test_exact_topk_matches_a_slow_loop_with_exclusion_and_blocks():
    generator = torch.Generator().manual_seed(0)
    users, items = torch.randn(7, 4, generator=generator), torch.randn(30, 4, generator=generator)
    seen = {0: {1, 2, 3}, 2: {5}, 3: set(range(1, 20)), 6: {29, 28}}
    rows = torch.tensor([u for u, s in seen.items() for _ in s])
    cols = torch.tensor([i for s in seen.values() for i in s])
    exclude = csr_from_pairs(rows, cols, num_rows=7)
    scores, ids = exact_topk(users, items, k=5, exclude=exclude, batch_size=3)
    want_scores, want_ids = _slow_topk(users, items, 5, {u: seen.get(u, set()) for u in range(7)})
    assert torch.equal(ids, want_ids)
    torch.testing.assert_close(scores, want_scores)


def test_padding_row_is_never_returned_and_shortfall_is_marked():
    users = torch.ones(2, 2)
    items = torch.tensor([[100.0, 100.0], [1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    exclude = csr_from_pairs(torch.tensor([1, 1]), torch.tensor([1, 3]), num_rows=2)
    scores, ids = exact_topk(users, items, k=3, exclude=exclude)
    assert ids.tolist() == [[3, 2, 1], [2, -1, -1]]
    assert torch.isneginf(scores[1, 1:]).all()


def test_csr_from_pairs_groups_by_row():
    indptr, indices = csr_from_pairs(
        torch.tensor([2, 0, 2, 0, 3]), torch.tensor([9, 4, 8, 5, 1]), num_rows=4
    )
    assert indptr.tolist() == [0, 2, 2, 4, 5]
    assert indices.tolist() == [4, 5, 9, 8, 1]


def test_rejects_too_large_k():
    with pytest.raises(ValueError, match="k must be"):
        exact_topk(torch.randn(2, 3), torch.randn(5, 3), k=5)


def test_scores_stay_float32_inside_a_bf16_autocast_evaluation_step():
    # Under trainer.precision=bf16-mixed, Lightning runs evaluation steps inside autocast. Item
    # popularity counts 1..2000 as scores (the most-popular baseline): bfloat16 keeps 8
    # significant bits, so near 2,000 it cannot tell neighbours apart (steps of 8).
    items = torch.arange(2001, dtype=torch.float32)[:, None]  # (I, 1), row 0 = padding
    users = torch.ones(3, 1)
    expected_scores, expected_ids = exact_topk(users, items, k=50)
    assert expected_ids[0].tolist() == list(range(2000, 1950, -1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores, ids = exact_topk(users, items, k=50)
    assert scores.dtype == torch.float32
    assert torch.equal(ids, expected_ids) and torch.equal(scores, expected_scores)
    # bf16 inputs (a model's embeddings under autocast) are scored in float32 too.
    _, ids16 = exact_topk(users.bfloat16(), items.bfloat16()[:257], k=10)
    assert ids16[0].tolist() == list(range(256, 246, -1))
