"""Two-tower retrieval model.

Yi et al., "Sampling-bias-corrected neural modeling for large corpus item recommendations",
RecSys 2019 (the towers of Covington et al., "Deep neural networks for YouTube
recommendations", RecSys 2016). A user tower and an item tower map their features to one space;
the score is their inner product, so items are served from a nearest-neighbour index. Train it
with `recolab.samplers.InBatchSoftmax` (logQ-corrected in-batch negatives).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recolab.models.blocks import MLP, EmbeddingTables, masked_mean
from recolab.models.recall._blocks import ItemEmbedding, Recaller, recent_history
from recolab.params import Count, Rate, Widths, checked


class TwoTower(Recaller):
    """User tower over user id, user features and pooled history; item tower over id and features.

    User tower: `[e(user_id), e(f) for each user feature, mean of e(h) over the history]`,
    concatenated, then an MLP to `D`. The history shares the item id embedding table with the
    item tower (Covington et al.'s averaged watch history). Item tower: `[e(item_id), e(f) for
    each item feature]`, concatenated, then an MLP to `D`.

    Args:
        num_users: user ids run 1..num_users, 0 is OOV.
        num_items: item ids run 1..num_items, 0 is padding/OOV.
        dim: embedding width of the inputs and of both towers' outputs, `D`.
        hidden_dims: hidden widths of each tower's MLP.
        user_features: extra user sparse features in the batch, name -> vocabulary size (OOV 0
            included).
        item_features: static item features, name -> ((num_items + 1,) long feature index of each
            item, vocabulary size).
        history_len: how many of the most recent history items are pooled.
        dropout: dropout in the towers' hidden layers.
        normalize: L2-normalize both towers' outputs (then pair with a small temperature).
    """

    num_interests = 1

    @checked
    def __init__(
        self,
        *,
        num_users: Count,
        num_items: Count,
        dim: Count = 64,
        hidden_dims: Widths = (128,),
        user_features: Mapping[str, int] | None = None,
        item_features: Mapping[str, tuple[Tensor, int]] | None = None,
        history_len: Count = 50,
        dropout: Rate = 0.0,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        user_features = dict(user_features or {})
        self.num_items = num_items
        self.dim = dim
        self.history_len = history_len
        self.normalize = normalize
        self.user_id = nn.Embedding(num_users + 1, dim)
        self.user_features = EmbeddingTables(user_features, dim)
        self.item = ItemEmbedding(num_items, dim, item_features)
        user_width = (2 + len(user_features)) * dim  # id, features, pooled history
        self.user_tower = MLP(user_width, hidden_dims, out_dim=dim, dropout=dropout)
        self.item_tower = MLP(self.item.num_fields * dim, hidden_dims, out_dim=dim, dropout=dropout)

    def user_embeddings(self, batch: Mapping[str, Tensor]) -> Tensor:
        """(B, D) user vectors from `user_id` (B,), `hist_items` (B, L) and the user features."""
        hist, mask = recent_history(batch, self.history_len)  # (B, L), (B, L)
        history = masked_mean(self.item.ids(hist), mask)  # (B, D)
        parts = [self.user_id(batch["user_id"]), history]  # 2 x (B, D)
        if len(self.user_features):
            parts.append(self.user_features(batch).flatten(1))  # (B, F*D)
        out = self.user_tower(torch.cat(parts, dim=-1))  # (B, D)
        return F.normalize(out, dim=-1) if self.normalize else out

    def item_embeddings(self, item_ids: Tensor) -> Tensor:
        """(N, D) item vectors for ids (N,)."""
        fields = self.item(item_ids)  # (N, 1 + F, D)
        out = self.item_tower(fields.flatten(-2))  # (N, D)
        return F.normalize(out, dim=-1) if self.normalize else out
