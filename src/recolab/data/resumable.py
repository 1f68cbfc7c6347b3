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

`StreamLoader` does the same for a stream read by loader workers (the streaming data module): its
state is where every worker's stream stands after the batches training took, so it is exact with
workers that read ahead too. Its workers start from a fork server (`worker_context`), never by
forking the training process.
"""

from __future__ import annotations

import logging
import multiprocessing
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

log = logging.getLogger(__name__)

#: Modules the fork server imports once, so that each worker it forks starts without importing
#: torch and pyarrow again.
WORKER_PRELOAD = ["recolab.data.streaming"]


def worker_context() -> multiprocessing.context.BaseContext:
    """The start method of `StreamLoader`'s workers: a fork server.

    The training process runs other threads when a loader starts its workers (Lightning's
    progress bar monitor, the previous loader's queue feeders on their way out, MLflow's). Under
    CPython 3.11 a `fork` that coincides with a Python thread starting or ending can leave the child
    waiting forever on the interpreter's thread-list lock (`PyOS_AfterFork_Child` clears the other
    threads' states before it re-initialises that lock): the worker never starts and the rank
    waits for its batches, or, under DDP, every rank waits in the next collective. Seen here: a
    DDP test stage hung in one run out of three. The fork server is a single-threaded process
    started once per training process; every worker is forked from it, with the same seeds and
    the same batches as under `fork`.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(WORKER_PRELOAD)
    return context


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


class StreamLoader(DataLoader):
    """`DataLoader(dataset, batch_size=None)` over an iterable dataset of whole batches (a stream,
    `recolab.data.streaming.StreamingBatches`), resumable mid-epoch, with or without workers.

    It counts the batches it hands out (a count of what training took, not of what the workers
    read ahead). Its `state_dict()` is the dataset's `position(count, workers)`: where every
    worker's stream stands after them (reader position, shuffle buffer, generator state), which
    Lightning saves in the checkpoint as it does `ResumableLoader`'s. After `load_state_dict()`,
    the next iteration of that same epoch starts there (`dataset.resume`); another epoch starts
    from its first batch. Like `ResumableLoader`, the loader draws its workers' base seed from its
    own generator, so iterating it does not move torch's global random state.
    """

    def __init__(
        self,
        dataset: Any,
        *,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        resumable: bool = True,
    ) -> None:
        super().__init__(
            dataset,
            batch_size=None,
            num_workers=num_workers,
            pin_memory=pin_memory,
            generator=torch.Generator().manual_seed(seed),
            multiprocessing_context=worker_context() if num_workers > 0 else None,
        )
        self.consumed = 0
        self.resumable = resumable  # False: a checkpoint's position is ignored (the epoch restarts)
        self._pending: dict[str, Any] | None = None

    @property
    def workers(self) -> int:
        return max(self.num_workers, 1)

    def __iter__(self):
        state, self._pending = self._pending, None
        self.consumed = 0
        if state is not None and int(state["epoch"]) == self.dataset.epoch:
            reason = self.dataset.mismatch(state, self.workers)
            if reason is None:
                self.dataset.resume(state, self.workers)
                self.consumed = int(state["batches"])
            else:
                log.warning("not resuming the stream where it stopped: %s", reason)
        iterator = super().__iter__()  # the workers hold their copies of the dataset now
        self.dataset._resume = None
        return self._counted(iterator)

    def _counted(self, iterator):
        for batch in iterator:
            self.consumed += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return self.dataset.position(self.consumed, self.workers)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending = state if self.resumable and "streams" in state else None
