"""Shared-bottom multi-task ranker (Caruana, "Multitask Learning", Machine Learning 1997).

All tasks share one bottom MLP; each task has its own tower. The MMoE paper's baseline.
"""

from __future__ import annotations

import torch
from torch import nn

from recolab.data.schema import Schema
from recolab.models.blocks import MLP, EmbeddingFactory, FeatureEmbedding, TaskTowers
from recolab.params import Rate, Widths, checked


class SharedBottom(nn.Module):
    """Args:
    schema, embedding, tower_dims, dropout: as every ranker takes them (`recolab.models.rank`).
    bottom_dims: hidden widths of the shared bottom.
    """

    @checked
    def __init__(
        self,
        schema: Schema,
        *,
        embedding: EmbeddingFactory = FeatureEmbedding,
        bottom_dims: Widths = (128, 64),
        tower_dims: Widths = (32,),
        dropout: Rate = 0.0,
    ) -> None:
        super().__init__()
        self.tasks = schema.task_names
        self.embed = embedding(schema)
        self.bottom = MLP(self.embed.output_dim, bottom_dims, dropout=dropout)
        self.towers = TaskTowers(self.tasks, self.bottom.output_dim, tower_dims, dropout=dropout)

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        h = self.bottom(self.embed(features))  # (B, H)
        return self.towers(h)  # {task: (B,)}
