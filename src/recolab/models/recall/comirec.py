"""ComiRec: Controllable Multi-Interest Framework for Recommendation.

Cen et al., KDD 2020. Two multi-interest extractors over the behavior sequence, ComiRec-DR
(dynamic routing) and ComiRec-SA (multi-head self-attention), trained by reading out the
interest closest to the target item, and served through a controllable aggregation that trades
accuracy for diversity (`aggregate`).

Both take `num_items` (item ids run 1..num_items, 0 is padding), `dim` (the embedding and
interest width D), `num_interests` (K), `history_len` (the most recent behaviors read) and
`item_features` (static item features, name -> ((num_items + 1,) index table, vocabulary size),
mean-pooled with the id embedding; the paper uses ids only).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from recolab.models.recall._blocks import (
    ItemEmbedding,
    Recaller,
    capsule_routing,
    dedup_interest_candidates,
    hard_interest_readout,
)
from recolab.params import Count, checked


class _ComiRec(Recaller):
    """What both extractors share: K interests over the item embeddings of the recent history,
    trained on the interest closest to the target. Subclasses define `user_embeddings`."""

    def __init__(
        self,
        num_items: int,
        dim: int,
        num_interests: int,
        history_len: int,
        item_features: Mapping[str, tuple[Tensor, int]] | None,
    ) -> None:
        super().__init__()
        self.num_items, self.dim = num_items, dim
        self.num_interests, self.history_len = num_interests, history_len
        self.item = ItemEmbedding(num_items, dim, item_features)

    def training_user_embeddings(
        self, batch: Mapping[str, Tensor], target_item_emb: Tensor
    ) -> Tensor:
        """(B, D): the interest with the largest inner product with the (B, D) target (argmax)."""
        return hard_interest_readout(self.user_embeddings(batch), target_item_emb)


class ComiRecDR(_ComiRec):
    """ComiRec-DR: dynamic routing with one transform per (behavior position, interest).

    Differs from MIND's routing in the arguments only (`capsule_routing` is shared):
    `u_hat[j|i] = W_ij e_i` with a separate `D x D` matrix for each position `i` (right-aligned:
    index -1 is the most recent behavior) and interest `j`; routing logits start at zeros, as in
    the authors' reference implementation (the per-interest matrices already break the symmetry
    that MIND's random logits break); softmax over the interests; always K interests; no ReLU
    layers. `W` is initialized N(0, 1 / D), which keeps `W e` at the scale of `e`.

    Args (besides those of both, in the module's docstring):
        routing_iters: routing iterations (capsule computations), 3 by default.

    `history_len` is also the number of per-position transforms.
    """

    @checked
    def __init__(
        self,
        *,
        num_items: Count,
        dim: Count = 64,
        num_interests: Count = 4,
        routing_iters: Count = 3,
        history_len: Count = 50,
        item_features: Mapping[str, tuple[Tensor, int]] | None = None,
    ) -> None:
        super().__init__(num_items, dim, num_interests, history_len, item_features)
        self.routing_iters = routing_iters
        weights = torch.randn(history_len, num_interests, dim, dim) / math.sqrt(dim)
        self.transforms = nn.Parameter(weights)  # (L, K, D, D)

    def user_embeddings(self, batch: Mapping[str, Tensor]) -> Tensor:
        """(B, K, D) interest capsules."""
        behaviors, mask = self.behaviors(batch)  # (B, L, D), (B, L)
        transforms = self.transforms[-mask.shape[1] :]  # (L, K, D, D)
        predictions = torch.einsum("lkde,ble->bkld", transforms, behaviors)  # (B, K, L, D)
        init = predictions.new_zeros(self.num_interests, mask.shape[1])  # (K, L)
        return capsule_routing(predictions, mask, init, iterations=self.routing_iters)  # (B, K, D)


class ComiRecSA(_ComiRec):
    """ComiRec-SA: K-head self-attention over the behavior sequence.

    `A = softmax(W2 tanh(W1 H))` with `H` the behavior embeddings plus trainable position
    embeddings (right-aligned), `W1: D -> d_a`, `W2: d_a -> K`; the softmax runs over the
    sequence axis, each head a distribution over the behaviors, padded positions excluded.
    Interest `k` is `sum_l A[k, l] e_l` over the behavior embeddings without positions, as in the
    authors' reference implementation. A user with no behavior at all attends uniformly to the
    padding rows (no NaN).

    Args (besides those of both, in the module's docstring; K is the number of heads):
        attention_dim: `d_a`, 4 * dim when None (the paper's choice).
        add_positions: add trainable position embeddings before the attention.
    """

    @checked
    def __init__(
        self,
        *,
        num_items: Count,
        dim: Count = 64,
        num_interests: Count = 4,
        history_len: Count = 50,
        attention_dim: Count | None = None,
        add_positions: bool = True,
        item_features: Mapping[str, tuple[Tensor, int]] | None = None,
    ) -> None:
        super().__init__(num_items, dim, num_interests, history_len, item_features)
        hidden = attention_dim or 4 * dim
        self.positions = (
            nn.Parameter(torch.randn(history_len, dim) * 0.02) if add_positions else None
        )
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, num_interests, bias=False)

    def attention(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Attention of each head over the behaviors.

        Returns:
            weights: (B, K, L), each row sums to 1 over the real (non-padding) behaviors.
            behaviors: (B, L, D) the behavior embeddings they weight.
        """
        behaviors, mask = self.behaviors(batch)  # (B, L, D), (B, L)
        keys = behaviors
        if self.positions is not None:
            keys = behaviors + self.positions[-mask.shape[1] :]  # (B, L, D)
        logits = self.w2(torch.tanh(self.w1(keys))).transpose(1, 2)  # (B, K, L)
        logits = logits.masked_fill(~mask.unsqueeze(1), torch.finfo(logits.dtype).min / 2)
        return logits.softmax(dim=-1), behaviors  # softmax over the sequence axis

    def user_embeddings(self, batch: Mapping[str, Tensor]) -> Tensor:
        """(B, K, D) interest vectors."""
        weights, behaviors = self.attention(batch)  # (B, K, L), (B, L, D)
        return weights @ behaviors  # (B, K, D)


def aggregate(
    interest_topk_ids: Tensor,
    interest_topk_scores: Tensor,
    item_categories: Tensor,
    *,
    n: int,
    lambda_: float,
) -> tuple[Tensor, Tensor]:
    """ComiRec's controllable aggregation: greedy top-n trading score for category diversity.

    Cen et al., KDD 2020, section 3.4 (Algorithm 1). The candidates `M` are the items retrieved
    by all interests, each scored `f(u, i) = max_k e_i . v_u^k` (its best score across
    interests). The greedy inference maximizes

        Q(u, S) = sum_{i in S} f(u, i) + lambda * sum_{i in S} sum_{j in S} g(i, j),
        g(i, j) = 1 if CATE(i) != CATE(j) else 0,

    by adding, n times, the candidate `argmax_{i in M \\ S} f(u, i) + lambda * sum_{j in S} g(i, j)`
    (ties: the higher-scored candidate). `lambda_ = 0` returns the top-n by score, exactly
    `merge_interest_topk`; a large `lambda_` fills the list with as many categories as possible.
    Vectorized over users; the only loop runs over the n output slots.

    Args:
        interest_topk_ids: (B, K, N) long ids each interest retrieved (ids <= 0 are invalid).
        interest_topk_scores: (B, K, N) their scores.
        item_categories: (num_items + 1,) long category of each item id (entry 0 unused).
        n: the length of the final list, <= K * N.
        lambda_: the diversity weight `lambda` >= 0.

    Returns:
        ids: (B, n) long in selection order; -1 where candidates ran out.
        scores: (B, n) float `f(u, i)` of the selected items; -inf at the -1 entries.
    """
    if n > interest_topk_ids.shape[1] * interest_topk_ids.shape[2]:
        raise ValueError(
            f"n={n} exceeds the K * N candidates of shape {tuple(interest_topk_ids.shape)}"
        )
    if lambda_ < 0:
        raise ValueError(f"lambda_ must be >= 0, got {lambda_}")
    ids, scores = dedup_interest_candidates(interest_topk_ids, interest_topk_scores)  # (B, M)
    categories = item_categories.to(ids.device)[ids.clamp_min(0)]  # (B, M)
    num_categories = int(item_categories.max()) + 1
    batch = ids.shape[0]
    rows = torch.arange(batch, device=ids.device)  # (B,)
    chosen_count = scores.new_zeros(batch, num_categories)  # (B, C) selected items per category
    available = ~torch.isneginf(scores)  # (B, M) valid, distinct, not yet selected
    out_ids = ids.new_full((batch, n), -1)
    out_scores = scores.new_full((batch, n), float("-inf"))
    for slot in range(n):
        # sum_{j in S} g(i, j) = |S| - (selected items sharing i's category)
        different = slot - chosen_count.gather(1, categories)  # (B, M)
        gain = (scores + lambda_ * different).masked_fill(~available, float("-inf"))  # (B, M)
        best = gain.argmax(dim=1)  # (B,) first maximum: candidates are sorted by score
        found = available[rows, best]  # (B,)
        out_ids[:, slot] = torch.where(found, ids[rows, best], -1)
        out_scores[:, slot] = torch.where(found, scores[rows, best], float("-inf"))
        chosen_count[rows, categories[rows, best]] += found.to(chosen_count.dtype)
        available[rows, best] = False
    return out_ids, out_scores
