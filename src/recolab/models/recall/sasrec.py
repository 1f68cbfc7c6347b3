"""SASRec: self-attentive sequential recommendation, as a recaller.

Kang and McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018. The user is the output of
a causal Transformer encoder over the recent history at its last position; items are scored by
the inner product with the same item embedding that feeds the encoder (sec. III-D, "shared item
embedding"), so serving is a nearest-neighbour search over the item embeddings (`recolab.index`).

Training differs from the paper. The paper trains every position t of a user's sequence at once
with a binary cross-entropy of the next item against one uniformly drawn negative (sec. III-E).
Here the recall pipeline's rows are one (history before the item, item) pair each, and the loss
is the pipeline's sampler: a softmax over the batch's other positives, optionally logQ-corrected
(Yi et al., RecSys 2019) or mixed with corpus draws (Yang et al., WWW 2020); so an item is
contrasted with hundreds of negatives, not one, and popular items are not over-used as
negatives once logQ corrects for them. Only the last position of each row is trained. That
loses no supervision: the data module (`recolab.data.retrieval`) makes one row per training
interaction, with the history strictly before it, so every position of every training sequence
is a target once per epoch, as in the paper; what it costs is compute (a sequence's prefix is
encoded once per row, not once per sequence), and it keeps the pipeline's one-target-per-row
batch and samplers unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from recolab.models.recall._blocks import ItemEmbedding, Recaller, recent_history
from recolab.params import Count, Rate, checked


class CausalSelfAttention(nn.Module):
    """`S = softmax(Q K^T / sqrt(d)) V` with `Q, K, V = X W^Q, X W^K, X W^V` (sec. III-B).

    No biases and no output projection, as in the paper's equation; with several heads, each
    attends in its own `D / heads` slice of the projections (scaled by `sqrt(D / heads)`) and the
    heads' outputs are concatenated.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        """(B, L, D) -> (B, L, D); `allowed` (B, L, L) bool: query i may read key j."""
        b, length, d = x.shape
        heads = self.num_heads

        def split(t: Tensor) -> Tensor:
            return t.view(b, length, heads, d // heads).transpose(1, 2)  # (B, h, L, D/h)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // heads)  # (B, h, L, L)
        scores = scores.masked_fill(~allowed.unsqueeze(1), float("-inf"))
        out = scores.softmax(dim=-1) @ v  # (B, h, L, D/h)
        return out.transpose(1, 2).reshape(b, length, d)  # (B, L, D)


class SASRecBlock(nn.Module):
    """One self-attention block (sec. III-B, III-C): causal self-attention, then the point-wise
    feed-forward `FFN(s) = ReLU(s W1 + b1) W2 + b2`, each as `x + Dropout(g(LayerNorm(x)))`."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = CausalSelfAttention(dim, num_heads)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, allowed: Tensor, keep: Tensor) -> Tensor:
        """(B, L, D) -> (B, L, D); `keep` (B, L, 1) zeroes the padded positions again."""
        x = x + self.dropout(self.attention(self.attention_norm(x), allowed))  # (B, L, D)
        x = x + self.dropout(self.ffn(self.ffn_norm(x)))  # (B, L, D)
        return x * keep


class SASRec(Recaller):
    """Causal self-attention over the history; the user is the last real position's output.

    - Embedding (sec. III-A): `E_i = M_{s_i} + P_i`, `M` the item embedding (the mean of the id
      and static feature embeddings, `ItemEmbedding`), `P` a learned positional embedding of
      `history_len` rows. Histories are right-aligned (left-padded, most recent last, as the data
      module gives them), so the most recent behavior always takes `P` row `history_len - 1`,
      whatever the padding. Padded positions are zero vectors, as in the paper; dropout on `E`.
    - Blocks (sec. III-B, III-C): `num_blocks` of `SASRecBlock`. Causality: position i attends to
      the positions j <= i that hold a behavior (and to itself, so a padded position, zeroed after
      every block, never reads an empty row), so a later behavior never changes an earlier
      output and padding never changes a real position's.
    - Output: a final layer norm (the pre-norm blocks of sec. III-C leave the residual stream
      unnormalized; pre-norm Transformers end with one) at the last position that holds a
      behavior (a held-out item out of the vocabulary reads as padding and is skipped). A row without any behavior (each user's first training interaction) gets a
      learned vector instead, which the paper, never predicting a sequence's first item, lacks.
    - Prediction (sec. III-D): `r = F_t M_i^T`, scored with the input item embedding `M`.

    No user embedding is added: the paper found that an explicit one did not help (sec. III-D).
    Training: see the module docstring.

    Args:
        num_items: item ids run 1..num_items, 0 is padding.
        history_len: the most recent behaviors encoded, the paper's maximum length `n`.
        dim: embedding width `D`, also the attention and feed-forward width.
        num_blocks: self-attention blocks `b`.
        num_heads: attention heads (the paper uses one); must divide `dim`.
        dropout: dropout rate on the embeddings and on every block's two sub-layers.
        item_features: static item features, name -> ((num_items + 1,) index table, vocab size).
    """

    num_interests = 1

    @checked
    def __init__(
        self,
        *,
        num_items: Count,
        history_len: Count = 50,
        dim: Count = 64,
        num_blocks: Count = 2,
        num_heads: Count = 1,
        dropout: Rate = 0.2,
        item_features: Mapping[str, tuple[Tensor, int]] | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide dim ({dim})")
        self.num_items = num_items
        self.history_len = history_len
        self.dim = dim
        self.item = ItemEmbedding(num_items, dim, item_features)
        self.position = nn.Embedding(history_len, dim)
        self.embedding_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(SASRecBlock(dim, num_heads, dropout) for _ in range(num_blocks))
        self.final_norm = nn.LayerNorm(dim)
        self.empty = nn.Parameter(torch.randn(dim))

    def sequence_outputs(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(B, L, D) every position's output (final norm applied) and the (B, L) behavior mask."""
        hist, mask = recent_history(batch, self.history_len)  # (B, L), (B, L)
        length = hist.shape[1]
        keep = mask.unsqueeze(-1).to(self.position.weight.dtype)  # (B, L, 1)
        positions = self.position.weight[self.history_len - length :]  # (L, D) right-aligned
        x = self.embedding_dropout(self.item_embeddings(hist) + positions) * keep  # (B, L, D)
        causal = torch.ones(length, length, dtype=torch.bool, device=hist.device).tril()  # (L, L)
        self_only = torch.eye(length, dtype=torch.bool, device=hist.device)  # (L, L)
        allowed = (causal & mask.unsqueeze(1)) | self_only  # (B, L, L) query i, key j
        for block in self.blocks:
            x = block(x, allowed, keep)  # (B, L, D)
        return self.final_norm(x), mask

    def user_embeddings(self, batch: Mapping[str, Tensor]) -> Tensor:
        """(B, D) the output at each row's last behavior; the learned `empty` vector without one."""
        out, mask = self.sequence_outputs(batch)  # (B, L, D), (B, L)
        steps = torch.arange(1, mask.shape[1] + 1, device=mask.device)  # (L,)
        last = (mask * steps).argmax(dim=1)  # (B,) index of the last behavior (0 if none)
        users = out[torch.arange(len(out), device=out.device), last]  # (B, D)
        return torch.where(mask.any(dim=1, keepdim=True), users, self.empty.expand_as(users))
