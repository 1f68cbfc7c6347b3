"""Exact brute-force inner-product top-k, the reference that approximate indexes are checked
against, with the user's already-seen items excluded.

Exclusion format, shared with `FaissIndex.search`: a CSR pair `(indptr, indices)`, user `u`'s
seen item ids being `indices[indptr[u]:indptr[u + 1]]` (`indptr` (U + 1,), `indices` (nnz,),
both integer). Build it from (user row, item id) pairs with `csr_from_pairs`.

Shapes: U users (queries), I items, D embedding, K top-k.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Scores per block of `exact_topk` on a GPU when no batch size is given (1 GiB of float32).
GPU_BLOCK_SCORES = 1 << 28


def csr_from_pairs(rows: Tensor, items: Tensor, *, num_rows: int) -> tuple[Tensor, Tensor]:
    """The exclusion CSR pair from (query row, item id) pairs, in any order.

    Args:
        rows: (nnz,) long query row of each pair, in [0, num_rows).
        items: (nnz,) long item id of each pair.
        num_rows: U, the number of query rows.

    Returns:
        indptr: (U + 1,) long.
        indices: (nnz,) long item ids grouped by row.
    """
    order = torch.argsort(rows, stable=True)
    counts = torch.bincount(rows, minlength=num_rows)  # (U,)
    indptr = torch.zeros(num_rows + 1, dtype=torch.long, device=rows.device)
    indptr[1:] = counts.cumsum(0)
    return indptr, items[order].long()


@torch.no_grad()
def exact_topk(
    user_emb: Tensor,
    item_emb: Tensor,
    *,
    k: int,
    exclude: tuple[Tensor, Tensor] | None = None,
    batch_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Top-k items by inner product for every user, computed exactly in blocks of users.

    Item ids are row indices of `item_emb`, which follows the recallers' `all_item_embeddings`
    layout: row 0 is padding and is always excluded. Excluded items get a score of -inf inside
    each (users x items) block, scattered in one indexing operation per block, before `topk`.

    Args:
        user_emb: (U, D) query vectors.
        item_emb: (I, D) item vectors, row = item id.
        k: how many items per user, <= I - 1.
        exclude: CSR `(indptr (U + 1,), indices (nnz,))` of item ids to leave out per user, on
            any device; None: only the padding row is left out.
        batch_size: users per block; memory is `batch_size * I` scores. None: 1024 on a CPU;
            on a GPU as many as keep a block within `GPU_BLOCK_SCORES` scores (1 GiB of float32),
            which makes few, large products. Blocks change the scores by rounding at most (the
            product's kernel may differ with its shape), not the ranking of distinct scores.

    Returns:
        scores: (U, K) float, best first; -inf where fewer than k items remain.
        ids: (U, K) long item ids; -1 at those -inf entries.
    """
    num_users, num_items = user_emb.shape[0], item_emb.shape[0]
    if user_emb.dim() != 2 or item_emb.dim() != 2 or user_emb.shape[1] != item_emb.shape[1]:
        raise ValueError(
            f"expected user_emb (U, D) and item_emb (I, D), got {tuple(user_emb.shape)} "
            f"and {tuple(item_emb.shape)}"
        )
    if not 1 <= k <= num_items - 1:
        raise ValueError(f"k must be in [1, {num_items - 1}] for {num_items} item rows, got {k}")
    if exclude is not None:
        indptr, indices = (t.to(user_emb.device, torch.long) for t in exclude)
        if indptr.shape != (num_users + 1,):
            raise ValueError(f"expected indptr ({num_users + 1},), got {tuple(indptr.shape)}")
    # Scores in float32 even inside an evaluation step under `trainer.precision=bf16-mixed`:
    # autocast would round them to bfloat16 (8 significant bits), ranking ties where a faiss
    # index (float32) sees none, and popularity counts above 256 no longer apart.
    if batch_size is None:
        batch_size = (
            1024 if user_emb.device.type == "cpu" else max(1, GPU_BLOCK_SCORES // num_items)
        )
    dtype = torch.promote_types(torch.promote_types(user_emb.dtype, item_emb.dtype), torch.float32)
    user_emb, item_emb = user_emb.to(dtype), item_emb.to(dtype)
    all_scores, all_ids = [], []
    for start in range(0, num_users, batch_size):
        end = min(start + batch_size, num_users)
        with torch.autocast(user_emb.device.type, enabled=False):
            scores = user_emb[start:end] @ item_emb.T  # (b, I)
        scores[:, 0] = float("-inf")
        if exclude is not None:
            lengths = indptr[start + 1 : end + 1] - indptr[start:end]  # (b,)
            rows = torch.repeat_interleave(torch.arange(end - start, device=scores.device), lengths)
            scores[rows, indices[indptr[start] : indptr[end]]] = float("-inf")
        top_scores, top_ids = scores.topk(k, dim=1)  # (b, K)
        all_scores.append(top_scores)
        all_ids.append(top_ids.masked_fill(torch.isneginf(top_scores), -1))
    return torch.cat(all_scores), torch.cat(all_ids)
