import numpy as np
import pytest
import torch

from recolab.data.columnar import ColumnarBatches, Vocabulary, pad_left


def _columns(n: int) -> dict:
    return {
        "features": {"x": torch.arange(n)},
        "labels": {"y": torch.arange(n, dtype=torch.float32) * 2},
        "meta": {"m": torch.arange(n) + 100},
    }


def test_vocabulary_maps_unseen_to_zero():
    vocab = Vocabulary.fit(np.array([30, 10, 20, 10]))
    assert vocab.size == 4
    np.testing.assert_array_equal(
        vocab.encode(np.array([10, 20, 30, 5, 40, 25])), [1, 2, 3, 0, 0, 0]
    )


def test_pad_left_keeps_last_items():
    offsets = np.array([0, 3, 3, 8])
    values = np.arange(1, 9)
    out = pad_left(offsets, values, 4)
    np.testing.assert_array_equal(out, [[0, 1, 2, 3], [0, 0, 0, 0], [5, 6, 7, 8]])


def test_batches_slice_all_columns_consistently():
    ds = ColumnarBatches(_columns(10), batch_size=4, shuffle=True, seed=3)
    assert len(ds) == 3
    seen = []
    for i in range(len(ds)):
        b = ds[i]
        torch.testing.assert_close(b["labels"]["y"], b["features"]["x"].float() * 2)
        torch.testing.assert_close(b["meta"]["m"], b["features"]["x"] + 100)
        seen.append(b["features"]["x"])
    assert sorted(torch.cat(seen).tolist()) == list(range(10))


def test_epochs_reshuffle_deterministically():
    ds = ColumnarBatches(_columns(50), batch_size=10, shuffle=True, seed=0)
    first = ds[0]["features"]["x"].clone()
    ds.set_epoch(1)
    assert not torch.equal(first, ds[0]["features"]["x"])
    ds.set_epoch(0)
    assert torch.equal(first, ds[0]["features"]["x"])


def test_an_epochs_order_is_drawn_once_and_only_when_read(monkeypatch):
    drawn = []
    real = torch.randperm

    def counted(*args, **kwargs):
        drawn.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "randperm", counted)
    ds = ColumnarBatches(_columns(50), batch_size=10, shuffle=True, seed=4)
    # Lengths come from the row count: building the loader and asking its size draw nothing.
    assert (len(ds), ds.shard_rows, ds.smallest_batch, drawn) == (5, 50, 10, [])
    for _ in range(3):  # the sampler, then the training module, set the same epoch
        ds.set_epoch(0)
    batches = [ds[i]["features"]["x"] for i in range(len(ds))]
    assert drawn == [50]
    # The order is the seeded permutation of the epoch, as it was drawn eagerly before.
    expected = real(50, generator=torch.Generator().manual_seed(4))
    assert torch.equal(torch.cat(batches), expected)
    ds.set_epoch(1)
    ds.set_epoch(1)
    ds[0]
    ds[1]
    assert drawn == [50, 50]
    assert torch.equal(ds.rows, real(50, generator=torch.Generator().manual_seed(5)))


def test_the_order_is_drawn_in_32_bits_and_is_the_64_bit_permutation():
    # 800,000 rows: the synthetic world's training split at 1M impressions. The 32-bit draw must
    # give the seeded 64-bit permutation, row for row, or every trained figure would move.
    ds = ColumnarBatches(_columns(800_000), batch_size=2048, shuffle=True, seed=7)
    assert ds.rows.dtype == torch.int32
    expected = torch.randperm(800_000, generator=torch.Generator().manual_seed(7))
    assert torch.equal(ds.rows.long(), expected)
    assert torch.equal(ds[3]["features"]["x"], expected[3 * 2048 : 4 * 2048])


@pytest.mark.parametrize("n,world", [(10, 2), (11, 2), (23, 3)])
def test_eval_shards_cover_every_row_once(n, world):
    rows = []
    for rank in range(world):
        ds = ColumnarBatches(_columns(n), batch_size=4, rank=rank, world_size=world)
        rows += [x for i in range(len(ds)) for x in ds[i]["features"]["x"].tolist()]
    assert sorted(rows) == list(range(n))


@pytest.mark.parametrize("n,world", [(10, 2), (11, 2), (23, 3)])
def test_train_shards_are_disjoint_and_equal(n, world):
    shards = [
        ColumnarBatches(_columns(n), batch_size=3, shuffle=True, rank=r, world_size=world)
        for r in range(world)
    ]
    sets = [set(s.rows.tolist()) for s in shards]
    assert len({len(s) for s in sets}) == 1 and len({len(s) for s in shards}) == 1
    assert sum(len(s) for s in sets) == len(set().union(*sets)) == (n // world) * world


@pytest.mark.parametrize(
    "n,batch,world,shuffle",
    [(10, 4, 1, True), (8, 4, 1, False), (9, 4, 1, True), (11, 3, 2, True), (0, 4, 1, False)],
)
def test_smallest_batch_is_the_rows_of_the_shortest_batch(n, batch, world, shuffle):
    for rank in range(world):
        ds = ColumnarBatches(
            _columns(n), batch_size=batch, shuffle=shuffle, rank=rank, world_size=world
        )
        sizes = [len(ds[i]["features"]["x"]) for i in range(len(ds))]
        assert ds.smallest_batch == (min(sizes) if sizes else 0)
