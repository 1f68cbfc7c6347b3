"""Multi-gate Mixture-of-Experts (Ma et al., "Modeling Task Relationships in Multi-task Learning
with Multi-gate Mixture-of-Experts", KDD 2018).

E expert MLPs share the input; each task has a softmax gate over the experts (a linear map of
the input, eq. 5 of the paper) and a tower over its gated mixture (eq. 4). Because each task
weighs the experts differently, tasks that are less related can use different experts, which is
where MMoE beats shared-bottom as task correlation falls (the paper's Fig. 3).
"""

from __future__ import annotations

import torch
from torch import nn

from recolab.data.schema import Schema
from recolab.models.blocks import MLP, FeatureEmbedding


class MMoE(nn.Module):
    """Args:
    schema: features and tasks.
    embedding_dim: width of each id embedding.
    num_experts: E.
    expert_dims: hidden widths of each expert MLP (the last is the expert's output width).
    tower_dims: hidden widths of each task tower (a final linear layer gives the output).
    dropout: dropout after hidden layers.
    """

    def __init__(
        self,
        schema: Schema,
        *,
        embedding_dim: int = 16,
        num_experts: int = 4,
        expert_dims: list[int] = (128, 64),
        tower_dims: list[int] = (32,),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        if not expert_dims:
            raise ValueError("expert_dims must name at least one layer")
        self.tasks = schema.task_names
        self.embed = FeatureEmbedding(schema, embedding_dim=embedding_dim)
        d_in = self.embed.output_dim
        self.experts = nn.ModuleList(
            [MLP(d_in, expert_dims, dropout=dropout) for _ in range(num_experts)]
        )
        self.gates = nn.ModuleDict({t: nn.Linear(d_in, num_experts) for t in self.tasks})
        self.towers = nn.ModuleDict(
            {t: MLP(expert_dims[-1], tower_dims, dropout=dropout, out_dim=1) for t in self.tasks}
        )

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = self.embed(features)  # (B, F)
        experts = torch.stack([e(x) for e in self.experts], dim=1)  # (B, E, H)
        out = {}
        for t in self.tasks:
            gate = self.gates[t](x).softmax(-1).unsqueeze(1)  # (B, 1, E)
            out[t] = self.towers[t]((gate @ experts).squeeze(1)).squeeze(-1)  # (B,)
        return out

    def gate_weights(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each task's expert weights, (B, E) per task: for inspecting how tasks share experts."""
        x = self.embed(features)
        return {t: self.gates[t](x).softmax(-1) for t in self.tasks}
