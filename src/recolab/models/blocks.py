"""Blocks shared by the rankers: an MLP and the feature embedding layer."""

from __future__ import annotations

import torch
from torch import nn

from recolab.data.schema import Schema


class MLP(nn.Sequential):
    """Linear -> ReLU (-> Dropout) for each hidden size; the last layer has no activation if `out_dim` is set.

    Args:
        in_dim: input width.
        dims: hidden widths, in order.
        dropout: dropout after each hidden activation.
        out_dim: a final linear layer's width (no activation), or None.
    """

    def __init__(
        self,
        in_dim: int,
        dims: list[int] | tuple[int, ...],
        *,
        dropout: float = 0.0,
        out_dim: int | None = None,
    ) -> None:
        layers: list[nn.Module] = []
        for h in dims:
            layers += [nn.Linear(in_dim, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            in_dim = h
        if out_dim is not None:
            layers.append(nn.Linear(in_dim, out_dim))
            in_dim = out_dim
        super().__init__(*layers)
        self.output_dim = in_dim


class FeatureEmbedding(nn.Module):
    """Concatenates the schema's features into one vector per row.

    Sparse ids -> an embedding each; sequences -> the masked mean of their ids' embeddings (a
    sequence with `vocab_of` shares that feature's table, e.g. a history of item ids); dense
    values pass through (the data module standardized them).

    Args:
        schema: the features to read; anything else in the batch is ignored.
        embedding_dim: D, the width of every embedding.
        sparse: sparse gradients for the tables (only the rows a batch touched), which need an
            optimizer that takes them (`module.optimizer=adagrad`). Dense by default: as fast with
            tables of tens of thousands of ids; sparse pays off with tables of millions, where a
            batch touches few rows (experiments/bench/speed.md).
    """

    def __init__(self, schema: Schema, *, embedding_dim: int = 16, sparse: bool = False) -> None:
        super().__init__()
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        self.schema = schema
        self.tables = nn.ModuleDict(
            {
                f.name: nn.Embedding(f.vocab_size, embedding_dim, sparse=sparse)
                for f in schema.sparse
            }
        )
        for f in schema.sequences:
            if f.vocab_of is None:
                self.tables[f.name] = nn.Embedding(
                    f.vocab_size, embedding_dim, padding_idx=0, sparse=sparse
                )
        for table in self.tables.values():
            nn.init.normal_(table.weight, std=0.05)
        self.output_dim = embedding_dim * (len(schema.sparse) + len(schema.sequences)) + len(
            schema.dense
        )

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [self.tables[f.name](features[f.name]) for f in self.schema.sparse]  # each (B, D)
        for f in self.schema.sequences:
            ids = features[f.name]  # (B, L), 0 = padding
            emb = self.tables[f.vocab_of or f.name](ids)  # (B, L, D)
            mask = (ids > 0).unsqueeze(-1).to(emb.dtype)  # (B, L, 1)
            parts.append((emb * mask).sum(1) / mask.sum(1).clamp_min(1.0))  # (B, D)
        if self.schema.dense:
            parts.append(
                torch.stack([features[f.name] for f in self.schema.dense], dim=1)
            )  # (B, F_dense)
        return torch.cat(parts, dim=1)  # (B, output_dim)
