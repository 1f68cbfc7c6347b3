"""Position-bias heads: learn the display position's effect in training, serve without it.

- `PAL` (Guo et al., "PAL: A Position-bias Aware Learning Framework for CTR Prediction in Live
  Recommender Systems", RecSys 2019): p(click | x, pos) = p(seen | pos) * p(click | x, seen). The
  ranker's output is the relevance logit; an examination tower over the position gives p(seen);
  the two are trained jointly by logloss on their product, and only p(click | x, seen) is served.
- `ShallowTower` (Zhao et al., "Recommending What Video to Watch Next: A Multitask Ranking
  System", RecSys 2019, section 5): a shallow tower over the position (and optional context such as
  the device) produces a logit that is added to the ranker's logit before the sigmoid. The
  position input is dropped (replaced by an "unknown" index) with probability `position_dropout`
  in training (the paper uses 10%), so the main model does not lean on position-like signals. At
  serving the position is unknown: as in the paper, the position feature is set to missing, so the
  tower's logit for the unknown position (and the row's context) is still added. Leaving the tower
  out instead offsets every served probability by the logit of whichever position the tower
  happened to put at 0.

Positions are 1-based (1 = top). The towers keep index 0 for "position unknown / dropped".
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recolab.heads import Head, Meta, meta_column
from recolab.models.blocks import MLP
from recolab.params import Count, Rate, Widths, checked


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, stable at both ends (Maechler 2012)."""
    x = x.clamp_max(-1e-12)
    return torch.where(
        x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x))
    )


class PositionTower(nn.Module):
    """Position (and context ids) -> one logit per row.

    Args:
        num_positions: P; positions 1..P get their own embedding, index 0 means unknown.
        context: `{meta column: number of buckets}`, categorical context ids (taken modulo the
            bucket count), e.g. the device.
        embedding_dim: width of each embedding.
        hidden_dims: MLP widths between the embeddings and the logit (empty: a linear map).
    """

    @checked
    def __init__(
        self,
        num_positions: Count,
        *,
        context: dict[str, Count] | None = None,
        embedding_dim: Count = 8,
        hidden_dims: Widths = (),
    ) -> None:
        super().__init__()
        self.num_positions = num_positions
        self.context = {str(k): int(v) for k, v in (context or {}).items()}
        self.position = nn.Embedding(num_positions + 1, embedding_dim)
        self.context_tables = nn.ModuleDict(
            {k: nn.Embedding(v, embedding_dim) for k, v in self.context.items()}
        )
        self.mlp = MLP(embedding_dim * (1 + len(self.context)), list(hidden_dims), out_dim=1)

    def index(self, position: torch.Tensor) -> torch.Tensor:
        """1-based positions -> embedding rows; positions past P share row P, missing (<= 0) row 0."""
        p = position.long()
        return torch.where(p >= 1, p.clamp_max(self.num_positions), torch.zeros_like(p))

    def forward(self, index: torch.Tensor, meta: Meta) -> torch.Tensor:
        parts = [self.position(index)]  # (B, D)
        for name, table in self.context_tables.items():
            ids = (
                meta_column(meta, name, "position tower context")
                .long()
                .remainder(self.context[name])
            )
            parts.append(table(ids))  # (B, D)
        return self.mlp(torch.cat(parts, dim=1)).squeeze(-1)  # (B,)


class _PositionHead(Head):
    kinds = ("binary",)

    def __init__(
        self,
        *,
        num_positions: int,
        context: dict[str, int] | None,
        embedding_dim: int,
        hidden_dims: list[int],
        position_column: str,
    ) -> None:
        super().__init__()
        self.position_column = position_column
        self.tower = PositionTower(
            num_positions, context=context, embedding_dim=embedding_dim, hidden_dims=hidden_dims
        )

    def required_meta(self) -> list[str]:
        return [self.position_column, *self.tower.context]

    def fit(self, label: torch.Tensor, meta: Meta) -> None:
        pos = meta_column(meta, self.position_column, self.where)
        if pos.numel() and (int(pos.min()) < 1 or int(pos.max()) > self.tower.num_positions):
            raise ValueError(
                f"{self.where}: meta column {self.position_column!r} holds positions {int(pos.min())}..{int(pos.max())} "
                f"in the training split; num_positions={self.tower.num_positions} covers 1..{self.tower.num_positions}"
            )

    def bias_logit(self, meta: Meta) -> torch.Tensor:
        return self.tower(
            self.tower.index(meta_column(meta, self.position_column, self.where)), meta
        )

    def predict(self, output: torch.Tensor, meta: Meta) -> torch.Tensor:
        return torch.sigmoid(output.float())  # PAL: only p(click | x, seen) is served

    def _curve_logits(self) -> torch.Tensor:
        """The tower's logit at positions 1..P (context ids 0)."""
        p = torch.arange(1, self.tower.num_positions + 1, device=self.tower.position.weight.device)
        ctx = {k: torch.zeros_like(p) for k in self.tower.context}
        with torch.no_grad():
            return self.tower(p, ctx).float().cpu()


class PAL(_PositionHead):
    """PAL: the ranker's output is the relevance logit; an examination tower gives p(seen | position).

    Args:
        num_positions: P, the number of display positions (1..P).
        context: optional `{meta column: buckets}` context for the examination tower.
        embedding_dim, hidden_dims: the examination tower's size.
        position_column: the meta column holding the 1-based position.
    """

    @checked
    def __init__(
        self,
        *,
        num_positions: Count,
        context: dict[str, Count] | None = None,
        embedding_dim: Count = 8,
        hidden_dims: Widths = (),
        position_column: str = "position",
    ) -> None:
        super().__init__(
            num_positions=num_positions,
            context=context,
            embedding_dim=embedding_dim,
            hidden_dims=hidden_dims,
            position_column=position_column,
        )

    def loss(self, output: torch.Tensor, label: torch.Tensor, meta: Meta) -> torch.Tensor:
        # log p(click) = log sigmoid(relevance) + log sigmoid(examination), computed in log space.
        log_p = F.logsigmoid(output.float()) + F.logsigmoid(self.bias_logit(meta).float())  # (B,)
        return -(label * log_p + (1.0 - label) * log1mexp(log_p)).mean()

    def examination(self, meta: Meta) -> torch.Tensor:
        """p(seen | position, context), (B,)."""
        return torch.sigmoid(self.bias_logit(meta).float())

    def summary(self) -> dict[str, Any]:
        seen = torch.sigmoid(self._curve_logits())
        return {
            "head": "pal",
            "position": list(range(1, self.tower.num_positions + 1)),
            "examination": seen.tolist(),
            # The product p(seen) * p(click | seen) fixes p(seen) only up to a constant factor,
            # so the curve is compared relative to the top position.
            "relative_examination": (seen / seen[0]).tolist(),
        }


class ShallowTower(_PositionHead):
    """The shallow tower: a position (and context) logit added in training; at serving the
    position is unknown and the tower's unknown-position logit (with the context) is added.

    Args:
        num_positions: P, the number of display positions (1..P).
        position_dropout: the probability, in training, of replacing a row's position by "unknown".
        context: optional `{meta column: buckets}` context for the tower (e.g. device).
        embedding_dim, hidden_dims: the tower's size.
        position_column: the meta column holding the 1-based position.
    """

    @checked
    def __init__(
        self,
        *,
        num_positions: Count,
        position_dropout: Rate = 0.1,
        context: dict[str, Count] | None = None,
        embedding_dim: Count = 8,
        hidden_dims: Widths = (),
        position_column: str = "position",
    ) -> None:
        super().__init__(
            num_positions=num_positions,
            context=context,
            embedding_dim=embedding_dim,
            hidden_dims=hidden_dims,
            position_column=position_column,
        )
        self.position_dropout = position_dropout

    def bias_logit(self, meta: Meta) -> torch.Tensor:
        index = self.tower.index(meta_column(meta, self.position_column, self.where))  # (B,)
        if self.training and self.position_dropout > 0:
            drop = torch.rand(index.shape, device=index.device) < self.position_dropout
            index = index.masked_fill(drop, 0)
        return self.tower(index, meta)

    def loss(self, output: torch.Tensor, label: torch.Tensor, meta: Meta) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(
            output.float() + self.bias_logit(meta).float(), label
        )

    def serving_logit(self, output: torch.Tensor, meta: Meta) -> torch.Tensor:
        """The tower's logit with the position unknown (index 0) and the row's context, (B,).

        The unknown-position row is trained only by position dropout; with `position_dropout=0`
        it never is, so it means nothing and the tower is left out (0).
        """
        if self.position_dropout == 0:
            return torch.zeros_like(output, dtype=torch.float32)
        unknown = torch.zeros(output.shape, dtype=torch.long, device=output.device)  # (B,)
        return self.tower(unknown, meta).float()

    def predict(self, output: torch.Tensor, meta: Meta) -> torch.Tensor:
        # Served with the position set to missing (Zhao et al.): the position column is not read.
        return torch.sigmoid(output.float() + self.serving_logit(output, meta))

    def summary(self) -> dict[str, Any]:
        bias = self._curve_logits()
        return {
            "head": "shallow_tower",
            "position": list(range(1, self.tower.num_positions + 1)),
            "bias_logit": bias.tolist(),
            # exp(b_p - b_1): the click-odds ratio to the top position, close to the examination
            # ratio when clicks are rare (logit ~ log p).
            "relative_examination": torch.exp(bias - bias[0]).tolist(),
        }
