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
from recolab.models.blocks import MLP, FeatureEmbedding


class SingleTask(nn.Module):
    """Args:
    schema: features and tasks.
    embedding_dim: width of each id embedding (every task has its own tables).
    hidden_dims: hidden widths of each task's MLP (a final linear layer gives the output).
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
        hidden_dims: list[int] = (128, 64, 32),
        dropout: float = 0.0,
        sparse_embeddings: bool = False,
        input_batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.tasks = schema.task_names
        self.embeds = nn.ModuleDict(
            {
                t: FeatureEmbedding(
                    schema,
                    embedding_dim=embedding_dim,
                    sparse=sparse_embeddings,
                    batch_norm=input_batch_norm,
                )
                for t in self.tasks
            }
        )
        self.mlps = nn.ModuleDict(
            {
                t: MLP(self.embeds[t].output_dim, hidden_dims, dropout=dropout, out_dim=1)
                for t in self.tasks
            }
        )

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            t: self.mlps[t](self.embeds[t](features)).squeeze(-1) for t in self.tasks
        }  # each (B,)
