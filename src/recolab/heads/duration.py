"""Duration-bias heads for watch time, and the regression baselines they are compared with.

D2Q (Zhan et al., "Deconfounding Duration Bias in Watch-time Prediction for Video
Recommendation", KDD 2022). Duration confounds watch time: it raises the watch time directly and
it shifts which videos are shown. D2Q removes the second path by backdoor adjustment on duration
groups:

1. split the training rows into `num_groups` equal-frequency duration groups (the paper: 30);
2. within each group, the label is the watch time's quantile: its empirical CDF value in [0, 1];
3. one model, shared by all groups, is trained by squared error to predict that quantile;
4. a prediction is mapped back to seconds through its group's quantile function.

Res-D2Q (the paper's residual variant, its Fig. 5c) adds a duration bias module to the quantile
prediction: a term of the duration group (and of the log duration within it), so that the shared
model does not have to learn what is left of duration's effect inside a group.

Each group's empirical distribution is kept as its watch time at `num_quantiles` evenly spaced
levels (a buffer, saved in checkpoints); the CDF and its inverse are the piecewise-linear maps
through those points, so mapping a training label back returns the training watch time. Tied
watch times (e.g. the zeros of unwatched impressions) get the middle of their level range, the
mid-rank, so each group's labels still average 1/2.

Baselines (`WatchTimeRegression`): squared error on the watch time (divided by its training
mean), on log(1 + watch time), or on the watch ratio watch_time / duration (served as
prediction * duration).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from annotated_types import Ge
from torch import nn

from recolab.heads import Head, Meta, meta_column
from recolab.params import Count, checked

log = logging.getLogger(__name__)


def _check_durations(d: np.ndarray, column: str, where: str) -> None:
    bad = ~np.isfinite(d) | (d <= 0)
    if bad.any():
        raise ValueError(
            f"{where}: meta column {column!r} has {int(bad.sum())} non-positive or non-finite duration(s) in the training split"
        )


def _check_watch_times(y: np.ndarray, where: str) -> None:
    bad = ~np.isfinite(y) | (y < 0)
    if bad.any():
        raise ValueError(
            f"{where}: the label has {int(bad.sum())} negative or non-finite watch time(s) in the training split"
        )


class D2Q(Head):
    """Duration-deconfounded quantile prediction of watch time.

    Args:
        num_groups: G, equal-frequency duration groups (fewer are used if durations tie so much
            that some group edges coincide; the count used is logged and in `summary()`).
        num_quantiles: K, levels kept per group's distribution (a (G, K) buffer).
        loss: `mse` (the paper: squared error between the output and the quantile label; the
            output is clipped to [0, 1] to serve) or `bce` (the output is a logit, trained by
            cross-entropy against the soft quantile label).
        duration_column: the meta column holding the duration.
    """

    kinds = ("regression",)
    residual = False

    @checked
    def __init__(
        self,
        *,
        num_groups: Count = 30,
        num_quantiles: Annotated[int, Ge(2)] = 1001,
        loss: Literal["mse", "bce"] = "mse",
        duration_column: str = "duration",
    ) -> None:
        super().__init__()
        self.num_groups = num_groups
        self.num_quantiles = num_quantiles
        self.loss_kind = loss
        self.duration_column = duration_column
        # Inner group edges; +inf pads the unused tail when tied durations merge groups.
        self.register_buffer(
            "edges", torch.full((num_groups - 1,), float("inf"), dtype=torch.float64)
        )
        self.register_buffer(
            "quantiles", torch.zeros(num_groups, num_quantiles, dtype=torch.float64)
        )  # (G, K)
        self.register_buffer(
            "log_duration_center", torch.zeros(num_groups, dtype=torch.float64)
        )  # (G,)
        self.register_buffer("groups_used", torch.zeros((), dtype=torch.long))

    def required_meta(self) -> list[str]:
        return [self.duration_column]

    @property
    def fitted(self) -> bool:
        return int(self.groups_used) > 0

    # -- fitting ------------------------------------------------------------------------------

    def fit(self, label: torch.Tensor, meta: Meta) -> None:
        """Group edges (equal-frequency durations) and each group's watch-time quantiles."""
        d = meta_column(meta, self.duration_column, self.where).double().cpu().numpy()
        y = label.double().cpu().numpy()
        if len(d) == 0:
            raise ValueError(f"{self.where}: the training split is empty")
        _check_durations(d, self.duration_column, self.where)
        _check_watch_times(y, self.where)
        G, K = self.num_groups, self.num_quantiles
        # Edges are observed durations (no interpolation), so no group falls between two values;
        # a group holds the durations from its edge up to the next one.
        inner = np.unique(np.quantile(d, np.linspace(0.0, 1.0, G + 1)[1:-1], method="inverted_cdf"))
        inner = inner[inner > d.min()]  # an edge at the minimum would leave the first group empty
        used = len(inner) + 1
        if used < G:
            log.warning(
                "%s: durations tie, so only %d of %d equal-frequency groups are distinct",
                self.where,
                used,
                G,
            )
        group = np.searchsorted(inner, d, side="right")  # (N,) in 0..used-1
        levels = np.linspace(0.0, 1.0, K)
        quantiles = np.zeros((G, K))
        center = np.zeros(G)
        for g in range(used):
            rows = group == g
            quantiles[g] = np.quantile(y[rows], levels)
            center[g] = np.log(d[rows]).mean()
        edges = np.full(G - 1, np.inf)
        edges[: len(inner)] = inner
        self.edges.copy_(torch.from_numpy(edges))
        self.quantiles.copy_(torch.from_numpy(quantiles))
        self.log_duration_center.copy_(torch.from_numpy(center))
        self.groups_used.fill_(used)

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError(
                f"{self.where}: not fitted; fit(label, meta) on the training split first (RankModule does this in setup)"
            )

    # -- the label transform and its inverse --------------------------------------------------

    def group(self, duration: torch.Tensor) -> torch.Tensor:
        """(B,) durations -> (B,) group index (durations outside the training range join the end groups)."""
        return torch.bucketize(duration.double(), self.edges, right=True)

    def to_quantile(self, watch_time: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        """(B,) watch times -> (B,) their empirical CDF value within their group, in [0, 1].

        Ties with a stored quantile take the middle of its level range (mid-rank).
        """
        self._require_fitted()
        y = watch_time.double()
        K = self.num_quantiles
        u = torch.empty_like(y)
        for g in range(int(self.groups_used)):
            rows = (group == g).nonzero().squeeze(1)
            q = self.quantiles[g]  # (K,)
            v = y.index_select(0, rows)
            lo = torch.searchsorted(q, v, right=False)  # first level with q >= v
            hi = torch.searchsorted(q, v, right=True)  # first level with q > v
            left = (lo - 1).clamp(0, K - 1)
            right = lo.clamp(0, K - 1)
            ql, qr = q[left], q[right]
            gap = qr - ql
            frac = torch.where(
                gap > 0,
                (v - ql) / torch.where(gap > 0, gap, torch.ones_like(gap)),
                torch.zeros_like(v),
            )
            level = torch.where(
                hi > lo,
                (lo + hi - 1).double() / 2,  # equal to stored value(s): the middle of the run
                torch.where(
                    lo == 0,
                    torch.zeros_like(v),
                    torch.where(lo >= K, torch.full_like(v, K - 1.0), left + frac),
                ),
            )
            u.index_copy_(0, rows, level / (K - 1))
        return u.to(watch_time.dtype if watch_time.is_floating_point() else torch.float32)

    def from_quantile(self, u: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        """(B,) quantiles in [0, 1] -> (B,) watch times through the group's quantile function."""
        self._require_fitted()
        K = self.num_quantiles
        pos = u.double().clamp(0.0, 1.0) * (K - 1)
        k = pos.floor().long().clamp(0, K - 2)
        frac = pos - k
        flat = self.quantiles.reshape(-1)
        lo, hi = flat[group * K + k], flat[group * K + k + 1]
        return (lo + frac * (hi - lo)).float()

    # -- training and serving -----------------------------------------------------------------

    def _group_of(self, meta: Meta) -> torch.Tensor:
        return self.group(meta_column(meta, self.duration_column, self.where))

    def quantile_output(self, output: torch.Tensor, meta: Meta) -> torch.Tensor:
        """The model's quantile estimate before clipping (a logit under `loss=bce`)."""
        return output.float()

    def loss(self, output: torch.Tensor, label: torch.Tensor, meta: Meta) -> torch.Tensor:
        target = self.to_quantile(label, self._group_of(meta)).float()  # (B,) in [0, 1]
        z = self.quantile_output(output, meta)
        if self.loss_kind == "bce":
            return F.binary_cross_entropy_with_logits(z, target)
        return F.mse_loss(z, target)

    def _quantile(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(z) if self.loss_kind == "bce" else z.clamp(0.0, 1.0)

    def predict(self, output: torch.Tensor, meta: Meta) -> torch.Tensor:
        """Watch time in the label's unit: the predicted quantile through the group's quantile function."""
        return self.from_quantile(
            self._quantile(self.quantile_output(output, meta)), self._group_of(meta)
        )

    def debiased(self, output: torch.Tensor, meta: Meta) -> torch.Tensor:
        """The predicted quantile (unclipped, so ties are not created): comparable across durations."""
        return output.float()

    def summary(self) -> dict[str, Any]:
        used = int(self.groups_used)
        mid = self.num_quantiles // 2
        return {
            "head": "res_d2q" if self.residual else "d2q",
            "groups_used": used,
            "duration_edges": self.edges[: used - 1].tolist() if used else [],
            "median_watch_time_by_group": self.quantiles[:used, mid].tolist() if used else [],
        }


class ResD2Q(D2Q):
    """Res-D2Q: D2Q plus a duration bias module added to the quantile prediction.

    The module is `b[g] + s[g] * (log(duration) - c[g])` for the duration group g (c[g] the group's
    mean log duration in training): a per-group offset and a per-group slope in log duration,
    both learned, both kept at serving. `debiased()` is the shared model's quantile without it.

    Args: as `D2Q`.
    """

    residual = True

    @checked
    def __init__(
        self,
        *,
        num_groups: Count = 30,
        num_quantiles: Annotated[int, Ge(2)] = 1001,
        loss: Literal["mse", "bce"] = "mse",
        duration_column: str = "duration",
    ) -> None:
        super().__init__(
            num_groups=num_groups,
            num_quantiles=num_quantiles,
            loss=loss,
            duration_column=duration_column,
        )
        self.group_bias = nn.Embedding(num_groups, 1)
        self.group_slope = nn.Embedding(num_groups, 1)
        nn.init.zeros_(self.group_bias.weight)
        nn.init.zeros_(self.group_slope.weight)

    def duration_bias(self, meta: Meta) -> torch.Tensor:
        d = meta_column(meta, self.duration_column, self.where)
        g = self.group(d)  # (B,)
        offset = (d.double().log() - self.log_duration_center[g]).float()  # (B,)
        return self.group_bias(g).squeeze(-1) + self.group_slope(g).squeeze(-1) * offset  # (B,)

    def quantile_output(self, output: torch.Tensor, meta: Meta) -> torch.Tensor:
        return output.float() + self.duration_bias(meta)


class WatchTimeRegression(Head):
    """The watch-time baselines of the D2Q paper: plain regression on one of three targets.

    Args:
        target: `watch_time` (squared error on watch_time / its training mean), `log_watch_time`
            (on log(1 + watch_time)), or `watch_ratio` (on watch_time / duration, divided by its
            training mean; served as prediction * duration).
        duration_column: the meta column holding the duration (read for `watch_ratio`, and by
            `debiased`, the implied watch ratio prediction / duration, for every target).
    """

    kinds = ("regression",)
    TARGETS = ("watch_time", "log_watch_time", "watch_ratio")

    @checked
    def __init__(
        self,
        *,
        target: Literal["watch_time", "log_watch_time", "watch_ratio"] = "watch_time",
        duration_column: str = "duration",
    ) -> None:
        super().__init__()
        self.target = target
        self.duration_column = duration_column
        self.register_buffer("scale", torch.ones((), dtype=torch.float64))

    def required_meta(self) -> list[str]:
        return [self.duration_column]

    def _target(self, label: torch.Tensor, meta: Meta) -> torch.Tensor:
        if self.target == "log_watch_time":
            return torch.log1p(label.float())
        if self.target == "watch_ratio":
            return label.float() / meta_column(meta, self.duration_column, self.where).float()
        return label.float()

    def fit(self, label: torch.Tensor, meta: Meta) -> None:
        y = label.double().cpu().numpy()
        _check_watch_times(y, self.where)
        if self.target == "watch_ratio":
            _check_durations(
                meta_column(meta, self.duration_column, self.where).double().cpu().numpy(),
                self.duration_column,
                self.where,
            )
        if self.target != "log_watch_time":
            mean = float(self._target(label, meta).double().mean())
            self.scale.fill_(mean if mean > 0 else 1.0)

    def loss(self, output: torch.Tensor, label: torch.Tensor, meta: Meta) -> torch.Tensor:
        target = self._target(label, meta)
        if self.target != "log_watch_time":
            target = target / self.scale.float()
        return F.mse_loss(output.float(), target)

    def predict(self, output: torch.Tensor, meta: Meta) -> torch.Tensor:
        if self.target == "log_watch_time":
            return torch.expm1(output.float()).clamp_min(0.0)
        value = output.float() * self.scale.float()
        if self.target == "watch_ratio":
            value = value * meta_column(meta, self.duration_column, self.where).float()
        return value.clamp_min(0.0)

    def debiased(self, output: torch.Tensor, meta: Meta) -> torch.Tensor:
        """The implied watch ratio: the served watch time / duration (unclipped for ratio and raw)."""
        d = meta_column(meta, self.duration_column, self.where).float()
        if self.target == "watch_ratio":
            return output.float() * self.scale.float()
        if self.target == "watch_time":
            return output.float() * self.scale.float() / d
        return torch.expm1(output.float()) / d

    def summary(self) -> dict[str, Any]:
        return {"head": f"regression:{self.target}", "scale": float(self.scale)}
