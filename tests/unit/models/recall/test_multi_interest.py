"""MIND and ComiRec through the shared checks; ComiRec's readout, merging and aggregation."""

import torch

from recolab.models.recall import MIND, ComiRecDR, ComiRecSA, aggregate, merge_interest_topk

from .helpers import HISTORY_LEN, NUM_ITEMS, check_model, make_batch

CATEGORY = (torch.arange(NUM_ITEMS + 1) % 4, 4)


def test_mind_interface():
    def build():
        return MIND(
            num_items=NUM_ITEMS,
            dim=8,
            num_interests=3,
            history_len=HISTORY_LEN,
            hidden_dims=(16,),
            user_features={"age": 4},
            item_features={"category": CATEGORY},
        )

    model = check_model(build, make_batch())
    assert model.num_interests == 3


def test_comirec_dr_interface():
    def build():
        return ComiRecDR(num_items=NUM_ITEMS, dim=8, num_interests=3, history_len=HISTORY_LEN)

    check_model(build, make_batch())


def test_comirec_sa_interface():
    def build():
        return ComiRecSA(
            num_items=NUM_ITEMS,
            dim=8,
            num_interests=3,
            history_len=HISTORY_LEN,
            item_features={"category": CATEGORY},
        )

    check_model(build, make_batch())


def test_comirec_trains_on_the_interest_closest_to_the_target():
    torch.manual_seed(0)
    model = ComiRecSA(num_items=NUM_ITEMS, dim=8, num_interests=3, history_len=HISTORY_LEN)
    batch = make_batch()
    target = torch.randn(4, 8)
    interests = model.user_embeddings(batch)  # (B, K, D)
    best = torch.einsum("bkd,bd->bk", interests, target).argmax(1)
    torch.testing.assert_close(
        model.training_user_embeddings(batch, target), interests[torch.arange(4), best]
    )


def _slow_merge(ids, scores, n):
    out_ids, out_scores = [], []
    for row_ids, row_scores in zip(ids.flatten(1).tolist(), scores.flatten(1).tolist()):
        best = {}
        for i, s in zip(row_ids, row_scores):
            if i > 0 and s > best.get(i, float("-inf")):
                best[i] = s
        ranked = sorted(best.items(), key=lambda kv: -kv[1])[:n]
        ranked += [(-1, float("-inf"))] * (n - len(ranked))
        out_ids.append([i for i, _ in ranked])
        out_scores.append([s for _, s in ranked])
    return torch.tensor(out_ids), torch.tensor(out_scores)


def test_merge_interest_topk_deduplicates_at_the_best_score():
    ids = torch.tensor([[[5, 3, 9], [3, 7, 5]]])  # (B=1, K=2, N=3)
    scores = torch.tensor([[[0.9, 0.8, 0.1], [0.95, 0.5, 0.2]]])
    got_ids, got_scores = merge_interest_topk(ids, scores, n=3)
    assert got_ids.tolist() == [[3, 5, 7]]
    torch.testing.assert_close(got_scores, torch.tensor([[0.95, 0.9, 0.5]]))
    # fewer distinct valid items than n: -1 / -inf fill; faiss's -1 ids are never returned
    ids = torch.tensor([[[4, -1], [4, 2]]])
    scores = torch.tensor([[[1.0, 9.0], [0.5, 0.7]]])
    got_ids, got_scores = merge_interest_topk(ids, scores, n=3)
    assert got_ids.tolist() == [[4, 2, -1]]
    assert torch.isneginf(got_scores[0, 2])


def test_merge_interest_topk_equals_the_slow_reference():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 15, (32, 4, 6), generator=generator)  # many repeats
    scores = torch.randn(32, 4, 6, generator=generator)
    got_ids, got_scores = merge_interest_topk(ids, scores, n=10)
    want_ids, want_scores = _slow_merge(ids, scores, 10)
    assert torch.equal(got_ids, want_ids)
    torch.testing.assert_close(got_scores, want_scores)


def _slow_aggregate(ids, scores, categories, n, lam):
    """ComiRec's Algorithm 1, one user at a time."""
    out = []
    for row_ids, row_scores in zip(ids.flatten(1).tolist(), scores.flatten(1).tolist()):
        f = {}
        for i, s in zip(row_ids, row_scores):
            if i > 0:
                f[i] = max(s, f.get(i, float("-inf")))
        chosen = []
        for _ in range(min(n, len(f))):
            gain = {
                i: s + lam * sum(categories[i] != categories[j] for j in chosen)
                for i, s in f.items()
                if i not in chosen
            }
            chosen.append(max(gain, key=lambda i: (gain[i], f[i])))
        out.append(chosen + [-1] * (n - len(chosen)))
    return torch.tensor(out)


def test_aggregate_with_zero_lambda_is_the_top_n_merge():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 30, (16, 3, 8), generator=generator)
    scores = torch.randn(16, 3, 8, generator=generator)
    categories = torch.randint(0, 5, (30,), generator=generator)
    agg_ids, agg_scores = aggregate(ids, scores, categories, n=12, lambda_=0.0)
    merged_ids, merged_scores = merge_interest_topk(ids, scores, n=12)
    assert torch.equal(agg_ids, merged_ids)
    torch.testing.assert_close(agg_scores, merged_scores)


def test_aggregate_equals_the_greedy_reference():
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 30, (16, 3, 8), generator=generator)
    scores = torch.rand(16, 3, 8, generator=generator)
    categories = torch.randint(0, 5, (30,), generator=generator)
    for lam in (0.05, 0.3):
        got, _ = aggregate(ids, scores, categories, n=10, lambda_=lam)
        assert torch.equal(got, _slow_aggregate(ids, scores, categories.tolist(), 10, lam))


def test_aggregate_with_large_lambda_picks_diverse_categories():
    # interest 0 retrieves category 0 items with high scores; interest 1 lower-scored others
    categories = torch.tensor([0, 0, 0, 0, 0, 1, 2, 3])  # item id -> category
    ids = torch.tensor([[[1, 2, 3, 4], [5, 6, 7, 1]]])
    scores = torch.tensor([[[0.9, 0.8, 0.7, 0.6], [0.3, 0.2, 0.1, 0.5]]])
    top, _ = aggregate(ids, scores, categories, n=4, lambda_=0.0)
    assert top.tolist() == [[1, 2, 3, 4]]
    diverse, diverse_scores = aggregate(ids, scores, categories, n=4, lambda_=10.0)
    assert diverse.tolist() == [[1, 5, 6, 7]]  # one per category, best first within it
    assert len(set(categories[diverse[0]].tolist())) == 4
    torch.testing.assert_close(diverse_scores, torch.tensor([[0.9, 0.3, 0.2, 0.1]]))
