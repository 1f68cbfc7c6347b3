"""The global batch of a training step under DDP, for softmaxes that must not depend on the ranks.

The streaming estimate of `p_j` (`StreamingFrequencyEstimator`) is the probability that item `j`
appears in the *global* batch (every rank's rows of one step). A softmax that corrects its
in-batch columns by it must therefore run over the global batch's positives; run over a rank's
local batch, its in-batch columns are over-corrected by about `log W` (W ranks), which shifts them
against the corpus columns of a mixed softmax. `global_positives` gathers every rank's positives
(embeddings with their gradient, ids, corrections) so that each rank's rows see the same columns,
in rank order, as one process holding the whole global batch; `loss_scale` turns a rank's summed
loss into its share of the global mean, so that DDP's gradient average equals that process's
gradient even when the ranks hold unequal batches.

This module imports nothing else from recolab.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


def distributed_world(sync_distributed: bool) -> int:
    """The number of ranks to sync with: 1 unless `sync_distributed` and a process group of more
    than one rank is initialized."""
    if sync_distributed and dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


@dataclass(frozen=True)
class GlobalPositives:
    """Every rank's positives, concatenated in rank order.

    Attributes:
        emb: (M, D) positive embeddings; gradients flow back to the rank that computed each row.
        ids: (M,) positive item ids.
        log_q: (M,) their corrections, or None.
        offset: where this rank's rows start among the M columns (its row `i` targets column
            `offset + i`).
        total: M, the global batch size.
        world: the number of ranks.
    """

    emb: Tensor
    ids: Tensor
    log_q: Tensor | None
    offset: int
    total: int
    world: int

    @property
    def loss_scale(self) -> float:
        """Factor that turns this rank's summed per-row loss into its share of the global mean.

        DDP averages the ranks' gradients; `sum_local * world / total` averages, over the ranks,
        to `sum_global / total`, the one-process loss, whatever the ranks' batch sizes (equal
        sizes: the local mean).
        """
        return self.world / self.total


def global_positives(
    emb: Tensor, ids: Tensor, log_q: Tensor | None, *, sync_distributed: bool = True
) -> GlobalPositives:
    """Gathers the step's positives from every rank (a no-op on one process).

    Args:
        emb: (B, D) this rank's positive embeddings.
        ids: (B,) their item ids.
        log_q: (B,) their corrections, or None.
        sync_distributed: False: use this rank's batch alone.

    Returns:
        The global positives; on one process (or `sync_distributed=False`) the inputs themselves.
    """
    world = distributed_world(sync_distributed)
    batch = emb.shape[0]
    if world == 1:
        return GlobalPositives(emb, ids, log_q, offset=0, total=batch, world=1)
    size = torch.tensor([batch], device=emb.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s) for s in sizes]
    rank = dist.get_rank()
    offset = sum(counts[:rank])
    return GlobalPositives(
        emb=_GatherRows.apply(emb, counts, rank),
        ids=_gather_rows_no_grad(ids, counts),
        log_q=None if log_q is None else _gather_rows_no_grad(log_q, counts),
        offset=offset,
        total=sum(counts),
        world=world,
    )


def _all_gather_padded(x: Tensor, counts: list[int]) -> Tensor:
    """All ranks' `x` (rows `counts[r]` each), padded to the longest and stacked: (W, max, ...)."""
    longest = max(counts)
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded.contiguous())
    return torch.stack(parts)


def _gather_rows_no_grad(x: Tensor, counts: list[int]) -> Tensor:
    stacked = _all_gather_padded(x.detach(), counts)
    return torch.cat([part[:n] for part, n in zip(stacked, counts)])


class _GatherRows(torch.autograd.Function):
    """All-gather of rows along dim 0, with unequal row counts, that passes gradients back.

    Backward: rank `r`'s gathered tensor feeds only rank `r`'s loss, so the gradient of this
    rank's rows is the sum over ranks of the gradient each loss sends them: an all-reduce (sum)
    of the gathered gradients, of which this rank keeps its own slice. All-reduce works on every
    backend (gloo has no reduce-scatter).
    """

    @staticmethod
    def forward(ctx, x: Tensor, counts: list[int], rank: int) -> Tensor:  # type: ignore[override]
        ctx.counts, ctx.rank = counts, rank
        stacked = _all_gather_padded(x, counts)
        return torch.cat([part[:n] for part, n in zip(stacked, counts)])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        counts, rank = ctx.counts, ctx.rank
        longest = max(counts)
        padded = grad.new_zeros((len(counts), longest, *grad.shape[1:]))
        for r, part in enumerate(torch.split(grad, counts)):
            padded[r, : counts[r]] = part
        dist.all_reduce(padded)  # sum over the ranks' losses
        return padded[rank, : counts[rank]], None, None
