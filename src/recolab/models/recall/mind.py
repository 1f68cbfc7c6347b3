"""MIND: Multi-Interest Network with Dynamic routing.

Li et al., "Multi-Interest Network with Dynamic Routing for Recommendation at Tmall", CIKM 2019.
A user is K vectors, one per interest, extracted from the behavior sequence by capsule routing
(behavior-to-interest, B2I). Serving retrieves with every vector and merges the lists
(`merge_interest_topk`); training reads one vector out with label-aware attention.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from recolab.models.blocks import MLP, EmbeddingTables
from recolab.models.recall._blocks import (
    ItemEmbedding,
    Recaller,
    capsule_routing,
    label_aware_attention,
)
from recolab.params import Count, NonNegative, Widths, checked


class MIND(Recaller):
    """Multi-interest extractor with B2I dynamic routing, ReLU layers and label-aware attention.

    - Embedding & pooling: an item is the mean of its id and static feature embeddings; the
      same item embedding serves behaviors and targets.
    - B2I routing (`capsule_routing`): one bilinear map `S` shared by all pairs,
      `u_hat[j|i] = S e_i`; routing logits `b[i, j]` start from a draw of N(0, 1) rather than
      zeros (with a shared `S`, equal logits would give K identical capsules). The draw is made
      once at construction and kept as a buffer (fixed, not learned, saved with the model), so
      serving a user twice gives the same vectors. Positions are right-aligned: logit column -1
      belongs to the most recent behavior. Softmax over the interests, squash, `b += u_j . S e_i`.
    - Dynamic interest number: `K'_u = max(1, min(K, floor(log2 |I_u|)))` with `|I_u|` the
      user's non-padding behaviors; the other `K - K'_u` capsules are switched off in routing.
      `user_embeddings` returns them as copies of interest 0, so every row is a valid query and
      `merge_interest_topk`'s de-duplication makes the copies harmless.
    - ReLU layers: each capsule, concatenated with the user profile embeddings (the optional
      user features), goes through an MLP whose every layer, the output included, is ReLU.
    - Label-aware attention for training: `softmax(pow(V_u^T e_target, p))`, the power on the
      raw inner products as in the paper (`label_aware_attention`). `p = 0` averages the
      interests. An even `p` (the default 2) weighs `|V_u^T e_target| ** p`: an interest
      pointing away from the target weighs as much as one pointing toward it, and a large even
      `p` approaches picking the interest with the largest *absolute* inner product (products
      3, -4, 2 with `p = 8` pick the -4 interest). An odd `p` keeps the sign, and a large odd
      `p` approaches the largest signed product. A large `p` sharpens only products of
      magnitude above 1; smaller ones shrink toward 0, and their weights toward uniform.

    Args:
        num_items: item ids run 1..num_items, 0 is padding.
        dim: embedding and interest width `D`.
        num_interests: the maximum number of interests `K`.
        routing_iters: routing iterations (capsule computations), 3 in the paper.
        pow_p: label-aware attention power `p`, a non-negative integer value (even: by absolute
            inner product, see above).
        history_len: the most recent behaviors routed; also the width of the fixed logits.
        hidden_dims: hidden widths of the ReLU layers after routing.
        user_features: user profile features in the batch, name -> vocabulary size.
        item_features: static item features, name -> ((num_items + 1,) index table, vocab size).
        dynamic_interests: use `K'_u` (True) or always all K interests.
    """

    @checked
    def __init__(
        self,
        *,
        num_items: Count,
        dim: Count = 64,
        num_interests: Count = 4,
        routing_iters: Count = 3,
        pow_p: NonNegative = 2.0,
        history_len: Count = 50,
        hidden_dims: Widths = (128,),
        user_features: Mapping[str, int] | None = None,
        item_features: Mapping[str, tuple[Tensor, int]] | None = None,
        dynamic_interests: bool = True,
    ) -> None:
        super().__init__()
        if float(pow_p) != int(pow_p):
            raise ValueError(f"pow_p must be a non-negative integer value, got {pow_p}")
        user_features = dict(user_features or {})
        self.num_items = num_items
        self.dim = dim
        self.num_interests = num_interests
        self.routing_iters = routing_iters
        self.pow_p = float(pow_p)
        self.history_len = history_len
        self.dynamic_interests = dynamic_interests
        self.item = ItemEmbedding(num_items, dim, item_features)
        self.bilinear = nn.Linear(dim, dim, bias=False)  # S, shared by every (behavior, interest)
        self.register_buffer("routing_logits", torch.randn(num_interests, history_len))  # (K, L)
        self.user_features = EmbeddingTables(user_features, dim)
        width = (1 + len(user_features)) * dim
        self.mlp = MLP(width, hidden_dims, out_dim=dim, final_activation=True)

    def num_active_interests(self, mask: Tensor) -> Tensor:
        """(B,) long `K'_u` from the (B, L) behavior mask."""
        if not self.dynamic_interests:
            return torch.full_like(mask[:, 0], self.num_interests, dtype=torch.long)
        count = mask.sum(dim=1).float()  # (B,)
        return torch.log2(count).floor().clamp(1, self.num_interests).long()  # log2(0) = -inf -> 1

    def interest_capsules(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The routed capsules before the ReLU layers.

        Returns:
            capsules: (B, K, D), zeros for switched-off interests.
            active: (B, K) bool.
        """
        behaviors, mask = self.behaviors(batch)  # (B, L, D), (B, L)
        shared = self.bilinear(behaviors)  # (B, L, D)
        predictions = shared.unsqueeze(1).expand(-1, self.num_interests, -1, -1)  # (B, K, L, D)
        ranks = torch.arange(self.num_interests, device=mask.device)  # (K,)
        active = ranks.unsqueeze(0) < self.num_active_interests(mask).unsqueeze(1)  # (B, K)
        capsules = capsule_routing(
            predictions,
            mask,
            self.routing_logits[:, -mask.shape[1] :],
            iterations=self.routing_iters,
            interest_mask=active,
        )  # (B, K, D)
        return capsules, active

    def _interests(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        capsules, active = self.interest_capsules(batch)  # (B, K, D), (B, K)
        parts = [capsules]
        if len(self.user_features):
            profile = self.user_features(batch).flatten(1)  # (B, F*D)
            parts.append(profile.unsqueeze(1).expand(-1, self.num_interests, -1))  # (B, K, F*D)
        return self.mlp(torch.cat(parts, dim=-1)), active  # (B, K, D), (B, K)

    def user_embeddings(self, batch: Mapping[str, Tensor]) -> Tensor:
        """(B, K, D) interest vectors; switched-off interests repeat interest 0."""
        interests, active = self._interests(batch)  # (B, K, D), (B, K)
        return torch.where(active.unsqueeze(-1), interests, interests[:, :1])  # (B, K, D)

    def training_user_embeddings(
        self, batch: Mapping[str, Tensor], target_item_emb: Tensor
    ) -> Tensor:
        """(B, D) label-aware attention of the active interests over the (B, D) target."""
        interests, active = self._interests(batch)  # (B, K, D), (B, K)
        return label_aware_attention(
            interests, target_item_emb, pow_p=self.pow_p, interest_mask=active
        )  # (B, D)
