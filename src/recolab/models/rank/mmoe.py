"""Multi-gate Mixture-of-Experts (Ma et al., "Modeling Task Relationships in Multi-task Learning
with Multi-gate Mixture-of-Experts", KDD 2018).

E expert MLPs share the input; each task has a softmax gate over the experts (a linear map of
the input, eq. 5 of the paper) and a tower over its gated mixture (eq. 4). Because each task
weighs the experts differently, tasks that are less related can use different experts, which is
where MMoE beats shared-bottom as task correlation falls (the paper's Fig. 3).

The E experts run as one `BatchedMLPs` block and the T gates as one matrix product, which is
how the step gets its speed (experiments/bench/speed.md); the outputs are the paper's formula,
which tests/unit/models/rank/test_rankers.py checks against a per-expert computation by hand.
"""

from __future__ import annotations

import torch
from torch import nn

from recolab.data.schema import Schema
from recolab.models.blocks import (
    BatchedMLPs,
    EmbeddingFactory,
    FeatureEmbedding,
    TaskTowers,
    softmax_last,
)
from recolab.params import Count, Layers, Rate, Widths, checked


class MMoE(nn.Module):
    """Args:
    schema, embedding, tower_dims, dropout: as every ranker takes them (`recolab.models.rank`).
    num_experts: E.
    expert_dims: hidden widths of each expert MLP (the last is the expert's output width H).
    batch_norm: BatchNorm1d between each expert layer and its ReLU, as torch-rechub's experts
        have (`BatchedMLPs`); off by default (the experts then run as one faster autograd
        Function). experiments/bench/vs_rechub_bn.md measures both AUC and speed with it.
    """

    @checked
    def __init__(
        self,
        schema: Schema,
        *,
        embedding: EmbeddingFactory = FeatureEmbedding,
        num_experts: Count = 4,
        expert_dims: Layers = (128, 64),
        tower_dims: Widths = (32,),
        dropout: Rate = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.tasks = schema.task_names
        self.embed = embedding(schema)
        d_in = self.embed.output_dim
        # The E experts as one block (each is an MLP(d_in, expert_dims); `experts.expert(e)`).
        self.experts = BatchedMLPs(
            num_experts, d_in, expert_dims, dropout=dropout, batch_norm=batch_norm
        )
        self.gates = nn.ModuleDict({t: nn.Linear(d_in, num_experts) for t in self.tasks})
        self.towers = TaskTowers(self.tasks, expert_dims[-1], tower_dims, dropout=dropout)

    def _gates(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F) -> every task's softmax gate, (B, T, E): the T linear maps as one product."""
        weight = torch.cat([self.gates[t].weight for t in self.tasks])  # (T * E, F)
        bias = torch.cat([self.gates[t].bias for t in self.tasks])  # (T * E,)
        logits = torch.addmm(bias, x, weight.t())  # (B, T * E)
        return softmax_last(logits.view(len(x), len(self.tasks), -1))  # (B, T, E)

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = self.embed(features)  # (B, F)
        experts = self.experts(x)  # (E, B, H)
        gates = self._gates(x)  # (B, T, E)
        # Every task's mixture sum_e g_t(x)_e f_e(x) (eq. 4) in one batched product: B products
        # of (T, E) @ (E, H). In float32 even under autocast (`trainer.precision=bf16-mixed`):
        # torch's CPU bmm runs such tiny bf16 products slower than float32 ones, casts included;
        # without autocast the casts return the tensors themselves.
        with torch.autocast(x.device.type, enabled=False):
            mixed = torch.bmm(gates.float(), experts.float().transpose(0, 1))  # (B, T, H)
        return self.towers(dict(zip(self.tasks, mixed.unbind(1))))  # {task: (B,)}

    def gate_weights(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each task's expert weights, (B, E) per task: for inspecting how tasks share experts."""
        gates = self._gates(self.embed(features))  # (B, T, E)
        return {t: gates[:, i] for i, t in enumerate(self.tasks)}
