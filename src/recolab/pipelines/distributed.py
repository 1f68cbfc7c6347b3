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


def gather_columns(
    rows: list[dict[str, torch.Tensor]], device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """This rank's evaluation rows (`{key: (n, ...)}` per batch) concatenated, then every key
    gathered from every rank (`gather_rows`); `{}` when no rank has rows.

    A rank may hold no rows at all (fewer evaluation rows than ranks leave some shards empty):
    it still takes part in every gather, with empty tensors of the others' dtypes and shapes,
    which the ranks exchange first. A rank that skipped a collective would leave the others
    waiting in it until the timeout. Keys are gathered in sorted order, the same on every rank.
    """
    keys = rows[0].keys() if rows else []
    local = {k: torch.cat([r[k] for r in rows]) for k in keys}
    if world_size() == 1:
        return local
    specs: list[dict[str, tuple[torch.dtype, tuple[int, ...]]] | None] = [None] * world_size()
    dist.all_gather_object(specs, {k: (v.dtype, tuple(v.shape[1:])) for k, v in local.items()})
    spec = next((s for s in specs if s), {})
    for key, (dtype, shape) in spec.items():
        if key not in local:
            local[key] = torch.empty((0, *shape), dtype=dtype, device=device)
    return {key: gather_rows(local[key]) for key in sorted(spec)}


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
