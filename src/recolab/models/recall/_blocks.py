"""What the recallers share beyond `recolab.models.blocks`: the recaller base, item embeddings,
the recent history, capsule routing, the training readouts and the multi-interest merge.

Capsule routing lives here once and serves both MIND (Li et al., CIKM 2019) and ComiRec-DR (Cen
et al., KDD 2020); the models differ only in the arguments they pass (how behaviors are mapped to
each interest, the initial routing logits, whether some interests are switched off).

Shapes: B batch, L history length, D embedding, H hidden, K interests, N retrieved per interest.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from recolab.models.blocks import EmbeddingTables


def recent_history(batch: Mapping[str, Tensor], history_len: int) -> tuple[Tensor, Tensor]:
    """The last `history_len` behaviors of each user and which of them are real.

    Args:
        batch: holds `"hist_items"` (B, L') long, most recent last, left-padded with 0.
        history_len: how many of the most recent behaviors to keep.

    Returns:
        items: (B, L) long with L = min(L', history_len).
        mask: (B, L) bool, False at padding.
    """
    items = batch["hist_items"][:, -history_len:]  # (B, L)
    return items, items > 0


class ItemEmbedding(nn.Module):
    """Item id embedding plus static item features (category, brand, ...) looked up by id.

    The id table has `num_items + 1` rows; row 0 (padding/OOV) is an ordinary learned vector,
    history padding is masked wherever histories are pooled.

    Args:
        num_items: ids run 1..num_items.
        dim: embedding width `D`.
        item_features: name -> (LongTensor (num_items + 1,) giving each item's feature index,
            vocabulary size). The lookup tables are kept as (persistent) buffers so they move
            with the model and are saved with it.
    """

    def __init__(
        self,
        num_items: int,
        dim: int,
        item_features: Mapping[str, tuple[Tensor, int]] | None = None,
    ) -> None:
        super().__init__()
        item_features = dict(item_features or {})
        self.num_items = num_items
        self.ids = nn.Embedding(num_items + 1, dim)
        for name, (table, _) in item_features.items():
            if table.shape != (num_items + 1,):
                raise ValueError(
                    f"item feature {name!r}: expected a table of shape ({num_items + 1},), "
                    f"got {tuple(table.shape)}"
                )
            self.register_buffer(f"table_{name}", table.detach().long().clone())
        self.features = EmbeddingTables({n: size for n, (_, size) in item_features.items()}, dim)

    @property
    def num_fields(self) -> int:
        """The id plus each feature."""
        return 1 + len(self.features)

    def forward(self, item_ids: Tensor) -> Tensor:
        """(..., 1 + F, D): the id embedding, then each feature's, for ids of any shape."""
        fields = [self.ids(item_ids)]  # each (..., D)
        for name, table in self.features.items():
            fields.append(table(getattr(self, f"table_{name}")[item_ids]))
        return torch.stack(fields, dim=-2)  # (..., 1 + F, D)


class Recaller(nn.Module, ABC):
    """The recaller interface (`recolab.models.recall`) with what every recaller shares.

    A subclass sets `num_items`, `num_interests` (1 by default), `history_len` and `item` (its
    `ItemEmbedding`) and defines `user_embeddings`; it overrides `training_user_embeddings` when
    it has several interests, and `item_embeddings` when items go through more than their
    embeddings.
    """

    num_items: int
    num_interests: int = 1
    history_len: int
    item: ItemEmbedding

    def behaviors(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(B, L, D) item vectors of the most recent behaviors and their (B, L) mask."""
        hist, mask = recent_history(batch, self.history_len)  # (B, L), (B, L)
        return self.item_embeddings(hist), mask  # (B, L, D), (B, L)

    @abstractmethod
    def user_embeddings(self, batch: Mapping[str, Tensor]) -> Tensor:
        """(B, D) or (B, K, D) serving vectors."""

    def training_user_embeddings(
        self, batch: Mapping[str, Tensor], target_item_emb: Tensor
    ) -> Tensor:
        """(B, D): a single-interest model's training vector is its serving vector."""
        return self.user_embeddings(batch)

    def item_embeddings(self, item_ids: Tensor) -> Tensor:
        """(N, D): mean of the id and feature embeddings of ids (N,)."""
        return self.item(item_ids).mean(dim=-2)

    @torch.no_grad()
    def all_item_embeddings(self, *, chunk_size: int = 65536) -> Tensor:
        """(num_items + 1, D) vectors of every id; row 0 is padding (never retrieved)."""
        ids = torch.arange(self.num_items + 1, device=self.item.ids.weight.device)
        return torch.cat([self.item_embeddings(chunk) for chunk in ids.split(chunk_size)])

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Same as `user_embeddings`."""
        return self.user_embeddings(batch)


def squash(z: Tensor, eps: float = 1e-9) -> Tensor:
    """Capsule squash (Sabour et al., 2017): `|z|^2 / (1 + |z|^2) * z / |z|` over the last axis."""
    norm2 = z.pow(2).sum(dim=-1, keepdim=True)  # (..., 1)
    return norm2 / (1.0 + norm2) * z / torch.sqrt(norm2 + eps)


def capsule_routing(
    predictions: Tensor,
    behavior_mask: Tensor,
    init_logits: Tensor,
    *,
    iterations: int,
    interest_mask: Tensor | None = None,
) -> Tensor:
    """Dynamic routing from behavior capsules to interest capsules.

    MIND's B2I routing (Li et al., CIKM 2019, Algorithm 1) and ComiRec-DR (Cen et al., KDD 2020),
    with `u_hat[j|i]` the prediction of behavior `i` for interest `j` (MIND: `S e_i`, one shared
    bilinear map `S`; ComiRec-DR: `W_ij e_i`):

        repeat `iterations` times:
            w[i, j] = softmax over the interests j of b[i, j]       (for each behavior i)
            z_j     = sum_i w[i, j] u_hat[j|i]                      (padded behaviors: w = 0)
            u_j     = squash(z_j)
            b[i, j] += u_hat[j|i] . u_j                             (skipped after the last)

    The softmax runs over the interest axis, as in capsule networks: each behavior splits one
    unit of weight among the interests. The routing logits `b` receive no gradient (as in
    ComiRec's reference implementation): the agreement updates use detached predictions, so the
    model learns through the final weighted sum only.

    Args:
        predictions: (B, K, L, D) `u_hat[j|i]` for interest j (axis 1) and behavior i (axis 2).
        behavior_mask: (B, L) bool, False at padded behaviors.
        init_logits: (K, L) or (B, K, L) initial routing logits `b` (MIND: a fixed N(0, 1) draw,
            ComiRec-DR: zeros).
        iterations: routing iterations `r` >= 1 (the number of capsule computations).
        interest_mask: (B, K) bool, False for interests switched off (MIND's dynamic interest
            number); behaviors route nothing to them and their capsules come out as zeros.

    Returns:
        (B, K, D) interest capsules.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    batch, num_interests, length, _ = predictions.shape
    logits = init_logits.to(predictions.dtype).expand(batch, num_interests, length)  # (B, K, L)
    if interest_mask is not None:
        off = ~interest_mask.unsqueeze(-1)  # (B, K, 1)
        # finite, not -inf: a row with every interest off then gets uniform weights, not NaN
        logits = logits.masked_fill(off, torch.finfo(logits.dtype).min / 2)
    keep = behavior_mask.unsqueeze(1).to(predictions.dtype)  # (B, 1, L)
    detached = predictions.detach()
    for it in range(iterations):
        weights = logits.softmax(dim=1) * keep  # (B, K, L) softmax over interests
        last = it == iterations - 1
        source = predictions if last else detached
        capsules = squash((weights.unsqueeze(-1) * source).sum(dim=2))  # (B, K, D)
        if not last:
            agreement = (detached * capsules.unsqueeze(2)).sum(dim=-1)  # (B, K, L)
            logits = logits + agreement
    return capsules


def label_aware_attention(
    interests: Tensor, target: Tensor, *, pow_p: float, interest_mask: Tensor | None = None
) -> Tensor:
    """MIND's label-aware attention (Li et al., CIKM 2019, eq. 6), for training.

    `v_u = V_u softmax(pow(V_u^T e_target, p))`: `p = 0` averages the interests uniformly; a
    large even `p` approaches picking the interest with the largest *absolute* inner product (a
    strongly negative one included), a large odd `p` the one with the largest signed product;
    either sharpens only products of magnitude above 1.
    The power applies to the raw inner products as in the paper, so `p` must be integer-valued
    (a fractional power of a negative product is undefined).

    Args:
        interests: (B, K, D) interest vectors `V_u`.
        target: (B, D) target item embeddings `e_target`.
        pow_p: the power `p` >= 0.
        interest_mask: (B, K) bool, False for interests switched off (left out of the softmax).

    Returns:
        (B, D) the attended user vector.
    """
    scores = (interests @ target.unsqueeze(-1)).squeeze(-1)  # (B, K)
    scores = scores.pow(pow_p)  # (B, K)
    if interest_mask is not None:
        scores = scores.masked_fill(~interest_mask, torch.finfo(scores.dtype).min / 2)
    weights = scores.softmax(dim=-1)  # (B, K)
    return (weights.unsqueeze(-1) * interests).sum(dim=1)  # (B, D)


def hard_interest_readout(interests: Tensor, target: Tensor) -> Tensor:
    """The interest with the largest inner product with the target (ComiRec's training readout).

    Args:
        interests: (B, K, D).
        target: (B, D).

    Returns:
        (B, D); gradients reach the selected interest only.
    """
    scores = (interests @ target.unsqueeze(-1)).squeeze(-1)  # (B, K)
    best = scores.argmax(dim=-1)  # (B,)
    return interests[torch.arange(interests.shape[0], device=interests.device), best]  # (B, D)


def dedup_interest_candidates(ids: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
    """Pools every interest's retrieved items, each item once at its best score.

    Args:
        ids: (B, K, N) long item ids retrieved by each interest; ids <= 0 (padding, or faiss's -1
            for "no result") are invalid.
        scores: (B, K, N) their scores.

    Returns:
        ids: (B, K * N) the pooled ids sorted by score, best first.
        scores: (B, K * N) their scores; -inf for duplicates (all but an item's best copy) and
            invalid ids, which sort last.
    """
    if ids.shape != scores.shape or ids.dim() != 3:
        raise ValueError(
            f"expected ids and scores of one shape (B, K, N), got {tuple(ids.shape)} "
            f"and {tuple(scores.shape)}"
        )
    flat_ids = ids.flatten(1)  # (B, K*N)
    flat_scores = scores.flatten(1).float().masked_fill(flat_ids <= 0, float("-inf"))  # (B, K*N)
    order = flat_scores.argsort(dim=1, descending=True, stable=True)  # (B, K*N)
    flat_ids, flat_scores = flat_ids.gather(1, order), flat_scores.gather(1, order)
    # A stable sort by id keeps equal ids in score order: the first of each run is the best.
    by_id, perm = flat_ids.sort(dim=1, stable=True)  # (B, K*N)
    repeat = torch.zeros_like(by_id, dtype=torch.bool)
    repeat[:, 1:] = by_id[:, 1:] == by_id[:, :-1]
    duplicate = torch.zeros_like(repeat).scatter_(1, perm, repeat)  # (B, K*N) in score order
    flat_scores = flat_scores.masked_fill(duplicate, float("-inf"))
    order = flat_scores.argsort(dim=1, descending=True, stable=True)  # duplicates move last
    return flat_ids.gather(1, order), flat_scores.gather(1, order)


def merge_interest_topk(ids: Tensor, scores: Tensor, *, n: int) -> tuple[Tensor, Tensor]:
    """Merges each interest's top-N into one top-n list per user, without duplicates.

    Multi-interest serving (MIND, ComiRec): every interest vector retrieves its own top-N; the
    user's list is the n best-scoring distinct items among the K * N, an item retrieved by
    several interests counting once at its best score. Vectorized over users.

    Args:
        ids: (B, K, N) long ids per interest (ids <= 0 are invalid and never returned).
        scores: (B, K, N) their scores.
        n: the length of the merged list, <= K * N.

    Returns:
        ids: (B, n) long, best first; -1 where fewer than n valid distinct items exist.
        scores: (B, n) float; -inf at those -1 entries.
    """
    if n > ids.shape[1] * ids.shape[2]:
        raise ValueError(f"n={n} exceeds the K * N = {ids.shape[1] * ids.shape[2]} candidates")
    pooled_ids, pooled_scores = dedup_interest_candidates(ids, scores)  # (B, K*N)
    top_ids, top_scores = pooled_ids[:, :n], pooled_scores[:, :n]  # (B, n)
    return top_ids.masked_fill(torch.isneginf(top_scores), -1), top_scores
