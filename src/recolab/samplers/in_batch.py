"""In-batch softmax with sampling-bias (logQ) correction and accidental-hit masking.

Yi et al., "Sampling-bias-corrected neural modeling for large corpus item recommendations",
RecSys 2019 (DESIGN.md section 4). Each row `i` of a batch is a (user, positive item) pair; the
other rows' positives serve as row `i`'s negatives, so the candidate set is the batch's items:

    logit[i, j] = s(q_i, v_j) / tau - log p_j          (log p_j only when `log_q` is given)

where `p_j` is the probability that item `j` appears in a batch (a popular item shows up as a
negative far more often than a rare one; subtracting `log p_j` undoes that bias). The target of
row `i` is column `i`. A column `j != i` holding the same item id as row `i`'s positive is an
*accidental hit*: it is the positive again, not a negative, and is masked out of the softmax.

Under DDP (`in_batch_softmax_loss(sync_distributed=True)`, the default) the candidate set is the
global batch, every rank's positives, on which the streaming `p_j` is estimated: W ranks of
batch B compute the loss and gradient of one process of batch W * B.

Shapes: B batch, D embedding, N corpus negatives.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from recolab.samplers.distributed import GlobalPositives, global_positives

Similarity = Literal["dot", "cosine"]


def mask_value(dtype: torch.dtype) -> float:
    """The large negative that stands for "-inf" in masked logits.

    Half of the dtype's lowest finite value: `exp` of it is exactly 0, yet it stays finite under
    fp16/bf16 after the small shifts a softmax applies, and never produces NaN (unlike -inf times
    a zero weight, or a row of all -inf).
    """
    return torch.finfo(dtype).min / 2


def similarity_matrix(
    user_emb: Tensor, item_emb: Tensor, *, similarity: Similarity = "dot"
) -> Tensor:
    """Scores of every user row against every item row.

    Args:
        user_emb: (B, D) query embeddings.
        item_emb: (M, D) item embeddings.
        similarity: "dot" (inner product) or "cosine" (inner product of L2-normalized vectors).

    Returns:
        (B, M) similarity scores.
    """
    if user_emb.dim() != 2 or item_emb.dim() != 2 or user_emb.shape[1] != item_emb.shape[1]:
        raise ValueError(
            f"expected user_emb (B, D) and item_emb (M, D), got {tuple(user_emb.shape)} "
            f"and {tuple(item_emb.shape)}"
        )
    if similarity == "cosine":
        user_emb = F.normalize(user_emb, dim=-1)
        item_emb = F.normalize(item_emb, dim=-1)
    elif similarity != "dot":
        raise ValueError(f"similarity must be 'dot' or 'cosine', got {similarity!r}")
    return user_emb @ item_emb.T  # (B, M)


def accidental_hits(row_ids: Tensor, col_ids: Tensor, *, exclude_diagonal: bool) -> Tensor:
    """Where a candidate column holds the row's own positive item.

    Args:
        row_ids: (B,) each row's positive item id.
        col_ids: (M,) the item id of each candidate column.
        exclude_diagonal: True when the columns are the batch's own positives (M == B), so that
            column `i` of row `i`, the target itself, is not reported as a hit.

    Returns:
        (B, M) bool, True at the accidental hits.
    """
    hits = row_ids.unsqueeze(1) == col_ids.unsqueeze(0)  # (B, M)
    if exclude_diagonal:
        hits.fill_diagonal_(False)
    return hits


def in_batch_logits(
    user_emb: Tensor,
    item_emb: Tensor,
    item_ids: Tensor,
    *,
    temperature: float = 0.05,
    similarity: Similarity = "dot",
    log_q: Tensor | None = None,
    mask_accidental_hits: bool = True,
) -> Tensor:
    """The corrected, masked in-batch logits whose diagonal holds each row's target.

    Args:
        user_emb: (B, D) user (query) embeddings.
        item_emb: (B, D) embeddings of each row's positive item.
        item_ids: (B,) long, the positive item ids (used to find accidental hits).
        temperature: softmax temperature `tau`; scores are divided by it.
        similarity: "dot" or "cosine".
        log_q: (B,) log of the probability that each row's item appears in a batch, e.g.
            `StreamingFrequencyEstimator.log_q(item_ids)`; subtracted from its column (the
            diagonal included, as in Yi et al.). None: no correction.
        mask_accidental_hits: replace `logit[i, j]` by `mask_value` where `j != i` and
            `item_ids[j] == item_ids[i]`.

    Returns:
        (B, B) logits; row `i`'s target is column `i`.
    """
    check_positives(user_emb, item_emb, item_ids, log_q)
    return positive_logits(
        user_emb,
        item_emb,
        item_ids,
        log_q,
        offset=0,
        temperature=temperature,
        similarity=similarity,
        mask_accidental_hits=mask_accidental_hits,
    )


def positive_logits(
    user_emb: Tensor,
    item_emb: Tensor,
    item_ids: Tensor,
    log_q: Tensor | None,
    *,
    offset: int,
    temperature: float,
    similarity: Similarity,
    mask_accidental_hits: bool,
) -> Tensor:
    """In-batch logits of `B` rows against `M >= B` positives, row `i`'s own at `offset + i`.

    `M > B` under DDP: the columns are the global batch's positives (`global_positives`) and the
    rows this rank's; `in_batch_logits` is the one-process case, `M == B`, `offset == 0`.

    Returns:
        (B, M) logits, corrected by `log_q` (M,) when given, accidental hits masked.
    """
    logits = similarity_matrix(user_emb, item_emb, similarity=similarity) / temperature  # (B, M)
    if log_q is not None:
        logits = logits - log_q.to(logits.dtype).unsqueeze(0)  # (B, M)
    if mask_accidental_hits:
        rows = torch.arange(user_emb.shape[0], device=logits.device)  # (B,)
        hits = accidental_hits(item_ids[offset + rows], item_ids, exclude_diagonal=False)
        hits[rows, offset + rows] = False  # each row's target is not a hit
        logits = logits.masked_fill(hits, mask_value(logits.dtype))
    return logits


def in_batch_softmax_loss(
    user_emb: Tensor,
    item_emb: Tensor,
    item_ids: Tensor,
    *,
    temperature: float = 0.05,
    similarity: Similarity = "dot",
    log_q: Tensor | None = None,
    mask_accidental_hits: bool = True,
    sync_distributed: bool = True,
) -> Tensor:
    """Mean cross-entropy of the in-batch softmax, each row's own item as its target.

    Arguments as in `in_batch_logits`, and:
        sync_distributed: under an initialized `torch.distributed` group, each rank's rows run
            their softmax over every rank's positives (gathered with their gradients), the batch
            on which the streaming `p_j` is estimated; the loss is then scaled so that DDP's
            gradient average is the gradient of one process holding the global batch, and does
            not depend on the number of ranks (see `recolab.samplers.distributed`). False: each
            rank's local batch alone.

    Returns:
        Scalar loss, `mean_i -log softmax(logits[i])[i]` (under DDP: this rank's share of the
        global mean; the ranks' values average to it).
    """
    check_positives(user_emb, item_emb, item_ids, log_q)
    pos = global_positives(item_emb, item_ids, log_q, sync_distributed=sync_distributed)
    logits = positive_logits(
        user_emb,
        pos.emb,
        pos.ids,
        pos.log_q,
        offset=pos.offset,
        temperature=temperature,
        similarity=similarity,
        mask_accidental_hits=mask_accidental_hits,
    )  # (B, M)
    return global_cross_entropy(logits, pos)


def global_cross_entropy(logits: Tensor, pos: GlobalPositives) -> Tensor:
    """Cross-entropy of this rank's rows, row `i`'s target column `pos.offset + i`, as its share
    of the global batch's mean (the plain mean on one process)."""
    target = pos.offset + torch.arange(logits.shape[0], device=logits.device)  # (B,)
    if pos.world == 1:
        return F.cross_entropy(logits.float(), target)
    return F.cross_entropy(logits.float(), target, reduction="sum") * pos.loss_scale


def check_positives(
    user_emb: Tensor,
    item_emb: Tensor,
    item_ids: Tensor,
    log_q: Tensor | None,
    *,
    names: tuple[str, str, str] = ("item_emb", "item_ids", "log_q"),
) -> None:
    """Raises ValueError unless the positives and their corrections have one row per user row."""
    batch = user_emb.shape[0]
    if item_emb.shape[0] != batch or item_ids.shape != (batch,):
        raise ValueError(
            f"expected {names[0]} ({batch}, D) and {names[1]} ({batch},), got "
            f"{tuple(item_emb.shape)} and {tuple(item_ids.shape)}"
        )
    if log_q is not None and log_q.shape != (batch,):
        raise ValueError(f"expected {names[2]} ({batch},), got {tuple(log_q.shape)}")
