"""Top-K retrieval metrics: recall@K, NDCG@K, hit rate@K and MRR, all from one rank array.

`ranks_of_targets` finds, for every held-out target of every user, its 1-based rank in the
user's retrieved list; every metric is a reduction of that (U, M) array. The retrieved lists are
final: excluding the user's own training items is the job of whoever builds `topk`.

Conventions shared by every function here:

- `topk` (U, K') holds item ids per user, best first; `targets` (U, M) holds held-out item ids
  per user. Negative ids are padding (-1 by convention) in both.
- An id repeated in a row of `targets` is one target; an id repeated in a row of `topk` counts
  at its first (best) rank only.
- Users without any target are left out; every other user weighs the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recolab.metrics import _checks as C


@dataclass(frozen=True)
class RetrievalMetrics:
    """All retrieval metrics at one K, with the users they cover.

    Attributes:
        k: the cut-off K.
        recall: mean over users of |hits in top K| / |targets|.
        ndcg: mean over users of DCG@K / IDCG@K (binary gains).
        hit_rate: share of users with at least one hit in top K.
        mrr: mean over users of 1 / rank of the first hit in the whole list (0 if none).
        num_users: rows of `topk`.
        num_users_used: users with at least one target.
        num_users_left_out: users without a target (all padding).
        per_user: every user's own values (`PerUser`), which the metrics are the uniform mean
            of; not part of equality.
    """

    k: int
    recall: float
    ndcg: float
    hit_rate: float
    mrr: float
    num_users: int
    num_users_used: int
    num_users_left_out: int
    per_user: PerUser | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, eq=False)
class PerUser:
    """Each user's (row of `topk`'s) recall, NDCG, hit and reciprocal rank at one K.

    The metrics of `RetrievalMetrics` are the plain means of these arrays over the users with a
    target, computed from these very arrays; users without a target hold nan.

    Attributes:
        targets: (U,) int64 distinct targets per user (0: left out).
        recall: (U,) float64.
        ndcg: (U,) float64.
        hit: (U,) float64, 1.0 or 0.0.
        reciprocal_rank: (U,) float64, 1 / rank of the first hit in the whole list (0 if none).
    """

    targets: np.ndarray
    recall: np.ndarray
    ndcg: np.ndarray
    hit: np.ndarray
    reciprocal_rank: np.ndarray


def _as_ids(name: str, x: Any) -> np.ndarray:
    a = C.to_numpy(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (users, items), got shape {a.shape}")
    if a.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer item ids, got dtype {a.dtype}")
    if a.dtype.kind == "u" and a.size and a.max() > np.iinfo(np.int64).max:
        # As int64 they would wrap to negative ids, which mean padding: dropped silently.
        raise ValueError(
            f"{name} must hold item ids below 2**63 (int64), got {int(a.max())} in dtype "
            f"{a.dtype}: keep 63 bits of a 64-bit hash"
        )
    return a.astype(np.int64, copy=False)


def _check_inputs(topk: Any, targets: Any, k: int | None) -> tuple[np.ndarray, np.ndarray]:
    top, tgt = _as_ids("topk", topk), _as_ids("targets", targets)
    shapes = f"topk {top.shape} and targets {tgt.shape}"
    if top.shape[0] != tgt.shape[0]:
        raise ValueError(f"topk and targets must have the same number of users, got {shapes}")
    if top.shape[0] == 0 or top.shape[1] == 0 or tgt.shape[1] == 0:
        raise ValueError(f"topk and targets must be non-empty, got {shapes}")
    if k is not None:
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if top.shape[1] < k:
            raise ValueError(
                f"topk holds {top.shape[1]} items per user, fewer than k={k}: {shapes}"
            )
    return top, tgt


def ranks_of_targets(topk: Any, targets: Any) -> np.ndarray:
    """The 1-based rank in `topk` of every target, the one array all retrieval metrics reduce.

    Args:
        topk: (U, K') retrieved item ids per user, best first; negative ids are padding.
        targets: (U, M) held-out item ids per user; negative ids are padding.

    Returns:
        (U, M) int64: r >= 1 where the target is the r-th item of the user's list, 0 where it was
        not retrieved, -1 for padding and for repeats of an id earlier in the same row.

    Raises:
        ValueError: on non-2-D or non-integer input, different numbers of users, or empty input.
    """
    top, tgt = _check_inputs(topk, targets, None)
    users, width = top.shape
    ranks = np.full(tgt.shape, -1, dtype=np.int64)
    top_ok, tgt_ok = top >= 0, tgt >= 0
    if not tgt_ok.any():
        return ranks
    # One integer key per (user, item): user * span + item, or dense item codes if that overflows.
    items = np.concatenate([top[top_ok], tgt[tgt_ok]])
    lo, hi = int(items.min()), int(items.max())
    if users * (hi - lo + 1) < 1 << 62:
        code_top, code_tgt, span = top - lo, tgt - lo, hi - lo + 1
    else:
        uniq = np.unique(items)
        code_top, code_tgt = np.searchsorted(uniq, top), np.searchsorted(uniq, tgt)
        span = uniq.shape[0]
    user = np.arange(users, dtype=np.int64)[:, None]
    key_top = (user * span + code_top)[top_ok]  # (T,) row-major: a user's items best first
    rank_top = np.broadcast_to(np.arange(1, width + 1), top.shape)[top_ok]  # (T,)
    # First (best) rank of each retrieved (user, item): stable sort keeps the best rank first.
    o = np.argsort(key_top, kind="stable")
    key_top, rank_top = key_top[o], rank_top[o]
    first = np.ones(key_top.shape[0], dtype=bool)
    first[1:] = key_top[1:] != key_top[:-1]
    key_top, rank_top = key_top[first], rank_top[first]
    # A target id counts once per user: keep its first slot.
    key_tgt = user * span + code_tgt  # (U, M)
    flat = np.flatnonzero(tgt_ok.ravel())
    _, keep = np.unique(key_tgt.ravel()[flat], return_index=True)
    slots = flat[keep]
    key = key_tgt.ravel()[slots]
    if key_top.shape[0] == 0:
        ranks.ravel()[slots] = 0
        return ranks
    at = np.minimum(np.searchsorted(key_top, key), key_top.shape[0] - 1)
    ranks.ravel()[slots] = np.where(key_top[at] == key, rank_top[at], 0)
    return ranks


def _reduce(ranks: np.ndarray, k: int) -> RetrievalMetrics:
    num_targets = np.count_nonzero(ranks >= 0, axis=1)  # (U,)
    used = num_targets > 0
    r = ranks[used]  # (U', M)
    n_t = num_targets[used]
    hit_k = (r >= 1) & (r <= k)  # (U', M)
    gains = np.where(hit_k, 1.0 / np.log2(np.maximum(r, 1) + 1.0), 0.0)
    ideal = np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))  # (k,) IDCG for 1..k targets
    reciprocal = np.where(r >= 1, 1.0 / np.maximum(r, 1), 0.0).max(axis=1)  # 1 / first hit
    u = int(used.sum())
    per_user = {
        "recall": hit_k.sum(axis=1) / np.maximum(n_t, 1),
        "ndcg": gains.sum(axis=1) / ideal[np.minimum(n_t, k) - 1],
        "hit": hit_k.any(axis=1).astype(np.float64),
        "reciprocal_rank": reciprocal,
    }  # each (U',)

    def mean(x: np.ndarray) -> float:
        return float(x.mean()) if u else float("nan")

    def every_user(x: np.ndarray) -> np.ndarray:
        out = np.full(ranks.shape[0], np.nan)  # (U,)
        out[used] = x
        return out

    return RetrievalMetrics(
        k=k,
        recall=mean(per_user["recall"]),
        ndcg=mean(per_user["ndcg"]),
        hit_rate=mean(per_user["hit"]),
        mrr=mean(per_user["reciprocal_rank"]),
        num_users=int(ranks.shape[0]),
        num_users_used=u,
        num_users_left_out=int(ranks.shape[0] - u),
        per_user=PerUser(
            targets=num_targets.astype(np.int64),
            **{name: every_user(x) for name, x in per_user.items()},
        ),
    )


def retrieval_details(topk: Any, targets: Any, *, k: int) -> RetrievalMetrics:
    """Recall@K, NDCG@K, hit rate@K and MRR in one pass, with how many users they cover.

    Definitions (per user with at least one target; then a uniform mean over those users):
    recall@K = |targets in top K| / |targets| (not divided by min(|targets|, K), so a user with
    more than K targets cannot reach 1); hit rate@K = 1 if any target is in the top K;
    NDCG@K = DCG / IDCG with DCG = sum over hits in the top K of 1 / log2(rank + 1) and IDCG the
    same sum over min(|targets|, K) hits at ranks 1, 2, ...; MRR = 1 / rank of the first target
    anywhere in the K' retrieved items, 0 if none (MRR ignores k).

    Args:
        topk: (U, K') retrieved item ids per user, best first, K' >= k; negative ids are padding.
        targets: (U, M) held-out item ids per user, padded with -1.
        k: the cut-off K.

    Returns:
        A RetrievalMetrics; its metrics are nan if no user has a target.

    Raises:
        ValueError: on non-2-D or non-integer input, different numbers of users, empty input,
            k < 1, or K' < k (quoting both shapes).
    """
    _check_inputs(topk, targets, k)
    return _reduce(ranks_of_targets(topk, targets), int(k))


def recall_at_k(topk: Any, targets: Any, *, k: int) -> float:
    """Recall@K: mean over users of |targets in top K| / |targets| (not / min(|targets|, K)).

    Arguments, the users averaged (those with a target, each weighing the same; nan if none) and
    the ValueErrors as `retrieval_details`, which also reports how many users were left out.
    """
    return retrieval_details(topk, targets, k=k).recall


def ndcg_at_k(topk: Any, targets: Any, *, k: int) -> float:
    """NDCG@K with binary gains: DCG = sum over hits in the top K of 1 / log2(rank + 1), over
    IDCG = the same for min(|targets|, K) hits at ranks 1, 2, ...

    Arguments, users and ValueErrors as `recall_at_k`.
    """
    return retrieval_details(topk, targets, k=k).ndcg


def hit_rate_at_k(topk: Any, targets: Any, *, k: int) -> float:
    """Hit rate@K: share of users with at least one target in the top K.

    Arguments, users and ValueErrors as `recall_at_k`.
    """
    return retrieval_details(topk, targets, k=k).hit_rate


def mrr(topk: Any, targets: Any) -> float:
    """MRR: mean over users of 1 / rank of the first target among all K' items (0 if none).

    Args:
        topk: (U, K') retrieved item ids per user, best first; negative ids are padding.
        targets: (U, M) held-out item ids per user, padded with -1; repeats count once.

    Returns:
        The mean over users with at least one target (each weighing the same); nan if none.

    Raises:
        ValueError: as `retrieval_details` (there is no k).
    """
    _check_inputs(topk, targets, None)
    return _reduce(ranks_of_targets(topk, targets), 1).mrr
