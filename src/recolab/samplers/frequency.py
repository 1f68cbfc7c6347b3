"""Streaming estimate of how often each item appears in a training batch.

Yi et al., "Sampling-bias-corrected neural modeling for large corpus item recommendations",
RecSys 2019, section 4 (Algorithm 2), and DESIGN.md section 4. The in-batch softmax subtracts
`log p_j`, the log probability that item `j` appears in a batch; the item vocabulary may be huge
and keep changing, so `p_j` is estimated on the fly from the stream of batches, in fixed memory:

- `H` hash functions map an item id to one of `num_buckets` buckets each;
- `last_step[h, b]` (the paper's `A`): the last step at which bucket `b` of hash `h` was seen;
- `interval[h, b]` (the paper's `B`): the exponential moving average of the steps between two
  sightings of the bucket;
- at step `t`, for every bucket hit by the batch: `B <- (1 - alpha) * B + alpha * (t - A)`, then
  `A <- t`; and `p_j = 1 / B[h(j)]`.

Colliding items share a bucket, which then looks more frequent (a shorter interval) than either
item; with several hash functions the estimate least affected by collisions is the one with the
LARGEST interval, so `probability` takes the max of `B` over the hash functions (the same idea as
a count-min sketch taking the min count).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.distributed as dist
from torch import Tensor, nn

log = logging.getLogger(__name__)

# Multiply-shift hashing works on w-bit keys; with w = 32 the product of a 32-bit multiplier and
# a key below 2**31 stays below 2**63, so int64 arithmetic never overflows.
_WORD_BITS = 32


class StreamingFrequencyEstimator(nn.Module):
    """Per-batch occurrence probability of items, estimated from the stream of batches.

    Usage in a training step (update with the batch first, then read its items' estimates, as in
    Yi et al.'s Algorithm 1):

        estimator.update(batch["item_id"])
        loss = InBatchSoftmax().loss(u, v, batch["item_id"], log_q=estimator.log_q(batch["item_id"]))

    Duplicates: an item that occurs twice in one batch is counted once at that step, because
    `p_j` is the probability that the item *appears* in a batch; every distinct bucket is updated
    exactly once per step, which also makes the update deterministic. Id 0 (padding/OOV) is
    treated like any other id.

    Initial value (items never seen): `last_step` starts at 0 and steps count from 1.
    With `initial_interval=None` (default) a bucket's first sighting at step `t` sets its interval
    to `t` outright (the moving average starts from its first sample, rather than from an
    arbitrary constant that would bias it for about `1 / alpha` sightings): the item went `t`
    steps unseen, the best one-sample estimate of its interval. With a float, every bucket starts
    at that interval and the paper's update applies from the first sighting. Before its first
    sighting a bucket reads `B = 1` (None) or `initial_interval`, i.e. `p = 1` and `log_q = 0` by
    default: no correction for an item the estimator has never seen, the conservative choice
    (an over-estimated `p` under-boosts; an under-estimated one would give a never-seen item a
    huge logit bonus).

    Distributed training: when `torch.distributed` is initialized (and `sync_distributed`), `update`
    all-gathers the item ids of every rank's batch and applies one update with the union, so
    every rank holds the same arrays, and `p_j` is the probability that `j` appears in the
    *global* batch (all ranks' batches of one step). The losses in `recolab.samplers` therefore
    run their softmax over the global batch's positives (gathered with their gradients), which
    matches the estimate exactly. A softmax over a rank's local batch alone would see a rare
    item's probability divided by the world size W: a shift of about `log W` of every in-batch
    column, which a pure in-batch softmax ignores (up to the head items, `p` near 1), but which
    moves the in-batch columns against the corpus columns of a mixed softmax. The buffers are ordinary
    persistent buffers: they go into `state_dict` and so into checkpoints.

    Args:
        num_buckets: buckets per hash function, a power of two (multiply-shift hashing).
        num_hashes: number of independent hash functions `H`.
        alpha: learning rate of the moving average of the interval.
        initial_interval: see "Initial value" above; None or a float >= 1.
        seed: seeds the hash multipliers (fixed per estimator, saved in `state_dict`).
        sync_distributed: gather ids across ranks under `torch.distributed` (see above).
    """

    def __init__(
        self,
        *,
        num_buckets: int = 2**20,
        num_hashes: int = 2,
        alpha: float = 0.01,
        initial_interval: float | None = None,
        seed: int = 0,
        sync_distributed: bool = True,
    ) -> None:
        super().__init__()
        if num_buckets < 2 or num_buckets & (num_buckets - 1) or num_buckets > 2**_WORD_BITS:
            raise ValueError(f"num_buckets must be a power of two in [2, 2**32], got {num_buckets}")
        if num_hashes < 1:
            raise ValueError(f"num_hashes must be >= 1, got {num_hashes}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        if initial_interval is not None and initial_interval < 1.0:
            raise ValueError(f"initial_interval must be None or >= 1, got {initial_interval}")
        self.num_buckets = num_buckets
        self.num_hashes = num_hashes
        self.alpha = alpha
        self.initial_interval = initial_interval
        self.sync_distributed = sync_distributed
        self._shift = _WORD_BITS - int(math.log2(num_buckets))

        generator = torch.Generator().manual_seed(seed)
        # Random odd multipliers: multiply-shift hashing (Dietzfelbinger et al., 1997) is
        # universal only for odd multipliers.
        multipliers = torch.randint(0, 2 ** (_WORD_BITS - 1), (num_hashes,), generator=generator)
        self.register_buffer("multipliers", multipliers * 2 + 1)  # (H,) int64
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("last_step", torch.zeros(num_hashes, num_buckets, dtype=torch.long))
        start = 1.0 if initial_interval is None else float(initial_interval)
        self.register_buffer("interval", torch.full((num_hashes, num_buckets), start))

    def buckets(self, item_ids: Tensor) -> Tensor:
        """Bucket of each item under each hash function.

        `h(x) = ((a * x) mod 2**32) >> (32 - log2(num_buckets))` with the odd multiplier `a` of
        that hash function.

        Args:
            item_ids: (N,) long ids in [0, 2**31).

        Returns:
            (H, N) long bucket indices in [0, num_buckets).
        """
        # No range check here: it would cost a device sync every step. Ids >= 2**31 could
        # overflow the product; the mask keeps every bucket in range whatever the input.
        ids = item_ids.reshape(-1).to(device=self.multipliers.device, dtype=torch.long)
        product = self.multipliers.unsqueeze(1) * ids.unsqueeze(0)  # (H, N), < 2**63
        return (product & (2**_WORD_BITS - 1)) >> self._shift  # (H, N)

    @torch.no_grad()
    def update(self, item_ids: Tensor) -> None:
        """Advance one step and record the batch's items (all ranks' under DDP).

        Args:
            item_ids: (B,) long ids of the items in this step's batch.
        """
        ids = self._gather(item_ids.reshape(-1))
        self.step += 1
        t = self.step
        # One flat index over all hash functions' arrays: bucket b of hash h is h * num_buckets
        # + b, so a single `unique` updates every distinct (hash, bucket) exactly once.
        offsets = torch.arange(self.num_hashes, device=t.device).unsqueeze(1) * self.num_buckets
        seen = torch.unique(self.buckets(ids) + offsets)  # (M,)
        last_step = self.last_step.view(-1)  # (H * num_buckets,) views, written in place
        interval = self.interval.view(-1)
        gap = (t - last_step[seen]).to(interval.dtype)  # (M,)
        new = (1.0 - self.alpha) * interval[seen] + self.alpha * gap  # (M,)
        if self.initial_interval is None:
            new = torch.where(last_step[seen] == 0, gap, new)  # first sighting: see class doc
        interval[seen] = new
        last_step[seen] = t

    def probability(self, item_ids: Tensor) -> Tensor:
        """Estimated probability that each item appears in a batch, `1 / max_h B[h, h(j)]`.

        Args:
            item_ids: (N,) long item ids.

        Returns:
            (N,) float probabilities in (0, 1].
        """
        return 1.0 / self._interval(item_ids)

    def log_q(self, item_ids: Tensor) -> Tensor:
        """`log p_j`, the correction the in-batch softmax subtracts.

        Args:
            item_ids: (N,) long item ids.

        Returns:
            (N,) float, <= 0.
        """
        return -torch.log(self._interval(item_ids))

    def _interval(self, item_ids: Tensor) -> Tensor:
        buckets = self.buckets(item_ids)  # (H, N)
        per_hash = self.interval.gather(1, buckets)  # (H, N)
        return per_hash.amax(dim=0).reshape(item_ids.shape)  # (N,) least collided

    def _gather(self, ids: Tensor) -> Tensor:
        if not (
            self.sync_distributed
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size() > 1
        ):
            return ids
        # Batches may differ in size (a last, short batch): pad to the largest, then trim.
        world = dist.get_world_size()
        ids = ids.to(self.multipliers.device)
        size = torch.tensor([ids.numel()], device=ids.device)
        sizes = [torch.zeros_like(size) for _ in range(world)]
        dist.all_gather(sizes, size)
        longest = int(max(int(s) for s in sizes))
        padded = ids.new_zeros(longest)
        padded[: ids.numel()] = ids
        gathered = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(gathered, padded)
        return torch.cat([g[: int(s)] for g, s in zip(gathered, sizes)])

    def extra_repr(self) -> str:
        return (
            f"num_buckets={self.num_buckets}, num_hashes={self.num_hashes}, alpha={self.alpha}, "
            f"initial_interval={self.initial_interval}"
        )
