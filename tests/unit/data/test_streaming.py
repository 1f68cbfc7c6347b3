"""Streaming parquet: every row once per epoch across ranks and loader workers, equal steps per
rank, the same vocabularies and statistics as the in-memory fit, bounded validation."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recolab.data.columnar import Vocabulary
from recolab.data.datamodule import DataError
from recolab.data.streaming import (
    RowGroup,
    Shard,
    StreamingParquetDataModule,
    SyntheticVideoStreamingDataModule,
    write_parquet_folder,
)
from recolab.data.synthetic_video import SyntheticVideoDataModule

# Row groups of different sizes in files of different sizes, so shard edges fall mid-group.
LAYOUT = {"train": [[7, 13, 5], [11], [17, 3, 9]], "val": [[6, 4], [5]], "test": [[9]]}


def _write(root: Path, *, bad: bool = False) -> dict[str, np.ndarray]:
    """Write LAYOUT with a unique `row_id` per row; return each split's row ids."""
    rng = np.random.default_rng(0)
    start, ids = 0, {}
    for split, files in LAYOUT.items():
        (root / split).mkdir(parents=True)
        first = start
        for f, groups in enumerate(files):
            n = sum(groups)
            row_id = np.arange(start, start + n)
            y = (rng.random(n) < 0.4).astype(np.float32)
            if bad and split == "train" and f == 1:
                y[2] = np.nan
            table = pa.table(
                {
                    "row_id": row_id,
                    "a": rng.integers(0, 30, n),
                    "x": rng.normal(3.0, 2.0, n),
                    "y": y,
                }
            )
            with pq.ParquetWriter(root / split / f"part-{f}.parquet", table.schema) as w:
                offset = 0
                for g in groups:
                    w.write_table(table.slice(offset, g))
                    offset += g
            start += n
        ids[split] = np.arange(first, start)
    return ids


def _module(root: Path, **kw) -> StreamingParquetDataModule:
    args = dict(
        path=str(root),
        sparse=["a"],
        dense=["x"],
        tasks=[{"name": "y"}],
        meta=["row_id"],
        batch_size=4,
        eval_batch_size=3,
        shuffle_buffer=10,
        num_workers=2,
        seed=1,
    )
    return StreamingParquetDataModule(**(args | kw))


def _attach(dm: StreamingParquetDataModule, rank: int, world: int, epoch: int = 0) -> None:
    """What Lightning's trainer tells the data module: this process's rank, the world, the epoch."""
    dm.trainer = SimpleNamespace(
        global_rank=rank,
        world_size=world,
        current_epoch=epoch,
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
    )


def _read(loader) -> list[torch.Tensor]:
    return [b["meta"]["row_id"] for b in loader]


@pytest.mark.parametrize("epoch", [0, 1])
def test_training_rows_once_per_epoch_across_two_ranks_and_two_workers(tmp_path, epoch):
    ids = _write(tmp_path)
    n, world = len(ids["train"]), 2  # 65 rows: one is left out of each epoch
    seen, steps = [], []
    for rank in range(world):
        dm = _module(tmp_path)
        dm.setup()
        _attach(dm, rank, world, epoch)
        loader = dm.train_dataloader()
        batches = _read(loader)
        steps.append(len(batches))
        assert len(batches) == len(loader)  # Lightning's step count is the real one
        assert sum(len(b) != 4 for b in batches) <= 1  # one partial batch per rank at most
        seen.append(torch.cat(batches).tolist())
    assert steps[0] == steps[1], "DDP needs equal step counts on every rank"
    assert len(seen[0]) == len(seen[1]) == n // world
    assert not set(seen[0]) & set(seen[1]), "ranks read distinct shards"
    everything = Counter(seen[0] + seen[1])
    assert max(everything.values()) == 1
    assert len(set(ids["train"]) - set(everything)) == n % world


def test_epochs_reorder_rows_and_leave_out_different_ones(tmp_path):
    _write(tmp_path)
    dm = _module(tmp_path, num_workers=0)
    dm.setup()
    orders = []
    for epoch in range(3):
        _attach(dm, 0, 1, epoch)
        orders.append(torch.cat(_read(dm.train_dataloader())).tolist())
    assert orders[0] != orders[1] != orders[2]
    assert sorted(orders[0]) == sorted(orders[1])  # one rank: nothing left out
    assert orders[0] != sorted(orders[0]), "rows are shuffled within the buffer"


@pytest.mark.parametrize("world", [1, 2, 3])
def test_evaluation_rows_exactly_once_in_file_order_per_rank(tmp_path, world):
    ids = _write(tmp_path)
    for split in ("val", "test"):
        seen = []
        for rank in range(world):
            dm = _module(tmp_path, num_workers=0)
            dm.setup()
            _attach(dm, rank, world)
            batches = _read(dm.val_dataloader() if split == "val" else dm.test_dataloader())
            seen += torch.cat(batches).tolist() if batches else []
        assert seen == ids[split].tolist()


@pytest.mark.parametrize(
    "batch,world,workers", [(4, 1, 2), (4, 2, 2), (8, 1, 0), (8, 3, 2), (5, 2, 0), (64, 1, 2)]
)
def test_smallest_batch_is_the_rows_of_the_shortest_batch(tmp_path, batch, world, workers):
    _write(tmp_path)  # 65 training rows
    for rank in range(world):
        dm = _module(tmp_path, batch_size=batch, num_workers=workers)
        dm.setup()
        _attach(dm, rank, world)
        loader = dm.train_dataloader()
        sizes = [len(b) for b in _read(loader)]
        assert loader.dataset.shard_rows == sum(sizes) == 65 // world
        assert loader.dataset.smallest_batch == min(sizes)


def test_shard_cuts_whole_batches_per_worker():
    groups = tuple(RowGroup("f", i, r) for i, r in enumerate([7, 13, 5, 11]))  # 36 rows
    shard = Shard(groups, batch_size=4, train=True, seed=0, rank=1, world_size=2)  # rows 18..35
    per_worker = [shard.pieces(0, k, 3) for k in range(3)]
    rows = [sum(p.stop - p.start for p in ps) for ps in per_worker]
    assert rows == [8, 4, 6]  # 4 full batches split 2/1/1, the 2-row remainder to the last worker
    assert sum(-(-r // 4) for r in rows) == shard.num_batches() == 5


def test_vocabularies_and_dense_stats_equal_the_in_memory_fit(tmp_path):
    _write(tmp_path)
    dm = _module(tmp_path)
    dm.setup()
    train = pq.ParquetDataset(tmp_path / "train").read()
    np.testing.assert_array_equal(
        dm.vocabs["a"].values, Vocabulary.fit(train["a"].to_numpy()).values
    )
    x = train["x"].to_numpy()
    mean, std = dm.dense_stats["x"]
    assert mean == pytest.approx(x.mean(), rel=1e-12) and std == pytest.approx(x.std(), rel=1e-12)


def test_checkpoint_vocabularies_win_over_fitting(tmp_path):
    _write(tmp_path)
    dm = _module(tmp_path)
    dm.setup()
    other = _module(tmp_path)
    other.load_state_dict(
        {"vocabs": {"a": torch.tensor([1, 2, 3])}, "dense_stats": {"x": (0.0, 1.0)}}
    )
    other.setup()
    assert other.schema.sparse[0].vocab_size == 4 and other.dense_stats["x"] == (0.0, 1.0)


def test_bad_rows_fail_naming_the_row_group_or_are_dropped_and_counted(tmp_path):
    ids = _write(tmp_path, bad=True)
    with pytest.raises(DataError, match=r"train/part-1.parquet \(row group 0\).*non-finite"):
        _module(tmp_path).setup()
    dm = _module(tmp_path, drop_bad_rows=True, num_workers=0)
    dm.setup()
    assert dm.dropped_rows == 1
    _attach(dm, 0, 1)
    seen = torch.cat(_read(dm.train_dataloader())).tolist()
    assert len(seen) == len(ids["train"]) - 1 and len(set(seen)) == len(seen)


def test_missing_split_folder_is_named(tmp_path):
    _write(tmp_path)
    with pytest.raises(DataError, match="no parquet files for the val split"):
        _module(tmp_path, splits={"val": "nope"}).setup()


def test_synthetic_world_folder_holds_the_in_memory_time_split(tmp_path):
    world = dict(num_users=100, num_items=80, num_impressions=3000)
    common = dict(
        sparse=["user_id", "item_id"], tasks=[{"name": "click"}], meta=["request_id", "position"]
    )
    memory = SyntheticVideoDataModule(cache_dir=str(tmp_path), **world, **common)
    memory.setup()
    stream = SyntheticVideoStreamingDataModule(
        cache_dir=str(tmp_path), rows_per_file=700, row_group_size=256, **world, **common
    )
    stream.setup()
    assert (
        len(list((Path(stream.path) / "train").glob("*.parquet"))) == 4
    )  # 2400 rows, 700 per file
    assert stream.schema == memory.schema
    for split in ("train", "val", "test"):
        want = memory.data[split]["meta"]
        got = pq.ParquetDataset(Path(stream.path) / split).read(columns=["request_id", "position"])
        np.testing.assert_array_equal(got["request_id"].to_numpy(), want["request_id"].numpy())
        np.testing.assert_array_equal(got["position"].to_numpy(), want["position"].numpy())


def test_write_parquet_folder_bounded_reads_keep_every_row(tmp_path):
    table = pa.table({"i": np.arange(1000)})
    pq.write_table(table, tmp_path / "one.parquet", row_group_size=300)
    out = write_parquet_folder(
        tmp_path / "one.parquet",
        tmp_path / "folder",
        fractions=(0.5, 0.25, 0.25),
        rows_per_file=200,
        row_group_size=64,
        read_batch=77,
    )
    parts = {s: pq.ParquetDataset(out / s).read()["i"].to_numpy() for s in ("train", "val", "test")}
    np.testing.assert_array_equal(np.concatenate(list(parts.values())), np.arange(1000))
    assert [len(p) for p in parts.values()] == [500, 250, 250]
    assert pq.ParquetFile(out / "train" / "part-00000.parquet").metadata.row_group(0).num_rows == 64
    assert not list(tmp_path.glob("folder.tmp*"))


def test_negative_downsampling_is_refused_rather_than_ignored(tmp_path):
    with pytest.raises(ValueError, match="negative_downsampling is not supported by streaming"):
        _module(tmp_path, negative_downsampling={"task": "y", "rate": 0.5})


def test_rows_left_out_differ_between_epochs_even_in_a_single_row_group():
    """N mod W rows sit out each training epoch; the ranks' ranges start at a per-epoch offset,
    so which rows those are changes from epoch to epoch, also when no row-group order can."""
    groups = (RowGroup("f", 0, 10),)
    left_out = set()
    for epoch in range(8):
        seen = []
        for rank in range(3):
            shard = Shard(groups, batch_size=2, train=True, seed=0, rank=rank, world_size=3)
            rows = [
                i
                for p in shard.pieces(epoch, 0, 2) + shard.pieces(epoch, 1, 2)
                for i in range(p.start, p.stop)
            ]
            assert len(rows) == 3 and shard.num_batches() == 2
            seen += rows
        assert len(set(seen)) == len(seen) == 9
        left_out |= set(range(10)) - set(seen)
    assert len(left_out) > 3, "the row left out moves"
    even = Shard((RowGroup("f", 0, 9),), batch_size=2, train=True, rank=0, world_size=3)
    assert even.offset(5) == 0, "nothing left out: ranges from the start, as before"


def test_writer_leftovers_and_hidden_files_are_not_data(tmp_path):
    """As in pyarrow's datasets: `_temporary/`, `_SUCCESS`-style and dot paths are skipped."""
    ids = _write(tmp_path)
    part = tmp_path / "train" / "part-0.parquet"
    (tmp_path / "train" / "_temporary" / "0").mkdir(parents=True)
    for copy in ("_temporary/0/part-0.parquet", ".part-0.parquet", "_part-0.parquet"):
        (tmp_path / "train" / copy).write_bytes(part.read_bytes())
    dm = _module(tmp_path, num_workers=0)
    dm.setup()
    _attach(dm, 0, 1)
    seen = torch.cat(_read(dm.train_dataloader())).tolist()
    assert sorted(seen) == ids["train"].tolist()


def test_files_that_disagree_on_a_columns_kind_fail_naming_both(tmp_path):
    _write(tmp_path)
    part = tmp_path / "train" / "part-1.parquet"
    table = pq.read_table(part)
    table = table.set_column(1, "a", pa.array([str(v) for v in table["a"].to_pylist()]))
    pq.write_table(table, part)
    with pytest.raises(
        DataError,
        match=r"part-1.parquet: column 'a' holds string, but in .*part-0.parquet it holds int64",
    ):
        _module(tmp_path).setup()
    # widths within a kind agree: int32 ids and a float label beside int64 and float32 ones
    table = table.set_column(1, "a", pa.array(np.arange(len(table)) % 30, pa.int32()))
    table = table.set_column(3, "y", table["y"].cast(pa.int64()))
    pq.write_table(table, part)
    _module(tmp_path).setup()


def test_the_reader_keeps_a_bounded_number_of_files_open(tmp_path):
    """A folder of many files: the reader closes the files it read longest ago."""
    (tmp_path / "train").mkdir()
    for f in range(30):
        table = pa.table(
            {
                "row_id": np.arange(3 * f, 3 * f + 3),
                "a": [1, 2, 3],
                "x": [0.0, 1.0, 2.0],
                "y": [0.0, 1.0, 0.0],
            }
        )
        pq.write_table(table, tmp_path / "train" / f"part-{f:02d}.parquet")
    for split in ("val", "test"):
        (tmp_path / split).mkdir()
        pq.write_table(
            pq.read_table(tmp_path / "train" / "part-00.parquet"), tmp_path / split / "p.parquet"
        )
    dm = _module(tmp_path, num_workers=0)
    dm.setup()
    _attach(dm, 0, 1)
    fds = len(list(Path("/proc/self/fd").iterdir()))
    dataset = dm.train_dataloader().dataset
    assert sorted(torch.cat([b["meta"]["row_id"] for b in dataset]).tolist()) == list(range(90))
    assert len(dataset.read.files) == dataset.read.OPEN_FILES
    assert len(list(Path("/proc/self/fd").iterdir())) - fds <= dataset.read.OPEN_FILES


def test_an_event_logs_duplicate_rows_are_found_within_a_row_group(tmp_path):
    """With a `timestamp` column the rows are an event log, as in the in-memory module: its
    duplicate rows fail (or are dropped and counted) though no feature reads the timestamp."""
    _write(tmp_path)
    part = tmp_path / "train" / "part-1.parquet"
    table = pq.read_table(part)
    table = pa.concat_tables([table, table.slice(4, 2)])
    pq.write_table(table.append_column("timestamp", table["row_id"]), part)  # copies: same time
    for split in ("train", "val", "test"):  # every file has the column
        for file in (tmp_path / split).glob("*.parquet"):
            if file != part:
                t = pq.read_table(file)
                pq.write_table(t.append_column("timestamp", pa.array(np.arange(len(t)))), file)
    with pytest.raises(DataError, match=r"part-1.parquet \(row group 0\): 2 duplicate row\(s\)"):
        _module(tmp_path).setup()
    dm = _module(tmp_path, drop_bad_rows=True)
    dm.setup()
    assert dm.dropped_rows == 2


def test_evaluation_with_a_checkpoints_vocabularies_reads_only_its_split(tmp_path):
    """`recolab evaluate` sets the test stage up with the checkpoint's vocabularies: a folder
    holding only test/ is enough, and the training split is scanned only when training needs it."""
    _write(tmp_path)
    trained = _module(tmp_path)
    trained.setup()
    for split in ("train", "val"):
        for file in (tmp_path / split).glob("*.parquet"):
            file.unlink()
    dm = _module(tmp_path, num_workers=0)
    dm.load_state_dict(trained.state_dict())
    dm.setup("test")
    assert set(dm.groups) == {"test"} and dm.schema == trained.schema
    _attach(dm, 0, 1)
    assert torch.cat(_read(dm.test_dataloader())).tolist() == list(range(65 + 15, 65 + 15 + 9))
    with pytest.raises(DataError, match="no parquet files for the train split"):
        dm.setup("fit")


def test_a_constant_dense_column_maps_to_zero_with_scale_one():
    # Its running std is a rounding residue (not 0) for values like 0.3, across chunks too.
    from recolab.data.columnar import DenseStats

    stats = DenseStats()
    for chunk in (np.full(7, 0.3), np.full(5, 0.3)):
        stats.add(chunk)
    assert stats.result() == (0.3, 1.0)
    stats.add(np.array([0.5]))
    mean, std = stats.result()
    assert mean == pytest.approx((12 * 0.3 + 0.5) / 13) and std > 0.01


def test_loader_workers_start_from_a_fork_server_not_a_fork_of_the_training_process(tmp_path):
    """A fork of the training process while another thread takes the interpreter's thread-list
    lock (under DDP, gloo's threads entering Python) hangs the worker in CPython 3.11: a DDP test
    stage hung in one run out of three. Workers are forked from a fork server instead, and read
    the same rows as the training process itself does."""
    _write(tmp_path)
    dm = _module(tmp_path, num_workers=2)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.multiprocessing_context.get_start_method() == "forkserver"
    together = sorted(torch.cat(_read(loader)).tolist())
    alone = _module(tmp_path, num_workers=0)
    alone.setup("fit")
    assert alone.train_dataloader().multiprocessing_context is None
    assert together == sorted(torch.cat(_read(alone.train_dataloader())).tolist())
