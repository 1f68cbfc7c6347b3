"""Streaming parquet: ranking data larger than memory, read row group by row group.

Layout: a folder with one sub-folder per split, each a folder of parquet files with row groups:

    <path>/train/part-00000.parquet ...   <path>/val/...   <path>/test/...

`setup` makes one streaming pass (`_scan`) over every split before any training starts: it
validates each row group with `RankDataModule.validate` (failing, or dropping and counting bad
rows, as the in-memory module does; every file must hold each column in the same kind of values),
counts each row group's good rows, and on the training split
fits the vocabularies (a running union of each row group's distinct ids) and the dense mean and
std (Chan et al.'s pairwise update, float64). Vocabularies from a checkpoint (`load_state_dict`)
win over fitting. Memory during the scan and during training is a row group plus the shuffle
buffer, whatever the data's size; vocabularies grow with the number of distinct ids only. One
check differs from the in-memory module's for that reason: an event log's duplicate rows (a
`timestamp` column, `recolab.data.checks`) are found within each row group, not across row
groups or files, which would take memory that grows with the rows. With a checkpoint's
vocabularies (`recolab evaluate`), only the splits the stage reads are scanned.
Paths whose part below a split's folder starts with `_` or `.` are skipped, as in pyarrow's
datasets.

Rows to ranks and loader workers (`Shard`): the split's row groups, in a per-epoch random order
for training (seed + epoch, the same on every rank), are laid end to end as one sequence of N good
rows. Rank r takes the contiguous range [o + r * floor(N / W), o + (r + 1) * floor(N / W)) for
training, wrapping around the sequence's end: equal row counts, so equal step counts under DDP,
leaving out N mod W < W rows; the offset o is 0 when W divides N and otherwise drawn per epoch
(`Shard.offset`), so the rows left out differ from epoch to epoch. Evaluation ranks take [floor(N r / W), floor(N (r+1) / W)):
every row exactly once, lengths differing by at most one (the pipeline gathers them). A rank's
range is then cut among its DataLoader workers in whole batches (the remainder goes to the last
worker), so a rank yields ceil(R / B) batches whatever its number of workers: one partial batch
per rank per epoch at most. Rows are shuffled by row group and within a buffer of
`shuffle_buffer` rows in each worker (half of it carries over into the next refill).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import shutil
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from recolab.data.checks import TIMESTAMP, open_parquet, read_row_group
from recolab.data.columnar import (
    Columns,
    DenseStats,
    Vocabulary,
    resolve_pin_memory,
    shard_of,
)
from recolab.data.datamodule import SPLITS, DataError, Fractions, RankDataModule, _list_values
from recolab.data.resumable import StreamLoader
from recolab.data.source import split_cuts
from recolab.data.synthetic_video import WorldParams, cached_world
from recolab.params import Count, Count0, checked
from recolab.stacks import dump_stacks_on_signal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RowGroup:
    """One row group of one file, with its number of good rows (after validation)."""

    file: str
    index: int
    rows: int


@dataclass(frozen=True)
class Piece:
    """Rows `[start, stop)` of a row group's good rows."""

    group: RowGroup
    start: int
    stop: int


def _cut(groups: list[RowGroup], lo: int, hi: int) -> list[Piece]:
    """The pieces holding rows `[lo, hi)` of the groups laid end to end."""
    pieces, offset = [], 0
    for g in groups:
        a, b = max(lo, offset), min(hi, offset + g.rows)
        if a < b:
            pieces.append(Piece(g, a - offset, b - offset))
        offset += g.rows
        if offset >= hi:
            break
    return pieces


@dataclass(frozen=True)
class Shard:
    """Which rows one rank and one loader worker read in one epoch (see the module docstring).

    Args:
        groups: the split's row groups, in file order.
        batch_size: B.
        train: equal rows per rank, row groups in a per-epoch random order.
        seed: base seed of the row-group order.
        rank, world_size: the DDP process and the number of processes.
    """

    groups: tuple[RowGroup, ...]
    batch_size: int
    train: bool
    seed: int = 0
    rank: int = 0
    world_size: int = 1

    @property
    def total_rows(self) -> int:
        return sum(g.rows for g in self.groups)

    def rank_range(self) -> tuple[int, int]:
        n, w, r = self.total_rows, self.world_size, self.rank
        if self.train:
            per = n // w
            return r * per, (r + 1) * per
        return n * r // w, n * (r + 1) // w

    def num_batches(self) -> int:
        lo, hi = self.rank_range()
        return math.ceil((hi - lo) / self.batch_size)

    def order(self, epoch: int) -> list[RowGroup]:
        if not self.train:
            return list(self.groups)
        g = torch.Generator().manual_seed(self.seed + epoch)
        return [self.groups[i] for i in torch.randperm(len(self.groups), generator=g).tolist()]

    def offset(self, epoch: int) -> int:
        """Where the ranks' training ranges start in the epoch's sequence of rows: 0 when the ranks
        share out every row, otherwise a row drawn per epoch (seed + epoch, the same on every rank;
        the ranges wrap around the sequence's end), so the N mod W rows left out differ from epoch
        to epoch even when the split is a single row group."""
        n, w = self.total_rows, self.world_size
        if not self.train or n % w == 0:
            return 0
        g = torch.Generator().manual_seed(self.seed + epoch + 1_000_003)
        return int(torch.randint(n, (1,), generator=g))

    def pieces(self, epoch: int, worker: int = 0, num_workers: int = 1) -> list[Piece]:
        """This rank's and worker's pieces: whole batches per worker, the remainder to the last."""
        lo, hi = self.rank_range()
        full, rest = divmod(hi - lo, self.batch_size)
        counts = [full // num_workers + (k < full % num_workers) for k in range(num_workers)]
        start = lo + sum(counts[:worker]) * self.batch_size
        stop = start + counts[worker] * self.batch_size + (rest if worker == num_workers - 1 else 0)
        order, n, shift = self.order(epoch), self.total_rows, self.offset(epoch)
        start, stop = start + shift, stop + shift  # stop - start <= n: at most one wrap
        if stop <= n:
            return _cut(order, start, stop)
        if start >= n:
            return _cut(order, start - n, stop - n)
        return _cut(order, start, n) + _cut(order, 0, stop - n)


class StreamingBatches(IterableDataset):
    """Columnar batches streamed from parquet row groups (an `IterableDataset` of whole batches).

    Args:
        shard: which rows this rank reads (workers split them further at iteration time).
        read: a piece -> its encoded columns (validation and encoding of the data module).
        shuffle_buffer: rows held for shuffling in each worker; 0 or `shuffle=False` keeps order.
        shuffle: shuffle row groups (see `Shard.order`) and rows within the buffer.
        epoch: the epoch whose order is read (see `set_epoch`).
        read_ahead: read (and encode) the next piece in a thread while the current one's
            batches are handed out, so a GPU does not wait for the next row group; the batches
            are the same either way. The data module sets it when it pins memory for a GPU.
    """

    def __init__(
        self,
        shard: Shard,
        read: Any,
        *,
        shuffle_buffer: int,
        shuffle: bool,
        epoch: int = 0,
        read_ahead: bool = False,
    ) -> None:
        super().__init__()
        self.shard, self.read, self.epoch, self.read_ahead = shard, read, epoch, read_ahead
        self.shuffle, self.shuffle_buffer = shuffle, shuffle_buffer
        #: A checkpoint's position (`position`), used by the next iteration only.
        self._resume: dict[str, Any] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.shard.num_batches()

    @property
    def batch_size(self) -> int:
        return self.shard.batch_size

    @property
    def shard_rows(self) -> int:
        """Rows this rank reads in an epoch (all its loader workers together)."""
        lo, hi = self.shard.rank_range()
        return hi - lo

    @property
    def smallest_batch(self) -> int:
        """Rows in this rank's smallest batch: every batch is whole but the last loader worker's
        last one, which holds the remainder (`Shard.pieces`)."""
        rest = self.shard_rows % self.batch_size
        return rest or min(self.shard_rows, self.batch_size)

    def _worker_stream(self, worker: int, workers: int) -> tuple[list[Piece], torch.Generator, int]:
        """A loader worker's pieces and seeded generator, and how many batches it yields."""
        pieces = self.shard.pieces(self.epoch, worker, workers)
        g = torch.Generator().manual_seed(
            self.shard.seed + 7919 * self.epoch + 104729 * (self.shard.rank * workers + worker)
        )
        return pieces, g, math.ceil(sum(p.stop - p.start for p in pieces) / self.shard.batch_size)

    def _buffer(self) -> tuple[bool, int, int]:
        """Whether rows are shuffled, the buffer's capacity and the rows carried into each refill."""
        shuffle = self.shuffle and self.shuffle_buffer > 0
        capacity = (
            max(self.shuffle_buffer, self.shard.batch_size) if shuffle else self.shard.batch_size
        )
        return shuffle, capacity, capacity // 2 if shuffle else 0

    def __iter__(self) -> Iterator[Columns]:
        # Not a generator itself: a resume position is taken when the iteration starts, which
        # `StreamLoader` clears once its workers hold their copies.
        info = get_worker_info()
        if info is not None:  # a loader worker, forked from the fork server: `kill -USR2` dumps it
            dump_stacks_on_signal()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        resume = self._resume if info is None or self._resume is None else dict(self._resume)
        if info is None:
            self._resume = None
        if resume is not None and int(resume["epoch"]) != self.epoch:
            resume = None
        cursor = _Cursor()
        if resume is not None:  # this process plays the worker whose batch is due next
            worker = (resume["first"] + worker) % workers
            saved = resume["streams"][worker]
        pieces, g, _ = self._worker_stream(worker, workers)
        if resume is not None:
            g.set_state(saved["rng"])
            cursor = _Cursor(
                next_piece=int(saved["next_piece"]),
                rest=self._rows(pieces, saved["rest"]),
                final=bool(saved["final"]),
            )

        def read(i: int) -> Columns:
            return self.read(pieces[i])

        return self._stream(
            _ReadAhead(read, len(pieces)) if self.read_ahead else read, pieces, g, cursor
        )

    def _stream(
        self, read: Any, pieces: list[Piece], g: torch.Generator, cursor: _Cursor
    ) -> Iterator[Columns]:
        """`_stream` over `pieces` (`read(i)` reads the i-th) with this dataset's batches and buffer."""
        shuffle, capacity, keep = self._buffer()
        return _stream(
            read,
            len(pieces),
            batch=self.shard.batch_size,
            capacity=capacity,
            keep=keep,
            shuffle=shuffle,
            g=g,
            cursor=cursor,
        )

    # -- resuming mid-epoch ------------------------------------------------------------------

    def worker_counts(self, workers: int) -> list[int]:
        """Batches each loader worker yields this epoch."""
        return [self._worker_stream(w, workers)[2] for w in range(workers)]

    @staticmethod
    def delivered(counts: list[int], batches: int) -> tuple[list[int], int]:
        """After `batches` of an epoch: how many came from each worker, and the worker of the next.

        DataLoader asks its workers in turn and hands their batches out in that order, skipping a
        worker once it is exhausted: batch j of every worker, workers in order, then batch j + 1.
        """
        taken, due = [0] * len(counts), 0
        for j in range(max(counts, default=0) + 1):
            for w, n in enumerate(counts):
                if j >= n:
                    continue
                if sum(taken) == batches:
                    return taken, w
                taken[w] += 1
                due = w
        return taken, due

    def position(self, batches: int, workers: int) -> dict[str, Any]:
        """Where every worker's stream stands after the epoch's first `batches` batches (plain
        types and tensors): its reader position (the next piece: file, row group, first row), the
        buffer's rows not yet handed out (as positions in the worker's sequence of rows, in the
        order they will be handed out) and its generator's state.

        Found by replaying the stream on row positions instead of rows: the random draws depend
        only on the row counts, so this is the state the worker itself had, without reading data.
        """
        shuffle = self._buffer()[0]
        taken, first = self.delivered(self.worker_counts(workers), batches)
        streams = []
        for w in range(workers):
            pieces, g, _ = self._worker_stream(w, workers)
            starts = np.cumsum([0] + [p.stop - p.start for p in pieces]).tolist()
            cursor = _Cursor()
            rows = self._stream(
                lambda i, starts=starts: {"row": {"id": torch.arange(starts[i], starts[i + 1])}},
                pieces,
                g,
                cursor,
            )
            for _ in range(taken[w]):
                next(rows)
            rows.close()
            at = pieces[cursor.next_piece] if cursor.next_piece < len(pieces) else None
            streams.append(
                {
                    "batches": taken[w],
                    "next_piece": cursor.next_piece,
                    "file": at.group.file if at else "",
                    "row_group": at.group.index if at else -1,
                    "offset": at.start if at else -1,
                    "rest": cursor.rest["row"]["id"].clone()
                    if cursor.rest
                    else torch.zeros(0, dtype=torch.long),
                    "final": cursor.final,
                    "rng": g.get_state(),
                }
            )
        order = self.shard.order(self.epoch)
        files = sorted({grp.file for grp in order})
        index = {f: i for i, f in enumerate(files)}
        return {
            "version": STREAM_STATE_VERSION,
            "epoch": self.epoch,
            "batches": batches,
            "rank": self.shard.rank,
            "world_size": self.shard.world_size,
            "workers": workers,
            "batch_size": self.shard.batch_size,
            "shuffle_buffer": self.shuffle_buffer if shuffle else 0,
            "seed": self.shard.seed,
            "files": files,
            "order": torch.tensor([[index[grp.file], grp.index, grp.rows] for grp in order]),
            "first": first,
            "streams": streams,
        }

    def mismatch(self, state: dict[str, Any], workers: int) -> str | None:
        """Why `state` (from `position`) does not describe this loader's epoch, or None."""
        shuffle, _, _ = self._buffer()
        mine = {
            "world_size": self.shard.world_size,
            "workers": workers,
            "batch_size": self.shard.batch_size,
            "shuffle_buffer": self.shuffle_buffer if shuffle else 0,
            "seed": self.shard.seed,
        }
        for key, value in mine.items():
            if int(state[key]) != value:
                return f"it was saved with {key}={int(state[key])}, this loader has {key}={value}"
        order = [(state["files"][int(f)], int(i), int(n)) for f, i, n in state["order"].tolist()]
        now = [(g.file, g.index, g.rows) for g in self.shard.order(int(state["epoch"]))]
        if order != now:
            k = next(
                (k for k, (a, b) in enumerate(zip(order, now)) if a != b), min(len(order), len(now))
            )
            was, new = (
                "{} row group {} ({} rows)".format(*rows[k]) if k < len(rows) else "nothing"
                for rows in (order, now)
            )
            return (
                f"row group {k} of epoch {int(state['epoch'])}'s order was {was} in the run, "
                f"is {new} now (the files changed since the run started)"
            )
        return None

    def resume(self, state: dict[str, Any], workers: int) -> None:
        """Start the next iteration where `state` (from `position`, of this epoch) stands.

        A state saved by another rank (Lightning saves rank zero's) is replayed for this one.
        """
        if int(state["rank"]) != self.shard.rank:
            state = self.position(int(state["batches"]), workers)
        self._resume = state

    def _rows(self, pieces: list[Piece], positions: torch.Tensor) -> Columns | None:
        """The rows at `positions` of the worker's sequence of pieces, in that order."""
        if not len(positions):
            return None
        starts = torch.tensor(np.cumsum([0] + [p.stop - p.start for p in pieces]))
        ordered, rank = positions.sort()
        which = torch.searchsorted(starts, ordered, right=True) - 1
        parts = []
        for i in which.unique().tolist():
            local = ordered[which == i] - starts[i]
            parts.append(_take(self.read(pieces[i]), local))
        rows = _concat(parts)
        return _take(rows, torch.empty_like(rank).scatter_(0, rank, torch.arange(len(rank))))


#: The layout of `StreamingBatches.position`'s state; a checkpoint without one is not resumed exactly.
STREAM_STATE_VERSION = 1


class _ReadAhead:
    """`read(i)` for i = 0, 1, ... in order, each call starting the read of piece i + 1 in a
    background thread (pyarrow and numpy release the GIL while reading and encoding). Any other
    order is read directly. The thread ends after the last piece (a stream dropped mid-epoch
    leaves at most one piece read in vain, and its idle thread ends with the executor)."""

    def __init__(self, read: Any, num_pieces: int) -> None:
        self.read = read
        self.num_pieces = num_pieces
        self._next: tuple[int, Any] | None = None  # (piece, its Future)
        self._pool: Any = None

    def __call__(self, i: int) -> Columns:
        if self._next is not None and self._next[0] == i:
            cols = self._next[1].result()
        else:
            cols = self.read(i)
        self._next = None
        if i + 1 < self.num_pieces:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="recolab-read-ahead")
            self._next = (i + 1, self._pool.submit(self.read, i + 1))
        elif self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
        return cols


@dataclass
class _Cursor:
    """Where a worker's stream stands after the last batch it handed out."""

    next_piece: int = 0  # pieces read so far
    rest: Columns | None = None  # the buffer's rows not handed out yet, in the order they will be
    final: bool = False  # every piece is read: the rest goes out as it is


def _stream(
    read: Any,
    num_pieces: int,
    *,
    batch: int,
    capacity: int,
    keep: int,
    shuffle: bool,
    g: torch.Generator,
    cursor: _Cursor,
) -> Iterator[Columns]:
    """A worker's batches from `cursor` on (updated after each): pieces `read(i)` are gathered
    until `capacity` rows are held, shuffled together, handed out in whole batches down to `keep`
    rows, which carry over into the next refill; the rows left at the end go out last."""

    def hand_out(buffer: Columns, held: int, final: bool) -> Iterator[Columns]:
        start = 0
        while (start < held) if final else (held - start - batch >= keep):
            stop = min(start + batch, held)
            cursor.rest, cursor.final = _slice(buffer, stop, held), final
            yield _slice(buffer, start, stop)
            start = stop
        cursor.rest = _slice(buffer, start, held)

    rest = cursor.rest
    held = _rows_in(rest)
    if cursor.final:
        if held:
            yield from hand_out(rest, held, True)
        return
    if held:  # stopped within a refill: what the buffer still held, in its shuffled order
        yield from hand_out(rest, held, False)
        rest = cursor.rest
        held = _rows_in(rest)
    chunks = [rest] if held else []
    for i in range(cursor.next_piece, num_pieces):
        chunks.append(read(i))
        cursor.next_piece = i + 1
        held = sum(map(_rows_in, chunks))
        if held < capacity:
            continue
        buffer = _concat(chunks)
        if shuffle:
            buffer = _take(buffer, torch.randperm(held, generator=g))
        yield from hand_out(buffer, held, False)
        chunks = [cursor.rest] if _rows_in(cursor.rest) else []
    held = sum(map(_rows_in, chunks))
    if held:
        buffer = _concat(chunks)
        if shuffle:
            buffer = _take(buffer, torch.randperm(held, generator=g))
        yield from hand_out(buffer, held, True)


def _rows_in(cols: Columns | None) -> int:
    for tensors in (cols or {}).values():
        for t in tensors.values():
            return len(t)
    return 0


def _concat(chunks: list[Columns]) -> Columns:
    if len(chunks) == 1:
        return chunks[0]
    return {
        grp: {k: torch.cat([c[grp][k] for c in chunks]) for k in chunks[0][grp]}
        for grp in chunks[0]
    }


def _take(cols: Columns, idx: torch.Tensor) -> Columns:
    return {grp: {k: t.index_select(0, idx) for k, t in ts.items()} for grp, ts in cols.items()}


def _slice(cols: Columns, a: int, b: int) -> Columns:
    return {grp: {k: t[a:b] for k, t in ts.items()} for grp, ts in cols.items()}


def _kind(type_: pa.DataType) -> str:
    """A column type's kind of values, for comparing files: integer, float, string, a list of a
    kind, or the type itself (dictionary encoding and widths set aside)."""
    if pa.types.is_dictionary(type_):
        type_ = type_.value_type
    if pa.types.is_integer(type_) or pa.types.is_boolean(type_):
        return "integer"
    if pa.types.is_floating(type_):
        return "float"
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return "string"
    if (
        pa.types.is_list(type_)
        or pa.types.is_large_list(type_)
        or pa.types.is_fixed_size_list(type_)
    ):
        return f"list<{_kind(type_.value_type)}>"
    return str(type_)


class StreamingParquetDataModule(RankDataModule):
    """A ranking data set streamed from a folder of parquet files (see the module docstring).

    Args:
        path: the folder holding one sub-folder (of parquet files) per split.
        splits: `{train: sub-folder, val: ..., test: ...}`, relative to `path`.
        shuffle_buffer: rows held for shuffling in each loader worker.
        num_workers: DataLoader worker processes per rank (0 reads in the training process).
        **kwargs: `RankDataModule` arguments (`sparse`, `dense`, `tasks`, `meta`, `batch_size`, ...);
            `split` must be null: the folders are the split.
    """

    @checked
    def __init__(
        self,
        *,
        path: str,
        splits: dict[str, str] | None = None,
        shuffle_buffer: Count0 = 100_000,
        num_workers: Count0 = 1,
        **kwargs: Any,
    ) -> None:
        if kwargs.pop("split", None) is not None:
            raise ValueError(
                "a streaming data set is split by folder: set data.splits, not data.split"
            )
        super().__init__(**kwargs)
        self.split_cfg = {"kind": "folder"}  # split by folder (`splits`), not by `data.split`
        if getattr(self, "negative_downsampling", None):
            raise ValueError(
                "data.negative_downsampling is not supported by streaming data yet: use the in-memory module"
            )
        if self.device_resident is True:
            raise ValueError(
                "data.device_resident=true: streamed data is read row group by row group and stays "
                "on the host (pinned for a GPU, the next row group read ahead); set it to false or "
                "auto, or use the in-memory module (data=synthetic_video)"
            )
        self.path = path
        self.splits = {s: s for s in SPLITS} | dict(splits or {})
        self.shuffle_buffer = shuffle_buffer
        self.num_workers = num_workers
        self.groups: dict[str, list[RowGroup]] = {}
        #: Whether the data has a timestamp column (the first file read says; see `required_columns`).
        self._timestamp: bool | None = None
        #: Each column's kind of values, with the file that set it (`_check_types`).
        self._column_kinds: dict[str, tuple[str, str, pa.DataType]] = {}
        #: False once `check_resume` let an inexact resume through: the training loader then
        #: ignores the checkpoint's stream position and restarts the epoch.
        self.resume_exact = True

    # -- the streaming pass -----------------------------------------------------------------

    def _files(self, split: str) -> list[Path]:
        """The split's parquet files, in name order. As pyarrow's datasets do, paths with a part
        (below the split's folder) that starts with `_` or `.` are not data: a writer's
        `_temporary/` leftovers, `_SUCCESS`, hidden copies."""
        folder = Path(self.path) / self.splits[split]
        files = (
            sorted(
                f
                for f in folder.rglob("*.parquet")
                if not any(part.startswith(("_", ".")) for part in f.relative_to(folder).parts)
            )
            if folder.is_dir()
            else [folder]
            if folder.is_file()
            else []
        )
        if not files:
            raise DataError(
                f"{folder}: no parquet files for the {split} split (data.path, data.splits.{split})"
            )
        return files

    #: The splits a Lightning stage reads, when the vocabularies come from a checkpoint (without
    #: one, training's vocabularies are fitted, and every split is checked before training).
    STAGE_SPLITS = {"validate": ("val",), "test": ("test",), "predict": ("test",)}

    def setup(self, stage: str | None = None) -> None:
        fit = not self.restored  # a checkpoint's vocabularies and statistics win (load_state_dict)
        needed = SPLITS if fit else self.STAGE_SPLITS.get(stage or "fit", SPLITS)
        todo = [split for split in needed if split not in self.groups]
        if not todo:
            return
        self.source_path = str(self.path)
        if self._timestamp is None:
            with open_parquet(self._files(todo[0])[0]) as pf:
                self._timestamp = TIMESTAMP in pf.schema_arrow.names
        for split in todo:  # `_validated` adds each row group's dropped rows to dropped_rows
            self.groups[split] = self._scan(split, fit=fit and split == "train")
        self.schema = self._schema()
        log.info(
            "data %s (streaming): %s rows (%s), %d dropped",
            self.source_path,
            "/".join(str(sum(g.rows for g in self.groups[s])) for s in todo),
            "/".join(todo),
            self.dropped_rows,
        )

    @property
    def required_columns(self) -> list[str]:
        """The columns used, and `timestamp` where the data has one: it is no feature here (the
        folders are the split), but it makes the rows an event log, which is checked for missing
        timestamps and duplicate rows (`recolab.data.checks`) row group by row group."""
        cols = super().required_columns
        return [*cols, TIMESTAMP] if self._timestamp and TIMESTAMP not in cols else cols

    def _scan(self, split: str, *, fit: bool) -> list[RowGroup]:
        """Validate and count every row group of a split; fit vocabularies and dense stats on it if asked."""
        ids: dict[str, np.ndarray] = {}
        stats = {name: DenseStats() for name in self.dense_names}
        fit_sequences = [n for n, s in self.sequence_specs.items() if s.get("vocab_of") is None]
        groups = []
        for file in self._files(split):
            with open_parquet(file) as pf:  # one file open at a time, however many there are
                self._check_columns(str(file), pf.schema_arrow.names)
                self._check_types(file, pf.schema_arrow)
                for i in range(pf.num_row_groups):
                    table = self._validated(
                        read_row_group(pf, i, self.required_columns, file),
                        f"{file} (row group {i})",
                    )
                    groups.append(RowGroup(str(file), i, table.num_rows))
                    if fit:
                        self._fit_group(table, ids, stats, fit_sequences)
        if not sum(g.rows for g in groups):
            raise DataError(
                f"{Path(self.path) / self.splits[split]}: the {split} split has no rows"
            )
        if fit:
            self.vocabs = {name: Vocabulary(values) for name, values in ids.items()}
            self.dense_stats = {name: s.result() for name, s in stats.items()}
        return groups

    def _fit_group(
        self,
        table: pa.Table,
        ids: dict[str, np.ndarray],
        stats: dict[str, DenseStats],
        fit_sequences: list[str],
    ) -> None:
        """Adds one training row group to the running vocabularies and dense statistics."""
        for name in self.sparse_names:
            values = np.unique(table.column(name).to_numpy(zero_copy_only=False))
            ids[name] = values if name not in ids else np.union1d(ids[name], values)
        for name in fit_sequences:
            values = _list_values(table.column(name))
            values = np.unique(values[values != 0])
            ids[name] = values if name not in ids else np.union1d(ids[name], values)
        for name in self.dense_names:
            stats[name].add(table.column(name).to_numpy(zero_copy_only=False).astype(np.float64))

    def _check_types(self, file: Path, schema: pa.Schema) -> None:
        """Every file of the data set holds each column used in the same kind of values as the
        first file read: ids all integers or all strings, and so on. (Within a kind, widths may
        differ: int32 in one file and int64 in another read as the same ids; labels and dense
        features, read as floats, may be integers in one file and floats in another.)"""
        numbers = {*self.dense_names, *self.task_names}
        for name in self.required_columns:
            kind = _kind(schema.field(name).type)
            if name in numbers and kind in ("integer", "float"):
                kind = "number"
            first = self._column_kinds.setdefault(name, (kind, str(file), schema.field(name).type))
            if first[0] != kind:
                raise DataError(
                    f"{file}: column {name!r} holds {schema.field(name).type}, but in {first[1]} it "
                    f"holds {first[2]}; every file must hold a column in the same kind of values"
                )

    def _validated(self, table: pa.Table, where: str) -> pa.Table:
        """`RankDataModule.validate` on one row group, its messages naming the file and row
        group; adds its dropped rows to `dropped_rows` (a row group of bad rows only is empty)."""
        if table.num_rows == 0:
            return table
        table, dropped = self.validate(table, where)
        self.dropped_rows += dropped
        return table

    # -- reading ----------------------------------------------------------------------------

    def _loader(self, split: str, *, shuffle: bool, batch_size: int) -> StreamLoader:
        rank, world = shard_of(self.trainer)
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        shard = Shard(
            tuple(self.groups[split]),
            batch_size,
            train=shuffle,
            seed=self.seed,
            rank=rank,
            world_size=world,
        )
        pin = resolve_pin_memory(self.pin_memory, self.trainer)
        dataset = StreamingBatches(
            shard,
            _PieceReader(self),
            shuffle_buffer=self.shuffle_buffer,
            shuffle=shuffle,
            epoch=epoch,
            read_ahead=bool(pin),  # for a GPU: the next row group is read while it trains
        )
        # Resumable mid-epoch (recolab.data.resumable.StreamLoader): its position goes into checkpoints.
        return StreamLoader(
            dataset,
            num_workers=self.num_workers,
            pin_memory=bool(pin),
            seed=self.seed,
            resumable=self.resume_exact,  # an inexact resume (consented) restarts the epoch
        )

    def check_resume(self, path: str | Path, *, allow_inexact: bool) -> bool:
        """Before fitting from checkpoint `path`: whether the training stream resumes exactly where
        the run stopped; `ResumeError` where it would not, unless `allow_inexact` (the config's
        `resume_inexact=true`), which restarts the stopped epoch from its first batch instead.

        Exact: a checkpoint taken between epochs, or one holding the stream's position
        (`StreamingBatches.position`) for these settings and files. Not: a mid-epoch checkpoint
        without it (written by recolab before it saved the position), or one whose position is of
        other settings or other files.
        """
        from recolab.resume import ResumeError, load_weights_only

        ckpt = load_weights_only(path, mmap=True)
        fit_loop = (ckpt.get("loops") or {}).get("fit_loop") or {}
        progress = fit_loop.get("epoch_loop.batch_progress") or {}
        mid_epoch = int((progress.get("current") or {}).get("ready", 0)) > 0 and not bool(
            progress.get("is_last_batch", False)
        )
        states = (fit_loop.get("state_dict") or {}).get("combined_loader") or []
        state = next((s for s in states if isinstance(s, dict) and "streams" in s), None)
        reason = None
        if mid_epoch and state is None:
            reason = (
                "it was taken mid-epoch and holds no position in the data stream (written by "
                "recolab before streaming resume saved it)"
            )
        elif mid_epoch and int(state.get("version", -1)) != STREAM_STATE_VERSION:
            reason = f"its stream position has layout version {state.get('version')}, this recolab reads {STREAM_STATE_VERSION}"
        elif mid_epoch:
            shard = Shard(
                tuple(self.groups["train"]),
                int(state["batch_size"]),
                train=True,
                seed=self.seed,
                rank=int(state["rank"]),
                world_size=int(state["world_size"]),
            )
            dataset = StreamingBatches(
                shard,
                None,
                shuffle_buffer=self.shuffle_buffer,
                shuffle=True,
                epoch=int(state["epoch"]),
            )
            reason = dataset.mismatch(state, max(self.num_workers, 1)) or (
                None
                if int(state["batch_size"]) == self.batch_size
                else f"it was saved with batch_size={int(state['batch_size'])}, this run has {self.batch_size}"
            )
        self.resume_exact = reason is None
        if reason is None:
            return True
        if not allow_inexact:
            raise ResumeError(
                f"ckpt_path: {path}: this streaming run cannot resume exactly: {reason}. Resuming "
                "would restart the epoch from its first batch (other batches than the run would "
                "have seen, and other results). Set resume_inexact=true to resume anyway (the "
                "MLflow run is tagged recolab.resume_exact=false), or start a new run (ckpt_path=null)"
            )
        log.warning(
            "ckpt_path: %s: resuming inexactly (resume_inexact=true): %s; the epoch restarts "
            "from its first batch",
            path,
            reason,
        )
        return False


class _PieceReader:
    """Reads and encodes one piece; holds a copy of the data module's encoding state, not its trainer.

    It travels to DataLoader workers (pickled under `spawn`), so it carries no trainer and opens
    files lazily in the process that reads them. It keeps the `OPEN_FILES` files it read last
    open (an epoch visits row groups in a shuffled order, so a folder of thousands of files would
    otherwise hold a descriptor per file and run into the process's limit).
    """

    OPEN_FILES = 8

    def __init__(self, dm: StreamingParquetDataModule) -> None:
        self.dm = copy.copy(dm)
        self.dm.trainer = None
        self.files: OrderedDict[str, pq.ParquetFile] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        return {"dm": self.dm, "files": OrderedDict()}

    def _open(self, file: str) -> pq.ParquetFile:
        if file in self.files:
            self.files.move_to_end(file)
        else:
            if len(self.files) >= self.OPEN_FILES:
                self.files.popitem(last=False)[1].close()
            self.files[file] = pq.ParquetFile(file)
        return self.files[file]

    def __call__(self, piece: Piece) -> Columns:
        g = piece.group
        table = self._open(g.file).read_row_group(g.index, columns=self.dm.required_columns)
        table = self.dm._validated(table, f"{g.file} (row group {g.index})")
        if table.num_rows != g.rows:
            raise DataError(
                f"{g.file} row group {g.index}: {table.num_rows} good rows, the scan counted {g.rows}; did the file change?"
            )
        return self.dm._encode(table.slice(piece.start, piece.stop - piece.start))


# -- writing a data set as a folder of parquet files ----------------------------------------


def write_parquet_folder(
    source: str | Path,
    out: str | Path,
    *,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    rows_per_file: int = 1_000_000,
    row_group_size: int = 100_000,
    read_batch: int = 65_536,
) -> Path:
    """Split one parquet file, in its row order, into `out/{train,val,test}/part-NNNNN.parquet`.

    The cuts are the in-memory time split's (`round(cumsum(fractions) * n)`) when the file is in
    time order. Reads `read_batch` rows at a time, so memory stays bounded; writes into a temporary
    folder renamed into place at the end (a killed writer leaves nothing half-written).
    """
    source, out = Path(source), Path(out)
    pf = pq.ParquetFile(source)
    n = pf.metadata.num_rows
    cuts = [0, *split_cuts(n, fractions).tolist(), n]
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    writer: pq.ParquetWriter | None = None
    split, file_no, in_file, row = 0, 0, 0, 0

    def open_writer() -> pq.ParquetWriter:
        folder = tmp / SPLITS[split]
        folder.mkdir(parents=True, exist_ok=True)
        return pq.ParquetWriter(folder / f"part-{file_no:05d}.parquet", pf.schema_arrow)

    for batch in pf.iter_batches(batch_size=read_batch):
        table = pa.Table.from_batches([batch])
        while table.num_rows:
            while row >= cuts[split + 1]:  # next split (skipping empty ones)
                if writer is not None:
                    writer.close()
                    writer = None
                split, file_no, in_file = split + 1, 0, 0
            if writer is None or in_file >= rows_per_file:
                if writer is not None:
                    writer.close()
                    file_no += 1
                writer, in_file = open_writer(), 0
            take = min(table.num_rows, cuts[split + 1] - row, rows_per_file - in_file)
            writer.write_table(table.slice(0, take), row_group_size=row_group_size)
            table, row, in_file = table.slice(take), row + take, in_file + take
    if writer is not None:
        writer.close()
    try:
        tmp.replace(out)
    except OSError:  # another process (a DDP rank) finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return out


class SyntheticVideoStreamingDataModule(StreamingParquetDataModule):
    """The synthetic world (`recolab.data.synthetic_video`) as a streamed folder of parquet files.

    `prepare_data` generates the world once (the same cached file as the in-memory module) and
    splits it by time into `<cache_dir>/synthetic_video-<world>-stream-<layout>/{train,val,test}/`,
    so the three splits hold exactly the rows of the in-memory module's time split.

    Args:
        cache_dir: where generated worlds are cached.
        fractions: train, val and test shares of the time-ordered log.
        rows_per_file, row_group_size: the folder's layout.
        **kwargs: `WorldParams` fields and `StreamingParquetDataModule` arguments (not `path`).
    """

    kwargs_fields = WorldParams  # the **kwargs it takes are WorldParams fields, then its parent's

    @checked
    def __init__(
        self,
        *,
        cache_dir: str,
        fractions: Fractions = (0.8, 0.1, 0.1),
        rows_per_file: Count = 1_000_000,
        row_group_size: Count = 100_000,
        **kwargs: Any,
    ) -> None:
        fields = WorldParams.__dataclass_fields__
        self.params = WorldParams(**{k: kwargs.pop(k) for k in list(kwargs) if k in fields})
        self.cache_dir = cache_dir
        self.layout = {
            "fractions": [float(f) for f in fractions],
            "rows_per_file": rows_per_file,
            "row_group_size": row_group_size,
        }
        key = hashlib.sha1(json.dumps(self.layout, sort_keys=True).encode()).hexdigest()[:8]
        path = Path(cache_dir) / f"synthetic_video-{self.params.key()}-stream-{key}"
        super().__init__(path=str(path), **kwargs)

    def prepare_data(self) -> None:
        if Path(self.path).is_dir():
            return
        source = cached_world(self.params, self.cache_dir)
        log.info("writing the synthetic world as a parquet folder %s", self.path)
        write_parquet_folder(
            source,
            self.path,
            fractions=tuple(self.layout["fractions"]),
            rows_per_file=self.layout["rows_per_file"],
            row_group_size=self.layout["row_group_size"],
        )

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()
        super().setup(stage)
