"""Shared-bottom multi-task ranker (Caruana, "Multitask Learning", Machine Learning 1997).

All tasks share one bottom MLP; each task has its own tower. The MMoE paper's baseline.
"""

from __future__ import annotations

import torch
from torch import nn

from recolab.data.schema import Schema
from recolab.models.blocks import MLP, FeatureEmbedding


class SharedBottom(nn.Module):
    """Args:
    schema: features and tasks.
    embedding_dim: width of each id embedding.
    bottom_dims: hidden widths of the shared bottom.
    tower_dims: hidden widths of each task tower (a final linear layer gives the output).
    dropout: dropout after hidden layers.
    sparse_embeddings: sparse gradients for the id tables (only the rows a batch touched; pays off
        with tables of millions of ids, experiments/bench/speed.md); needs `module.optimizer=adagrad`.
    input_batch_norm: BatchNorm1d over the concatenated input features (`FeatureEmbedding`'s
        `batch_norm`); on in the synthetic-world experiments (experiments/bench/vs_rechub.md).
    """

    def __init__(
        self,
        schema: Schema,
        *,
        embedding_dim: int = 16,
        bottom_dims: list[int] = (128, 64),
        tower_dims: list[int] = (32,),
        dropout: float = 0.0,
        sparse_embeddings: bool = False,
        input_batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.tasks = schema.task_names
        self.embed = FeatureEmbedding(
            schema,
            embedding_dim=embedding_dim,
            sparse=sparse_embeddings,
            batch_norm=input_batch_norm,
        )
        self.bottom = MLP(self.embed.output_dim, bottom_dims, dropout=dropout)
        self.towers = nn.ModuleDict(
            {
                t: MLP(self.bottom.output_dim, tower_dims, dropout=dropout, out_dim=1)
                for t in self.tasks
            }
        )

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        h = self.bottom(self.embed(features))  # (B, H)
        return {t: self.towers[t](h).squeeze(-1) for t in self.tasks}  # each (B,)
