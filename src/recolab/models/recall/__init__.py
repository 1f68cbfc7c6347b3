"""Recallers: models that embed users and items in one space for nearest-neighbour retrieval.

Every recaller is a plain `nn.Module` with this interface (the recall pipeline relies on it):

- `num_interests: int`, 1 for single-interest models (two-tower), K for multi-interest ones.
- `user_embeddings(batch) -> Tensor`, the serving vectors: (B, D) when `num_interests == 1`,
  (B, K, D) otherwise. `batch` is a `dict[str, Tensor]` with `"user_id"` (B,) long,
  `"hist_items"` (B, L) long (most recent last, left-padded with 0) and any user sparse features
  the model was built with, each (B,) long. `forward(batch)` is the same call.
- `item_embeddings(item_ids) -> Tensor`, (N,) long ids -> (N, D).
- `all_item_embeddings() -> Tensor`, (num_items + 1, D) for ids 0..num_items, to build the
  index; row 0 is padding/OOV and must never be retrieved (`recolab.index.exact_topk` skips it).
  Call it in eval mode; it runs without gradients, in chunks.
- `training_user_embeddings(batch, target_item_emb) -> Tensor`, (B, D): the one user vector the
  training loss scores against, given the (B, D) embeddings of the batch's positives
  `batch["item_id"]`. Two-tower: its serving vector; MIND: label-aware attention over the
  interests with power p; ComiRec: the interest with the largest inner product with the target.

`recall._blocks.Recaller` holds what the three share (items embedded by `ItemEmbedding`, every
item's vector in chunks, `forward`); a new recaller subclasses it and defines `user_embeddings`.

A training step (`sampler`: a `recolab.samplers` softmax the pipeline is given):

    v = model.item_embeddings(batch["item_id"])                         # (B, D)
    u = model.training_user_embeddings(batch, v)                        # (B, D)
    loss = sampler(u, v, batch["item_id"], model.item_embeddings)

Multi-interest serving: each of the K vectors retrieves its top-N, then `merge_interest_topk`
(best score, de-duplicated) or ComiRec's `aggregate` (diversity-controlled) makes one list.

Ids: items 1..num_items and users 1..num_users, 0 is padding/OOV. Sparse feature vocabulary
sizes count the OOV bucket 0. Static item features are `name -> ((num_items + 1,) long feature
index per item, vocabulary size)`, kept as buffers.
"""

from recolab.models.recall._blocks import merge_interest_topk
from recolab.models.recall.comirec import ComiRecDR, ComiRecSA, aggregate
from recolab.models.recall.mind import MIND
from recolab.models.recall.sasrec import SASRec
from recolab.models.recall.two_tower import TwoTower

__all__ = [
    "MIND",
    "SASRec",
    "ComiRecDR",
    "ComiRecSA",
    "TwoTower",
    "aggregate",
    "merge_interest_topk",
]
