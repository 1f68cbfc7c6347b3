"""Single-task baseline: one independent network per task, nothing shared.

The reference point of the multi-task papers: the single-task baseline of the MMoE paper (Ma et
al., "Modeling Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts",
KDD 2018, Section 6.3: each task trained in its own model) and of the PLE paper (Tang et al.,
"Progressive Layered Extraction (PLE)", RecSys 2020). Multi-task sharing is worth its
complexity only where it beats this.

Each task has its own embedding tables and its own MLP over the same features, so one task's
loss never moves another task's parameters. Training them in one module is a convenience: it is
the same as training T separate models on the same batches (Adam's updates are per parameter).
"""

from __future__ import annotations

import torch
from torch import nn

from recolab.data.schema import Schema
from recolab.models.blocks import EmbeddingFactory, FeatureEmbedding, TaskTowers
from recolab.params import Rate, Widths, checked


class SingleTask(nn.Module):
    """Args:
    schema, embedding, dropout: as every ranker takes them (`recolab.models.rank`); `embedding`
        is called once per task: every task has its own tables.
    hidden_dims: hidden widths of each task's MLP (a final linear layer gives the output), its
        tower over its own embedding.
    """

    @checked
    def __init__(
        self,
        schema: Schema,
        *,
        embedding: EmbeddingFactory = FeatureEmbedding,
        hidden_dims: Widths = (128, 64, 32),
        dropout: Rate = 0.0,
    ) -> None:
        super().__init__()
        self.tasks = schema.task_names
        self.embeds = nn.ModuleDict({t: embedding(schema) for t in self.tasks})
        width = self.embeds[self.tasks[0]].output_dim
        self.mlps = TaskTowers(self.tasks, width, hidden_dims, dropout=dropout)

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.mlps({t: self.embeds[t](features) for t in self.tasks})  # {task: (B,)}
