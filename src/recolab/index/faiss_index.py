"""Approximate (or exact) nearest-neighbour search over item embeddings with faiss.

Three of faiss's own indexes (Johnson et al., "Billion-scale similarity search with GPUs"):

- "flat": `IndexFlatIP` / `IndexFlatL2`, exhaustive and exact;
- "ivf": `IndexIVFFlat` over a flat coarse quantizer with `nlist` cells, `nprobe` visited per
  query;
- "hnsw": `IndexHNSWFlat` (Malkov & Yashunin's graph) with `M = hnsw_m` links,
  `efConstruction` and `efSearch`.

Scores are "higher is better" everywhere: inner products for `metric="ip"`, negated squared
distances for `metric="l2"`.

Excluding seen items: the same CSR pair as `recolab.index.exact_topk` (user `u`'s seen ids are
`indices[indptr[u]:indptr[u + 1]]`). `search` over-fetches `k + max_u |seen_u| + 1` neighbours
(the `+ 1` covers the padding id 0, never returned), drops the seen ids of each row with one
vectorized membership test on `(row, id)` keys, and keeps the first k survivors of each row,
which keeps the ranking order. However many items a user has seen, k results come back as long
as the index holds enough items (an approximate index may find fewer: those slots are -1).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

if TYPE_CHECKING:
    import faiss

log = logging.getLogger(__name__)

#: The largest k a faiss GPU index searches for (its k-selection; Johnson et al., section 4.2).
GPU_MAX_K = 2048


def _faiss():
    """faiss, imported when an index is built: `exact_topk` works where faiss is not installed."""
    import faiss

    return faiss


ArrayLike = np.ndarray | torch.Tensor


def _numpy(x: ArrayLike, dtype: type) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=dtype)


class FaissIndex:
    """A faiss index over item vectors, searched with exclusion of seen items.

    Args:
        kind: "flat" (exact), "ivf" or "hnsw".
        metric: "ip" (inner product, the recallers' score) or "l2".
        nlist: IVF cells; None: `4 * sqrt(I)`, capped at `I / 39` so that each cell gets the
            ~39 training points faiss asks for.
        nprobe: IVF cells visited per query (recall vs speed).
        hnsw_m: HNSW links per node.
        ef_construction: HNSW candidate list size while building.
        ef_search: HNSW candidate list size while searching (>= k + the over-fetch helps).
        use_gpu: move the index to all visible GPUs with `faiss.index_cpu_to_all_gpus` when
            faiss was built with GPU support (the `gpu` extra) and sees a GPU; otherwise (or for
            "hnsw", which faiss's GPU code does not run) stay on the CPU and log a warning. A
            GPU index returns at most `GPU_MAX_K` neighbours per query: queries whose over-fetch
            (k + their seen items + 1) needs more are searched on the CPU copy of the index,
            which is kept for them, so the results do not depend on where the index is.
    """

    def __init__(
        self,
        *,
        kind: Literal["flat", "ivf", "hnsw"] = "flat",
        metric: Literal["ip", "l2"] = "ip",
        nlist: int | None = None,
        nprobe: int = 16,
        hnsw_m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 128,
        use_gpu: bool = False,
    ) -> None:
        if kind not in ("flat", "ivf", "hnsw"):
            raise ValueError(f"kind must be 'flat', 'ivf' or 'hnsw', got {kind!r}")
        if metric not in ("ip", "l2"):
            raise ValueError(f"metric must be 'ip' or 'l2', got {metric!r}")
        self.kind = kind
        self.metric = metric
        self.nlist = nlist
        self.nprobe = nprobe
        self.hnsw_m = hnsw_m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.use_gpu = use_gpu
        self.on_gpu = False
        self._index: faiss.Index | None = None
        self._ids: np.ndarray | None = None
        #: The most neighbours `_index` returns per query (None: no limit), and the index that
        #: searches the queries that need more (the CPU copy of a GPU index).
        self._limit: int | None = None
        self._unlimited: faiss.Index | None = None

    @property
    def ntotal(self) -> int:
        """The number of indexed items."""
        return 0 if self._index is None else int(self._index.ntotal)

    def build(self, item_emb: ArrayLike, ids: ArrayLike | None = None) -> FaissIndex:
        """Indexes the item vectors.

        Args:
            item_emb: (I, D) float item vectors (numpy or torch; copied to float32).
            ids: (I,) integer item id of each row; None: the row numbers, which matches
                `all_item_embeddings()` (whose padding row 0 is then indexed but never returned).

        Returns:
            self.
        """
        faiss = _faiss()
        vectors = _numpy(item_emb, np.float32)
        if vectors.ndim != 2:
            raise ValueError(f"expected item_emb (I, D), got shape {vectors.shape}")
        num_items, dim = vectors.shape
        self._ids = np.arange(num_items, dtype=np.int64) if ids is None else _numpy(ids, np.int64)
        if self._ids.shape != (num_items,):
            raise ValueError(f"expected ids ({num_items},), got shape {self._ids.shape}")
        faiss_metric = faiss.METRIC_INNER_PRODUCT if self.metric == "ip" else faiss.METRIC_L2
        if self.kind == "flat":
            index = faiss.IndexFlatIP(dim) if self.metric == "ip" else faiss.IndexFlatL2(dim)
        elif self.kind == "ivf":
            nlist = self.nlist or max(1, min(int(4 * np.sqrt(num_items)), num_items // 39))
            quantizer = faiss.IndexFlatIP(dim) if self.metric == "ip" else faiss.IndexFlatL2(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss_metric)
            index.own_fields = True  # the IVF index frees its quantizer
            quantizer.this.disown()
            index.train(vectors)
            index.nprobe = self.nprobe
        else:
            index = faiss.IndexHNSWFlat(dim, self.hnsw_m, faiss_metric)
            index.hnsw.efConstruction = self.ef_construction
        index.add(vectors)
        if self.kind == "hnsw":
            index.hnsw.efSearch = self.ef_search
        self._index = self._maybe_to_gpu(index)
        return self

    def _maybe_to_gpu(self, index: faiss.Index) -> faiss.Index:
        faiss = _faiss()
        self.on_gpu = False
        self._limit, self._unlimited = None, None
        if not self.use_gpu:
            return index
        num_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        if num_gpus == 0 or not hasattr(faiss, "index_cpu_to_all_gpus"):
            log.warning("use_gpu=True but faiss sees no GPU (faiss-cpu build?): searching on CPU")
            return index
        if self.kind == "hnsw":
            log.warning("faiss has no GPU HNSW index: searching on CPU")
            return index
        self.on_gpu = True
        self._limit, self._unlimited = GPU_MAX_K, index
        return faiss.index_cpu_to_all_gpus(index)

    def search(
        self,
        queries: ArrayLike,
        k: int,
        exclude: tuple[ArrayLike, ArrayLike] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k best items for each query, seen items and the padding id 0 left out.

        Args:
            queries: (U, D) float query vectors.
            k: results per query.
            exclude: CSR `(indptr (U + 1,), indices (nnz,))` of item ids to leave out per query.

        Returns:
            scores: (U, k) float32, best first (higher is better); -inf where nothing was found.
            ids: (U, k) int64 item ids; -1 where nothing was found.
        """
        if self._index is None or self._ids is None:
            raise RuntimeError("call build() before search()")
        q = _numpy(queries, np.float32)
        num_queries = q.shape[0]
        max_seen = 0
        if exclude is not None:
            indptr, indices = _numpy(exclude[0], np.int64), _numpy(exclude[1], np.int64)
            if indptr.shape != (num_queries + 1,):
                raise ValueError(f"expected indptr ({num_queries + 1},), got shape {indptr.shape}")
            lengths = np.diff(indptr)  # (U,)
            max_seen = int(lengths.max(initial=0))
        fetch = min(k + max_seen + 1, self.ntotal)
        scores, positions = self._search(q, fetch, lengths if exclude is not None else None, k)
        if self.metric == "l2":
            scores = -scores
        ids = np.where(positions >= 0, self._ids[np.maximum(positions, 0)], -1)  # (U, fetch)
        drop = ids <= 0  # not found, or the padding id
        if exclude is not None and len(indices):
            stride = int(max(ids.max(), indices.max())) + 1
            rows = np.arange(num_queries, dtype=np.int64)
            seen_keys = np.repeat(rows, lengths) * stride + indices  # (nnz,)
            drop |= np.isin(rows[:, None] * stride + ids, seen_keys)  # (U, fetch)
        # a stable sort on the drop flag moves dropped entries last and keeps ranking order
        keep = np.argsort(drop, axis=1, kind="stable")[:, :k]  # (U, min(k, fetch))
        ids = np.take_along_axis(ids, keep, axis=1)
        scores = np.take_along_axis(scores, keep, axis=1).astype(np.float32)
        dropped = np.take_along_axis(drop, keep, axis=1)
        ids[dropped], scores[dropped] = -1, -np.inf
        if ids.shape[1] < k:  # the index holds fewer than k items
            pad = k - ids.shape[1]
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        return scores, ids

    def _search(
        self, q: np.ndarray, fetch: int, seen: np.ndarray | None, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(U, fetch) raw scores and positions; within the index's limit on the number of
        neighbours, each query gets its own over-fetch `k + seen + 1` (the rest of its row is
        position -1), and the queries that need more than the limit go to the unlimited index."""
        limit = self._limit
        if limit is None or fetch <= limit:
            return self._index.search(q, fetch)
        scores, positions = self._index.search(q, limit)  # (U, limit)
        scores = np.pad(scores, ((0, 0), (0, fetch - limit)), constant_values=np.nan)
        positions = np.pad(positions, ((0, 0), (0, fetch - limit)), constant_values=-1)
        need = np.full(len(q), fetch) if seen is None else np.minimum(k + seen + 1, fetch)
        more = np.flatnonzero(need > limit)  # queries whose seen items could crowd out the top k
        if len(more):
            scores[more], positions[more] = self._unlimited.search(q[more], fetch)
        return scores, positions


def recall_against_exact(index_ids: ArrayLike, exact_ids: ArrayLike) -> float:
    """Mean share of the exact top-k that the index also returned.

    Per query: |index row ∩ exact row| / |exact row|, counting valid ids (> 0) only, averaged
    over queries that have at least one valid exact id.

    Args:
        index_ids: (U, k) ids from the approximate index.
        exact_ids: (U, k) ids from `exact_topk` (or a flat index).

    Returns:
        The mean overlap share in [0, 1].
    """
    approx, exact = _numpy(index_ids, np.int64), _numpy(exact_ids, np.int64)
    if approx.shape[0] != exact.shape[0] or approx.ndim != 2 or exact.ndim != 2:
        raise ValueError(f"expected (U, k) arrays, got shapes {approx.shape} and {exact.shape}")
    stride = int(max(approx.max(initial=0), exact.max(initial=0))) + 1
    rows = np.arange(exact.shape[0], dtype=np.int64)[:, None]
    found = np.isin(rows * stride + exact, (rows * stride + approx)[approx > 0]) & (exact > 0)
    valid = (exact > 0).sum(axis=1)
    has = valid > 0
    return float((found.sum(axis=1)[has] / valid[has]).mean()) if has.any() else 0.0
