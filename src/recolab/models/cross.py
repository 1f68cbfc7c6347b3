"""The cross network of DCN-V2 (Wang et al., "DCN V2: Improved Deep & Cross Network and Practical
Lessons for Web-scale Learning to Rank Systems", WWW 2021), as the input interaction of a ranker.

Layer l of the cross network, on the input x_0 (B, d) and its own input x_l (B, d):

    full rank (eq. 1):        x_{l+1} = x_0 * (W_l x_l + b_l) + x_l              W_l (d, d)
    low rank (eq. 3):         x_{l+1} = x_0 * (U_l (V_l^T x_l) + b_l) + x_l      U_l, V_l (d, r)
    mixture of K low-rank experts (eq. 3-4):
        x_{l+1} = sum_i G_i(x_l) E_i(x_l) + x_l,
        E_i(x_l) = x_0 * (U_l^i g(C_l^i g(V_l^iT x_l)) + b_l)                     C_l^i (r, r)

`*` is the element-wise product. The gate G(x_l) is a softmax over the K experts of a linear map
of x_l, and g an activation (`activation`; the paper's Sec. 5.3 studies several). With one expert
(`num_experts=1`) the low-rank layer is eq. 3: no C, no g, no gate.

A ranker reads it through its feature embedding (`FeatureEmbedding(interaction=...)`, the config
node `model.embedding.interaction`), so every ranker gets it by config. The two structures of the
paper's Fig. 1:

- `stacked`: the cross network's output, (B, d), is the ranker's input; the ranker's own MLPs
  (experts, bottom, towers) are the deep network stacked on it.
- `parallel`: the cross network and a deep MLP (`deep_dims`) both read x_0; their outputs are
  concatenated, (B, d + deep_dims[-1]), and the ranker's MLPs read that.

Shapes: B batch, d input width, r rank, K experts.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from recolab.models.blocks import MLP
from recolab.params import Count, Rate, Widths, checked

Structure = Literal["stacked", "parallel"]
Activation = Literal["identity", "relu", "tanh", "sigmoid"]
_ACTIVATIONS = {
    "identity": nn.Identity,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


class CrossNetwork(nn.Module):
    """DCN-V2's cross network (full rank, low rank, or a mixture of low-rank experts), stacked
    under a ranker's MLPs or beside a deep MLP.

    Args:
        input_dim: d, the width of x_0 (the feature embedding's output; the embedding passes it).
        num_layers: cross layers.
        low_rank: r, the rank of each layer's map (eq. 3-4); None for full-rank W_l (eq. 1).
        num_experts: K low-rank experts per layer (eq. 4; needs `low_rank`).
        activation: g in eq. 4 (used when K > 1).
        structure: `stacked` or `parallel` (see the module docstring).
        deep_dims: the parallel deep MLP's hidden widths (parallel only; at least one).
        dropout: dropout after each hidden layer of the deep MLP.
    """

    @checked
    def __init__(
        self,
        input_dim: Count,
        *,
        num_layers: Count = 3,
        low_rank: Count | None = None,
        num_experts: Count = 1,
        activation: Activation = "identity",
        structure: Structure = "stacked",
        deep_dims: Widths = (),
        dropout: Rate = 0.0,
    ) -> None:
        super().__init__()
        if low_rank is None and num_experts > 1:
            raise ValueError(
                f"num_experts={num_experts} needs low_rank (the mixture is of low-rank experts, "
                "eq. 4); set low_rank, e.g. low_rank=16, or num_experts=1"
            )
        if structure == "parallel" and not deep_dims:
            raise ValueError(
                "structure='parallel' needs deep_dims (the deep MLP beside the cross network), "
                "e.g. deep_dims=[256, 128]"
            )
        if structure == "stacked" and deep_dims:
            raise ValueError(
                f"deep_dims={list(deep_dims)} is for structure='parallel'; with structure="
                "'stacked' the ranker's own MLPs are the deep network"
            )
        self.input_dim, self.num_layers = input_dim, num_layers
        self.low_rank, self.num_experts = low_rank, num_experts
        d, r, K = input_dim, low_rank, num_experts
        if r is None:  # eq. 1: W_l, b_l as nn.Linear(d, d) per layer
            self.w = nn.ModuleList([nn.Linear(d, d) for _ in range(num_layers)])
        else:  # eq. 3-4: V_l^i (d, r), U_l^i (r, d), C_l^i (r, r) for K > 1, per layer
            self.v = nn.ParameterList(
                [nn.Parameter(torch.empty(K, d, r)) for _ in range(num_layers)]
            )
            self.u = nn.ParameterList(
                [nn.Parameter(torch.empty(K, r, d)) for _ in range(num_layers)]
            )
            self.b = nn.ParameterList([nn.Parameter(torch.zeros(d)) for _ in range(num_layers)])
            if K > 1:
                self.c = nn.ParameterList(
                    [nn.Parameter(torch.empty(K, r, r)) for _ in range(num_layers)]
                )
                self.gates = nn.ModuleList([nn.Linear(d, K, bias=False) for _ in range(num_layers)])
                self.g = _ACTIVATIONS[activation]()
            self.reset_parameters()
        self.deep = MLP(d, deep_dims, dropout=dropout) if structure == "parallel" else None
        self.structure = structure
        self.output_dim = d + (self.deep.output_dim if self.deep is not None else 0)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The low-rank factors: Xavier-uniform (Glorot), as the paper's code initializes its
        kernels; the biases zero."""
        if self.low_rank is None:
            return
        for params in (self.v, self.u, *([self.c] if self.num_experts > 1 else [])):
            for p in params:
                for k in range(len(p)):
                    nn.init.xavier_uniform_(p[k])

    def _layer(self, l: int, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x_{l+1} from x_0 and x_l, both (B, d)."""
        if self.low_rank is None:
            return x0 * self.w[l](x) + x  # (B, d), eq. 1
        v, u, b = self.v[l], self.u[l], self.b[l]  # (K, d, r), (K, r, d), (d,)
        if self.num_experts == 1:
            return x0 * ((x @ v[0]) @ u[0] + b) + x  # (B, d), eq. 3
        h = self.g(torch.einsum("bd,kdr->kbr", x, v))  # (K, B, r): g(V^T x)
        h = self.g(torch.bmm(h, self.c[l]))  # (K, B, r): g(C g(V^T x))
        experts = x0 * (torch.bmm(h, u) + b)  # (K, B, d): E_i(x_l), eq. 4
        gate = self.gates[l](x).softmax(-1)  # (B, K): G(x_l)
        return torch.einsum("bk,kbd->bd", gate, experts) + x  # (B, d), eq. 3 with the mixture

    def cross(self, x0: torch.Tensor) -> torch.Tensor:
        """The cross network alone: (B, d) -> x_L, (B, d)."""
        x = x0
        for l in range(self.num_layers):
            x = self._layer(l, x0, x)
        return x

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        """(B, d) -> (B, output_dim): x_L (stacked), or [x_L, deep(x_0)] (parallel)."""
        x = self.cross(x0)  # (B, d)
        if self.deep is None:
            return x
        return torch.cat([x, self.deep(x0)], dim=1)  # (B, d + H)

    def extra_repr(self) -> str:
        return (
            f"input_dim={self.input_dim}, num_layers={self.num_layers}, low_rank={self.low_rank}, "
            f"num_experts={self.num_experts}, structure={self.structure!r}"
        )
