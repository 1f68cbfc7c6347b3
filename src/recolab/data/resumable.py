"""A data loader over columnar batches that Lightning can resume in the middle of an epoch.

Lightning saves a loader's `state_dict()` in each checkpoint and calls `load_state_dict()` before
iterating again on resume (a loader without them restarts the epoch from its first batch, so a
resumed run would see that epoch's first batches twice and its last ones never). The state here
is `{epoch, batches}`: the epoch (set by Lightning through the sampler's `set_epoch` at each epoch
start) and how many of its batches were handed out. A resumed loader skips those batches if, and
only if, it is asked for the same epoch, so a checkpoint taken at an epoch's end (all batches
handed out, or `limit_train_batches` of them) resumes at the next epoch's first batch.

The count is exact with `num_workers=0` (the default here): the sampler then advances exactly
when a batch is fetched, and Lightning does not prefetch from a loader whose length it knows.
The loader also draws its base seed from its own generator, never from torch's global one, so
iterating it does not move the random state that dropout uses (see `recolab.resume`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class ResumableOrder(Sampler[int]):
    """Batch indices `0..len(dataset)-1`, resumable mid-epoch; forwards `set_epoch` to the dataset."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.epoch = 0
        self.consumed = 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)  # the epoch's seeded permutation of rows

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        # A generator: this runs at the first fetch, after Lightning's set_epoch for the epoch.
        start = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            start = min(self._resume[1], len(self))
        self._resume = None
        self.consumed = start
        for i in range(start, len(self)):
            self.consumed = i + 1
            yield i

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = (int(state["epoch"]), int(state["batches"]))


class ResumableLoader(DataLoader):
    """`DataLoader(dataset, batch_size=None)` over a dataset whose items are whole batches, resumable
    mid-epoch (see the module docstring)."""

    def __init__(self, dataset: Dataset, *, pin_memory: bool = False, seed: int = 0) -> None:
        order = ResumableOrder(dataset)
        super().__init__(
            dataset,
            batch_size=None,
            sampler=order,
            pin_memory=pin_memory,
            generator=torch.Generator().manual_seed(seed),
        )
        self.order = order

    def state_dict(self) -> dict[str, Any]:
        return self.order.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order.load_state_dict(state)
