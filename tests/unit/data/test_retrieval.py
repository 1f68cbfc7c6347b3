"""The retrieval data module: leave-last-out, histories, exclusions, filters, vocabularies, errors."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recolab.data.datamodule import DataError
from recolab.data.retrieval import RetrievalDataModule, SyntheticRetrievalDataModule
from recolab.data.synthetic_video import WorldParams, cached_world


class TableModule(RetrievalDataModule):
    """A retrieval data module over an in-memory table (the tests' source)."""

    def __init__(self, table: pa.Table, **kwargs) -> None:
        super().__init__(**kwargs)
        self.table = table

    def _load(self):
        return "memory.parquet", self.table


def _random_log(seed: int = 0, users: int = 30, items: int = 40, n: int = 600) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "user_id": rng.integers(100, 100 + users, n),
            "item_id": rng.integers(1000, 1000 + items, n),
            "timestamp": rng.permutation(n) * 7,  # distinct times, in random file order
            "category": rng.integers(0, 5, n),
        }
    )


def _setup(table: pa.Table, **kw) -> TableModule:
    dm = TableModule(
        table,
        **({"min_interactions": 3, "history_len": 5, "batch_size": 8, "eval_batch_size": 4} | kw),
    )
    dm.setup()
    return dm


def _all(loader) -> dict:
    batches = list(loader)
    out = {
        g: {k: torch.cat([b[g][k] for b in batches]) for k in batches[0][g]}
        for g in batches[0]
        if g != "seen"
    }
    out["seen"] = [
        set(b["seen"]["indices"][b["seen"]["indptr"][i] : b["seen"]["indptr"][i + 1]].tolist())
        for b in batches
        if "seen" in b
        for i in range(len(b["seen"]["indptr"]) - 1)
    ]
    return out


def _reference(table: pa.Table) -> dict[int, list[tuple[int, int]]]:
    """Each user's distinct items in time order (first occurrence), as (timestamp, item)."""
    per_user: dict[int, dict[int, int]] = {}
    for u, i, t in zip(*(table.column(c).to_pylist() for c in ("user_id", "item_id", "timestamp"))):
        seen = per_user.setdefault(u, {})
        seen[i] = min(t, seen.get(i, t))
    return {u: sorted((t, i) for i, t in items.items()) for u, items in per_user.items()}


def test_leave_last_out_takes_each_users_latest_items_and_history_is_earlier():
    table = _random_log()
    dm = _setup(table, item_features=["category"])
    ref = _reference(table)
    user_vocab, item_vocab = dm.vocabs["user_id"], dm.vocabs["item_id"]
    decode_user = {int(user_vocab.encode(np.array([u]))[0]): u for u in ref}
    for split, back in (("test", 1), ("val", 2)):
        got = _all(dm.test_dataloader() if split == "test" else dm.val_dataloader())
        assert len(got["targets"]["item_id"]) == len(ref)
        for row, (uid, target) in enumerate(
            zip(got["features"]["user_id"].tolist(), got["targets"]["item_id"][:, 0].tolist())
        ):
            seq = ref[decode_user[uid]]
            expected = seq[-back][1]
            assert target == int(item_vocab.encode(np.array([expected]))[0])
            earlier = [i for _, i in seq[: len(seq) - back]]
            # history: the last 5 earlier items, most recent last, left-padded with 0
            hist = got["features"]["hist_items"][row].tolist()
            want = [int(x) for x in item_vocab.encode(np.array(earlier[-5:]))]
            assert hist == [0] * (5 - len(want)) + want
            # exclusion: every earlier item (training items; plus the validation item at test)
            assert got["seen"][row] == {int(x) for x in item_vocab.encode(np.array(earlier))} - {0}
            assert target not in got["seen"][row] or target == 0


def test_training_rows_and_their_histories():
    table = _random_log(seed=1)
    dm = _setup(table)
    ref = _reference(table)
    item_vocab = dm.vocabs["item_id"]
    got = _all(dm.train_dataloader())
    assert len(got["features"]["item_id"]) == sum(len(s) - 2 for s in ref.values())
    decode_item = {int(item_vocab.encode(np.array([i]))[0]): i for s in ref.values() for _, i in s}
    decode_user = {int(dm.vocabs["user_id"].encode(np.array([u]))[0]): u for u in ref}
    for uid, iid, hist in zip(
        got["features"]["user_id"].tolist(),
        got["features"]["item_id"].tolist(),
        got["features"]["hist_items"].tolist(),
    ):
        seq = [i for _, i in ref[decode_user[uid]]]
        pos = seq.index(decode_item[iid])
        assert pos < len(seq) - 2, "a held-out item leaked into training"
        assert [decode_item[h] for h in hist if h] == seq[max(0, pos - 5) : pos]


def test_duplicates_keep_the_first_time_and_the_filter_is_counted():
    table = pa.table(
        {
            "user_id": [1, 1, 1, 1, 1, 2, 2, 3, 3, 3],
            "item_id": [7, 8, 7, 9, 6, 7, 8, 7, 8, 9],
            "timestamp": [1, 2, 3, 4, 5, 1, 2, 3, 2, 1],
        }
    )
    dm = _setup(table)
    assert dm.summary["duplicate_interactions_dropped"] == 1
    assert dm.summary["users_filtered"] == 1 and dm.summary["interactions_filtered"] == 2  # user 2
    got = _all(dm.test_dataloader())
    vocab = dm.vocabs["item_id"].values.tolist()
    assert vocab == [7, 8, 9]  # the training items; 6 is only ever a held-out item
    # user 1: 7 (t=1), 8, 9, 6 -> val 9, test 6 (out of vocabulary: 0); user 3 (times reversed):
    # 9, 8, 7 -> val 8, test 7
    assert got["targets"]["item_id"][:, 0].tolist() == [0, vocab.index(7) + 1]
    assert got["seen"] == [
        {vocab.index(i) + 1 for i in (7, 8, 9)},
        {vocab.index(i) + 1 for i in (9, 8)},
    ]
    assert dm.summary["test_targets_out_of_vocabulary"] == 1
    assert (
        dm.item_counts.tolist()[0] == 0
        and dm.item_counts.sum() == dm.summary["train_interactions"] == 3
    )


def test_errors_name_the_source_and_column():
    good = _random_log()
    with pytest.raises(DataError, match=r"memory\.parquet: missing column\(s\) \['timestamp'\]"):
        _setup(good.drop(["timestamp"]))
    with pytest.raises(
        DataError, match=r"memory\.parquet: column 'item_id' must hold integers, got string"
    ):
        _setup(
            good.set_column(
                1, "item_id", pa.array([str(i) for i in good.column("item_id").to_pylist()])
            )
        )
    with pytest.raises(DataError, match=r"memory\.parquet: column 'user_id': 1 null id\(s\)"):
        _setup(
            good.set_column(
                0, "user_id", pa.array([None, *good.column("user_id").to_pylist()[1:]], pa.int64())
            )
        )
    with pytest.raises(DataError, match=r"no user has 100 or more"):
        _setup(good, min_interactions=100)
    with pytest.raises(ValueError, match="min_interactions=2: expected a number >= 3"):
        TableModule(good, min_interactions=2)


def test_state_dict_loads_weights_only_and_restores_the_vocabularies():
    dm = _setup(_random_log(), item_features=["category"])
    buf = io.BytesIO()
    torch.save(dm.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    # a different log, read with the first one's vocabularies: ids mean the same items
    other = TableModule(
        _random_log(seed=5, items=60), min_interactions=3, history_len=5, item_features=["category"]
    )
    other.load_state_dict(state)
    other.setup()
    assert other.num_items == dm.num_items
    np.testing.assert_array_equal(other.vocabs["item_id"].values, dm.vocabs["item_id"].values)


def test_synthetic_view_positives_are_clicks_watched_enough(tmp_path):
    kw = dict(num_users=300, num_items=200, num_impressions=6000)
    dm = SyntheticRetrievalDataModule(
        cache_dir=str(tmp_path),
        min_watch_ratio=0.5,
        user_features=["user_age"],
        item_features=["category"],
        min_interactions=3,
        **kw,
    )
    dm.prepare_data()
    dm.setup()
    world = pq.read_table(cached_world(WorldParams(**kw), tmp_path)).to_pandas()
    positive = world[(world.click == 1) & (world.watch_time >= 0.5 * world.duration)]
    assert dm.summary["interactions_read"] == len(positive)
    assert dm.summary["duplicate_interactions_dropped"] == len(positive) - len(
        positive.drop_duplicates(["user_id", "item_id"])
    )
    inputs = dm.model_inputs()
    assert set(inputs["user_features"]) == {"user_age"} and set(inputs["item_features"]) == {
        "category"
    }
    assert inputs["history_len"] == 50  # the retrieval history, not the world's
    # The schema's roles: what the user tower and the item tower read, as feature specs.
    assert [f.name for f in dm.schema.features_of("user")] == ["user_id", "user_age", "hist_items"]
    assert [f.name for f in dm.schema.features_of("item")] == ["item_id", "category"]
    assert dm.schema.sparse_by_name("item_id").vocab_size == inputs["num_items"] + 1
    assert dm.params == WorldParams(**kw)  # the same cached world as the ranking view


def test_interactions_pass_the_ranking_modules_validation():
    """One validation (`recolab.data.validation`): a null timestamp, a float timestamp and an
    out-of-range position are refused here as in the ranking modules; a repeated interaction
    is not a bad row (its first occurrence is kept)."""
    good = _random_log()
    ts = good.column("timestamp").to_pylist()
    with pytest.raises(DataError, match=r"memory\.parquet: column 'timestamp'.*null"):
        _setup(good.set_column(2, "timestamp", pa.array([None, *ts[1:]], pa.int64())))
    with pytest.raises(DataError, match=r"column 'timestamp' must hold integers, got double"):
        _setup(good.set_column(2, "timestamp", pa.array([float(t) for t in ts])))
    repeated = pa.concat_tables([good, good.slice(0, 3)])
    assert _setup(repeated).summary["duplicate_interactions_dropped"] >= 3
