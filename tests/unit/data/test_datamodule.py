import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recolab.data.datamodule import DataError, ParquetDataModule

TASKS = [
    {"name": "click", "kind": "binary"},
    {"name": "watch", "kind": "regression", "transform": "log1p"},
]


def _write(tmp_path, n=100, **overrides):
    rng = np.random.default_rng(0)
    cols = {
        "user_id": rng.integers(1000, 1010, n),
        "item_id": rng.integers(0, 30, n),
        "price": rng.normal(5, 2, n),
        "hist": pa.array(
            [list(rng.integers(0, 30, rng.integers(0, 6))) for _ in range(n)], pa.list_(pa.int64())
        ),
        "click": rng.integers(0, 2, n).astype(float),
        "watch": rng.exponential(10, n),
        "timestamp": np.arange(n)[::-1],
    }
    cols.update(overrides)
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table(cols), path)
    return path


def _dm(path, **kw):
    args = dict(
        path=str(path),
        sparse=["user_id", "item_id"],
        dense=["price"],
        sequences={"hist": {"max_len": 4, "vocab_of": "item_id"}},
        tasks=TASKS,
        meta=["user_id"],
        batch_size=16,
        eval_batch_size=32,
    )
    return ParquetDataModule(**(args | kw))


def test_time_split_vocab_and_standardization(tmp_path):
    dm = _dm(_write(tmp_path))
    dm.setup()
    train, test = dm.data["train"], dm.data["test"]
    assert [len(dm.data[s]["labels"]["click"]) for s in ("train", "val", "test")] == [80, 10, 10]
    # timestamps run backwards, so the training split is the *last* 80 rows of the file
    assert (
        dm.schema.sparse_by_name("item_id").vocab_size
        == len(np.unique(pq.read_table(tmp_path / "log.parquet").column("item_id").to_numpy()[20:]))
        + 1
    )
    price = train["features"]["price"]
    assert abs(float(price.mean())) < 1e-5 and abs(float(price.std(unbiased=False)) - 1) < 1e-4
    assert (
        test["features"]["hist"].shape == (10, 4) and test["features"]["hist"].dtype == torch.int64
    )
    assert dm.schema.feature_names == ["user_id", "item_id", "price", "hist"]
    assert "user_id" in test["meta"] and test["meta"]["user_id"].min() >= 1000  # raw ids in meta


def test_missing_column_names_file_and_column(tmp_path):
    path = _write(tmp_path)
    with pytest.raises(DataError, match=r"log\.parquet.*missing column.*'price'"):
        _dm(path, sparse=["user_id", "shop"]).setup()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_labels_fail_or_drop_with_count(tmp_path, bad):
    n = 100
    click = np.zeros(n)
    click[[3, 7]] = bad
    click[10:20] = 1
    path = _write(tmp_path, n=n, click=click)
    with pytest.raises(DataError, match=r"log\.parquet.*'click'.*2 non-finite"):
        _dm(path).setup()
    dm = _dm(path, drop_bad_rows=True)
    dm.setup()
    assert dm.dropped_rows == 2
    assert sum(len(dm.data[s]["labels"]["click"]) for s in ("train", "val", "test")) == n - 2


def test_binary_label_outside_0_1_fails(tmp_path):
    path = _write(tmp_path, click=np.full(100, 2.0))
    with pytest.raises(DataError, match=r"'click'.*100 binary label"):
        _dm(path).setup()


def test_state_dict_restores_vocabularies(tmp_path):
    dm = _dm(_write(tmp_path))
    dm.setup()
    (tmp_path / "other").mkdir()
    other = _dm(_write(tmp_path / "other", item_id=np.arange(100) + 7))
    other.load_state_dict(dm.state_dict())
    other.setup()
    assert (
        other.schema.sparse_by_name("item_id").vocab_size
        == dm.schema.sparse_by_name("item_id").vocab_size
    )
