"""Columnar batches: whole batches sliced by index from in-memory column tensors.

No per-row `__getitem__` and no collate: one `index_select` per column per batch. The dataset's
items are *batches*, so a `DataLoader(dataset, batch_size=None)` yields them as they are.

Sharding (DDP) is done here, not by a `DistributedSampler`: a distributed sampler pads the
evaluation set by repeating rows, which would bias exact metrics. Training shards keep the same
number of rows on every rank (DDP needs equal step counts; fewer than `world_size` rows are
left out of an epoch, different ones each epoch); evaluation shards hold every row exactly once,
with unequal lengths, and the pipeline gathers them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

Columns = dict[str, dict[str, torch.Tensor]]


@dataclass
class Vocabulary:
    """Sorted distinct raw ids; raw id -> 1 + its index, unseen ids -> 0 (out of vocabulary)."""

    values: np.ndarray  # (V-1,) sorted, the training split's distinct ids

    @classmethod
    def fit(cls, raw: np.ndarray) -> Vocabulary:
        return cls(values=np.unique(raw))

    @property
    def size(self) -> int:
        return len(self.values) + 1  # + the OOV bucket

    def encode(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw)
        if len(self.values) == 0:
            return np.zeros(raw.shape, dtype=np.int64)
        pos = np.searchsorted(self.values, raw)
        pos_clipped = np.minimum(pos, len(self.values) - 1)
        found = self.values[pos_clipped] == raw
        return np.where(found, pos_clipped + 1, 0).astype(np.int64)


class DenseStats:
    """A dense column's mean and std (population), fitted in one pass or chunk by chunk.

    Count, mean and sum of squared deviations merge by Chan, Golub and LeVeque's pairwise update,
    in float64; the first chunk is taken as it is, so one chunk gives exactly numpy's
    `x.mean()` and `x.std()`. A constant column (its range is 0) maps to 0 with scale 1: its
    computed std would be a rounding residue (5.6e-17 for 0.3), not 0, blowing other splits'
    values up to ~1e15. A zero std reads as scale 1 too.
    """

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0
        self.lo, self.hi = math.inf, -math.inf

    def add(self, x: np.ndarray) -> DenseStats:
        """Merge the values `x` (N,) in; returns self."""
        x = np.asarray(x, dtype=np.float64)
        n_b = len(x)
        if n_b == 0:
            return self
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))
        mean_b = float(x.mean())
        m2_b = float(((x - mean_b) ** 2).sum())
        if self.n == 0:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            return self
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta**2 * self.n * n_b / n
        self.n = n
        return self

    def result(self) -> tuple[float, float]:
        """(mean, std) to standardize with: `(x - mean) / std`."""
        if self.n and self.hi == self.lo:
            return self.lo, 1.0
        std = math.sqrt(self.m2 / self.n) if self.n else 0.0
        return self.mean, std if std > 0 else 1.0


def pad_left(offsets: np.ndarray, values: np.ndarray, max_len: int) -> np.ndarray:
    """Ragged rows (`values[offsets[i]:offsets[i+1]]`) -> (N, max_len), last items kept, left-padded with 0."""
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(offsets)  # (N,)
    n = len(lengths)
    # Column j of row i holds element (end_i - max_len + j) when that is inside the row.
    idx = offsets[1:, None] - max_len + np.arange(max_len)[None, :]  # (N, L)
    valid = idx >= offsets[:-1, None]
    out = np.zeros((n, max_len), dtype=np.int64)
    out[valid] = np.asarray(values)[idx[valid]]
    return out


def batch_rows(batch: Any) -> int:
    """Rows in a (nested dict) columnar batch: its first tensor's length (for ThroughputMonitor)."""
    while isinstance(batch, dict):
        batch = next(iter(batch.values()))
    return len(batch)


class ColumnarBatches(Dataset):
    """A map-style dataset whose items are whole batches.

    Args:
        columns: `{"features": {...}, "labels": {...}, "meta": {...}}`, each tensor with N rows.
        batch_size: rows per batch.
        shuffle: reshuffle rows every epoch (seeded by `seed + epoch`, see `set_epoch`).
        seed: base seed of the row permutation.
        rank, world_size: this process's shard (see the module docstring).
    """

    def __init__(
        self,
        columns: Columns,
        *,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.columns, self.batch_size, self.shuffle, self.seed = columns, batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        lengths = {len(t) for group in columns.values() for t in group.values()}
        if len(lengths) != 1:
            raise ValueError(f"columns have different lengths: {sorted(lengths)}")
        self.num_rows = lengths.pop()
        self.epoch = 0
        self._rows: torch.Tensor | None = None

    def set_epoch(self, epoch: int) -> None:
        """Read the rows in `epoch`'s order from now on.

        The order is drawn when a batch first needs it, once per epoch: Lightning sets the epoch
        through the loader's sampler and again through the training module (for data sets that
        have no sampler), and a permutation of every row costs a fifth of a second at 8M rows.
        """
        if epoch != self.epoch:
            self.epoch, self._rows = epoch, None

    @property
    def device(self) -> torch.device:
        """Where the columns are: batches are sliced there, and the epoch's order is drawn there
        (`recolab.data.device`: the training split on the accelerator)."""
        for group in self.columns.values():
            for t in group.values():
                return t.device
        return torch.device("cpu")

    @property
    def rows(self) -> torch.Tensor:
        """This shard's row indices in the current epoch's order, on the columns' device."""
        if self._rows is None:
            n, w, device = self.num_rows, self.world_size, self.device
            if self.shuffle:
                # The columns' device's generator: on a CPU the host path's permutation, on a
                # GPU one drawn there (another permutation for the seed; recolab.data.device).
                g = torch.Generator(device=device).manual_seed(self.seed + self.epoch)
                # 32-bit indices where they fit: the same permutation as the 64-bit draw (torch
                # draws it identically), in half the memory and three quarters of the time.
                dtype = torch.int32 if n < 2**31 else torch.int64
                order = torch.randperm(n, generator=g, dtype=dtype, device=device)
                # Equal shard sizes so every rank takes the same number of optimizer steps.
                self._rows = order[self.rank : (n // w) * w : w]
            else:
                self._rows = torch.arange(self.rank, n, w, device=device)
        return self._rows

    def __len__(self) -> int:
        return (self.shard_rows + self.batch_size - 1) // self.batch_size

    @property
    def shard_rows(self) -> int:
        """Rows this rank trains on in an epoch (known without drawing the order)."""
        n, w = self.num_rows, self.world_size
        if self.shuffle:
            return n // w
        return len(range(self.rank, n, w))

    @property
    def smallest_batch(self) -> int:
        """Rows in this shard's smallest batch (the last one, unless the shard divides evenly)."""
        rows = self.shard_rows
        return rows - (len(self) - 1) * self.batch_size if rows else 0

    def __getitem__(self, i: int) -> Columns:
        idx = self.rows[i * self.batch_size : (i + 1) * self.batch_size]  # (B,)
        return {
            group: {name: t.index_select(0, idx) for name, t in tensors.items()}
            for group, tensors in self.columns.items()
        }


def resolve_pin_memory(setting: bool | str, trainer: Any) -> bool:
    """`data.pin_memory`: True/False as given; `auto` pins when the trainer trains on a GPU."""
    if setting == "auto":
        return trainer is not None and trainer.strategy.root_device.type == "cuda"
    return bool(setting)


def shard_of(trainer: Any) -> tuple[int, int]:
    """(this process's rank, the number of ranks): (0, 1) without a trainer."""
    return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)


def vocabs_state(vocabs: dict[str, Vocabulary]) -> dict[str, torch.Tensor | list]:
    """Vocabularies as tensors (numeric ids) or plain lists (string ids): checkpoints load with
    `torch.load(weights_only=True)`."""
    return {
        k: torch.from_numpy(v.values) if v.values.dtype.kind in "iuf" else v.values.tolist()
        for k, v in vocabs.items()
    }


def vocabs_from_state(state: dict[str, torch.Tensor | list]) -> dict[str, Vocabulary]:
    """The inverse of `vocabs_state`."""
    return {
        k: Vocabulary(v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
        for k, v in state.items()
    }
