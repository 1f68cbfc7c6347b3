"""Target attention of the Deep Interest Network (Zhou et al., "Deep Interest Network for
Click-Through Rate Prediction", KDD 2018), as the pooling of a ranker's history feature.

The user's history e_1..e_L is pooled with weights that depend on the candidate item v_a
(the paper's eq. 3):

    v_U(a) = sum_j a(e_j, v_a) e_j

The activation unit a(., .) (the paper's Fig. 2) is an MLP over the history item, the candidate,
their difference and their element-wise product (the "out product" features),
[e_j, v_a, e_j - v_a, e_j * v_a], (4D,) -> hidden layers with PReLU -> one scalar. PReLU is one of
the two activations the paper uses (Dice, its Sec. 4.3, is not implemented here). As the paper
says, the weights are used raw: "normalization with softmax on the output of a(.) is abandoned",
so the pooled vector's scale carries how strongly the history speaks to the candidate. Padding
positions get weight 0.

A ranker reads it through its feature embedding (`FeatureEmbedding(pooling=...)`, the config node
`model.embedding.pooling`): it replaces the mean pooling of every sequence feature whose
`vocab_of` names a sparse feature, that feature's embedding in the row being the candidate (the
synthetic world's `hist_items` and `item_id`).

Shapes: B batch, L sequence, D embedding, H hidden.
"""

from __future__ import annotations

import torch
from torch import nn

from recolab.params import Count, Layers, checked


class TargetAttention(nn.Module):
    """DIN's activation unit and weighted sum pooling (raw weights, padding masked).

    Args:
        embedding_dim: D, the width of the history items' and the candidate's embeddings (the
            feature embedding passes it).
        hidden_dims: the activation unit's hidden widths (PReLU after each); the paper's unit
            has one hidden layer of 36.
    """

    @checked
    def __init__(self, embedding_dim: Count, *, hidden_dims: Layers = (36,)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d_in = 4 * embedding_dim
        for h in hidden_dims:
            layers += [nn.Linear(d_in, h), nn.PReLU(h)]
            d_in = h
        layers.append(nn.Linear(d_in, 1))
        self.unit = nn.Sequential(*layers)
        self.output_dim = embedding_dim

    def weights(self, history: torch.Tensor, candidate: torch.Tensor, mask: torch.Tensor):
        """a(e_j, v_a) for every position, 0 at padding: (B, L, D), (B, D), (B, L) -> (B, L)."""
        v = candidate.unsqueeze(1).expand_as(history)  # (B, L, D)
        features = torch.cat([history, v, history - v, history * v], dim=-1)  # (B, L, 4D)
        # PReLU's slopes are per channel, dimension 1: the positions go into the batch dimension.
        w = self.unit(features.flatten(0, 1)).view(history.shape[:2])  # (B, L)
        return w * mask.to(w.dtype)  # (B, L): no softmax, padding 0

    def forward(
        self, history: torch.Tensor, candidate: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """history (B, L, D), candidate (B, D), mask (B, L) bool (True where an item is) -> (B, D)."""
        w = self.weights(history, candidate, mask)  # (B, L)
        return torch.einsum("bl,bld->bd", w, history)  # (B, D), eq. 3
