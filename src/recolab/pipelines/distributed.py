"""Gathering evaluation rows from every rank (unequal lengths, no padding left behind), and
logging the metrics computed on them."""

from __future__ import annotations

import re
import warnings
from typing import Any

import torch
import torch.distributed as dist
from lightning_fabric.utilities.warnings import PossibleUserWarning


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate `t` (N_r, ...) from every rank along dim 0, in rank order; identity on one process.

    Ranks may hold different N_r (evaluation shards are not padded, see
    `recolab.data.columnar`), so lengths are exchanged first and the padding is cut off again.
    """
    if world_size() == 1:
        return t
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    sizes = [int(s.item()) for s in sizes]
    padded = torch.zeros((max(sizes), *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    out = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(out, padded)
    return torch.cat([o[:s] for o, s in zip(out, sizes)])


def log_gathered(module: Any, values: dict[str, float]) -> None:
    """`module.log_dict(values)` for metrics computed on rows gathered from every rank.

    Every rank computes them on the same gathered rows, so they agree without another sync.
    Lightning cannot know that: in a distributed run it warns, once per key, that each should be
    logged with `sync_dist=True`. That warning is silenced for exactly these keys; any other key
    logged without a sync still gets it.
    """
    if world_size() > 1:
        for key in values:
            warnings.filterwarnings(
                "ignore",
                message=re.escape(
                    f"It is recommended to use `self.log({key!r}, ..., sync_dist=True)`"
                ),
                category=PossibleUserWarning,
            )
    module.log_dict(values, sync_dist=False, rank_zero_only=False)
