"""Streaming resume: a loader restored from the state it had after k batches hands out exactly the
batches an uninterrupted one hands out after its k-th, with and without loader workers (which read
ahead of training), on every rank; the state holds only plain types and tensors."""

from __future__ import annotations

import io

import pyarrow.parquet as pq
import pytest
import torch

from recolab.data.streaming import StreamingBatches
from tests.unit.data.test_streaming import _attach, _module, _write


def _loader(root, *, rank: int = 0, world: int = 1, epoch: int = 1, **kw):
    dm = _module(root, **kw)
    dm.setup()
    _attach(dm, rank, world, epoch)
    return dm.train_dataloader()


def _ids(batches) -> list[list[int]]:
    return [b["meta"]["row_id"].tolist() for b in batches]


def _saved(state: dict) -> dict:
    """The state as a checkpoint gives it back: through torch.save and torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _state_after(loader, k: int) -> dict:
    it = iter(loader)
    for _ in range(k):
        next(it)
    state = loader.state_dict()
    del it  # a killed run: its workers go with it
    return state


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
@pytest.mark.parametrize(
    ("workers", "stops"),
    [(0, range(0, 18)), (1, [0, 3, 8, 16, 17]), (2, [1, 6, 9, 15]), (3, [2, 7, 13])],
)
def test_a_restored_loader_hands_out_exactly_the_remaining_batches(tmp_path, workers, stops):
    # 65 rows in 7 row groups, batches of 4, a buffer of 10 rows: refills carry rows over, the
    # workers' shares are uneven (17 batches, the last one partial), and workers read ahead.
    _write(tmp_path)
    whole = _ids(_loader(tmp_path, num_workers=workers))
    assert len(whole) == 17
    for k in stops:
        state = _saved(_state_after(_loader(tmp_path, num_workers=workers), k))
        assert int(state["batches"]) == k
        resumed = _loader(tmp_path, num_workers=workers)
        resumed.load_state_dict(state)
        assert _ids(resumed) == whole[k:], f"resumed after {k} batches"
        if k == len(whole):
            continue
        # killed again one batch later: the count goes on from where the state left it
        twice = _loader(tmp_path, num_workers=workers)
        twice.load_state_dict(state)
        again = _loader(tmp_path, num_workers=workers)
        again.load_state_dict(_saved(_state_after(twice, 1)))
        assert _ids(again) == whole[k + 1 :]


def test_the_state_names_the_reader_position_order_and_buffer(tmp_path):
    _write(tmp_path)
    loader = _loader(tmp_path, num_workers=0)
    state = _saved(_state_after(loader, 5))
    [stream] = state["streams"]
    order = [(state["files"][f], i, n) for f, i, n in state["order"].tolist()]
    assert sorted(n for _, _, n in order) == [3, 5, 7, 9, 11, 13, 17]  # the epoch's row groups
    assert order == [(g.file, g.index, g.rows) for g in loader.dataset.shard.order(1)]
    assert stream["file"].endswith(".parquet") and stream["row_group"] >= 0
    assert stream["batches"] == 5 and len(stream["rest"]) > 0  # rows still in the buffer
    assert stream["rng"].dtype == torch.uint8
    # The next epoch starts from its first batch, whatever the state says.
    fresh = _ids(_loader(tmp_path, num_workers=0, epoch=2))
    other = _loader(tmp_path, num_workers=0, epoch=2)
    other.load_state_dict(state)
    assert _ids(other) == fresh


def test_every_rank_resumes_its_own_shard_from_rank_zeros_state(tmp_path):
    """Lightning saves rank zero's loader state; every rank loads it."""
    _write(tmp_path)
    state = _saved(_state_after(_loader(tmp_path, rank=0, world=2, num_workers=2), 3))
    for rank in range(2):
        whole = _ids(_loader(tmp_path, rank=rank, world=2, num_workers=2))
        resumed = _loader(tmp_path, rank=rank, world=2, num_workers=2)
        resumed.load_state_dict(state)
        assert _ids(resumed) == whole[3:]


def test_a_state_of_other_files_or_settings_is_not_applied(tmp_path, caplog):
    _write(tmp_path)
    state = _saved(_state_after(_loader(tmp_path, num_workers=0), 4))
    loader = _loader(tmp_path, num_workers=0, shuffle_buffer=12)
    assert loader.dataset.mismatch(state, 1) == (
        "it was saved with shuffle_buffer=10, this loader has shuffle_buffer=12"
    )
    part = tmp_path / "train" / "part-1.parquet"
    pq.write_table(pq.read_table(part).slice(0, 10), part)  # 11 rows -> 10
    changed = _loader(tmp_path, num_workers=0)
    assert "(11 rows) in the run, is " in changed.dataset.mismatch(state, 1)
    changed.load_state_dict(state)
    with caplog.at_level("WARNING", logger="recolab.data.resumable"):
        assert len(_ids(changed)) == len(changed)  # the epoch restarts, with a warning
    assert "not resuming the stream where it stopped" in caplog.text


def test_delivery_order_of_workers_with_uneven_shares():
    assert StreamingBatches.delivered([3, 5], 0) == ([0, 0], 0)
    assert StreamingBatches.delivered([3, 5], 5) == ([3, 2], 1)  # w0 b0, w1 b0, w0 b1, w1 b1, w0 b2
    assert StreamingBatches.delivered([3, 5], 7) == ([3, 4], 1)
    assert StreamingBatches.delivered([0, 2, 1], 2) == ([0, 1, 1], 1)
