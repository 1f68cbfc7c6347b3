"""Serving recallers: a faiss index over item vectors, and an exact top-k to check it against.

    items = model.all_item_embeddings()                       # (num_items + 1, D), row 0 padding
    index = FaissIndex(kind="hnsw").build(items)              # ids = row numbers = item ids
    scores, ids = index.search(users, k=50, exclude=(indptr, indices))
    exact_scores, exact_ids = exact_topk(users, items, k=50, exclude=(indptr, indices))
    recall_against_exact(ids, exact_ids)                      # share of the exact top-50 found

Seen items are excluded with a CSR pair `(indptr (U + 1,), indices (nnz,))`: row `u`'s ids are
`indices[indptr[u]:indptr[u + 1]]` (`csr_from_pairs` builds it). The padding id 0 is never
returned; missing results are id -1 with score -inf.
"""

from recolab.index.exact import csr_from_pairs, exact_topk
from recolab.index.faiss_index import FaissIndex, recall_against_exact

__all__ = ["FaissIndex", "csr_from_pairs", "exact_topk", "recall_against_exact"]
