"""Bad input data gives a `DataError` naming the file, the column, the first rows and their values,
before training, through every way data comes in: the in-memory module, the streamed folder and
`recolab data import` (and the retrieval module for ids). Never a raw pyarrow, torch or pandas
error, and nothing silently changed (`1e300` into `inf`, a null id into padding)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recolab.data.checks import DataError
from recolab.data.datamodule import ParquetDataModule
from recolab.data.importer import LogImportError, import_log
from recolab.data.streaming import StreamingParquetDataModule
from tests.conftest import ROOT
from tests.unit.data.test_retrieval import TableModule, _random_log
from tests.unit.data.test_validation import dm, table

LOG, SCHEMA = ROOT / "examples" / "import" / "log.csv", ROOT / "examples" / "import" / "schema.yaml"
MODULES = ["memory", "stream"]


def load(where: str, tmp_path: Path, data: pa.Table | dict, **kw) -> ParquetDataModule:
    """Set up the in-memory module on `data` as one file, or the streamed one on `data` as each
    split's file (the training split is scanned first, so its rows are the ones named)."""
    data = data if isinstance(data, pa.Table) else pa.table(data)
    tmp_path.mkdir(parents=True, exist_ok=True)
    if where == "memory":
        pq.write_table(data, tmp_path / "log.parquet")
        module = dm(tmp_path / "log.parquet", **kw)
    else:
        for split in ("train", "val", "test"):
            (tmp_path / split).mkdir(exist_ok=True)
            pq.write_table(data, tmp_path / split / "part-0.parquet")
        args = dict(
            path=str(tmp_path),
            sparse=["user_id", "item_id"],
            tasks=[{"name": "click"}, {"name": "watch_time", "kind": "regression"}],
            meta=["user_id", "position", "duration"],
            batch_size=16,
            eval_batch_size=64,
            num_workers=0,
        )
        module = StreamingParquetDataModule(**(args | kw))
    module.setup()
    return module


def where_file(where: str) -> str:
    return r"log\.parquet" if where == "memory" else r"train/part-0\.parquet \(row group 0\)"


def log_with(column: str, rows: dict[int, object]) -> pd.DataFrame:
    frame = pd.read_csv(LOG)
    frame[column] = frame[column].astype(object)
    for row, value in rows.items():
        frame.loc[row, column] = value
    return frame


# -- text in a number column: the bad row and value, not the column's first (good) values -------


@pytest.mark.parametrize("where", MODULES)
def test_text_in_a_dense_column_names_its_row_and_value(tmp_path: Path, where: str) -> None:
    age = np.arange(200).astype(str).astype(object)
    age[37] = "abc"
    with pytest.raises(DataError) as e:
        load(where, tmp_path, table(age=age), dense=["age"])
    message = str(e.value)
    assert (
        "column 'age' must be numeric, got string: text that is not a number in 1 row(s) (37) holding 'abc'"
        in message
    )
    assert "'0'" not in message and "'1'" not in message  # no good values from elsewhere


def test_text_in_an_imported_number_column_is_a_bad_row_and_the_rest_is_read(
    tmp_path: Path,
) -> None:
    frame = log_with("user_age", {150: "abc"})
    frame.to_csv(tmp_path / "log.csv", index=False)
    with pytest.raises(
        LogImportError,
        match=r"log\.csv: column 'user_age' \(dense feature\): text that is not a number: "
        r"1 row\(s\) \(151\) holding 'abc' \(data rows counted from 1",
    ):
        import_log(tmp_path / "log.csv", SCHEMA, tmp_path / "out")
    summary = import_log(tmp_path / "log.csv", SCHEMA, tmp_path / "out", drop_bad_rows=True)
    assert summary["dropped_rows"]["total"] == 1 and summary["rows"] == 799
    ages = pq.read_table(tmp_path / "out" / "data.parquet").column("user_age").to_numpy()
    expected = pd.read_csv(LOG)["user_age"].drop(index=150).to_numpy(dtype=np.float32)
    np.testing.assert_array_equal(np.sort(ages), np.sort(expected))


# -- columns named twice ------------------------------------------------------------------------


@pytest.mark.parametrize("where", MODULES)
def test_a_column_named_twice_in_parquet_is_refused(tmp_path: Path, where: str) -> None:
    data = pa.table(table()).append_column("click", pa.array(np.zeros(200)))
    with pytest.raises(
        DataError,
        match=r"column name\(s\) \['click'\] appear more than once \('click' at columns 6, 9",
    ):
        load(where, tmp_path, data)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_column_named_twice_in_an_imported_log_is_refused(tmp_path: Path, suffix: str) -> None:
    frame = pd.read_csv(LOG)
    if suffix == ".csv":
        text = LOG.read_text().splitlines()
        text[0] = text[0].replace("liked", "clicked")  # a header naming `clicked` twice
        (tmp_path / "log.csv").write_text("\n".join(text) + "\n")
    else:
        data = pa.Table.from_pandas(frame, preserve_index=False)
        pq.write_table(
            data.append_column("clicked", pa.array(np.zeros(800))), tmp_path / "log.parquet"
        )
    with pytest.raises(
        LogImportError, match=r"column name\(s\) \['clicked'\] appear more than once"
    ):
        import_log(tmp_path / f"log{suffix}", SCHEMA, tmp_path / "out")


# -- parquet files that cannot be read ----------------------------------------------------------


def spoil(path: Path, how: str) -> None:
    pq.write_table(pa.table(table()), path)
    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "cut short":
        path.write_bytes(data[: len(data) // 2])
    else:  # damaged: the footer is there, the first pages' headers are not
        path.write_bytes(data[:100] + b"\xff" * 300 + data[400:])


REASONS = {
    "empty": r"the file is empty \(0 bytes",
    "cut short": r"no parquet footer at its end: not a parquet file, or one cut short",
    "damaged": r"a damaged parquet file",
}


@pytest.mark.parametrize("how", list(REASONS))
@pytest.mark.parametrize("where", ["memory", "memory folder", "stream", "import"])
def test_a_parquet_file_that_cannot_be_read_is_named(tmp_path: Path, where: str, how: str) -> None:
    if where == "stream":
        for split in ("train", "val", "test"):
            (tmp_path / split).mkdir()
            pq.write_table(pa.table(table()), tmp_path / split / "part-0.parquet")
        bad = tmp_path / "train" / "part-1.parquet"
    elif where == "memory folder":
        (tmp_path / "data").mkdir()
        pq.write_table(
            pa.table(table(timestamp=np.arange(200) + 1000)), tmp_path / "data" / "a.parquet"
        )
        bad = tmp_path / "data" / "b.parquet"
    else:
        bad = tmp_path / "log.parquet"
    spoil(bad, how)
    with pytest.raises(DataError, match=rf"{bad}.*: cannot be read as parquet: {REASONS[how]}"):
        if where == "stream":
            load("stream", tmp_path, table())  # rewrites part-0 of each split; part-1 stays bad
        elif where == "import":
            import_log(bad, SCHEMA, tmp_path / "out")
        else:
            dm(bad if where == "memory" else bad.parent).setup()


# -- dictionary-encoded (pandas category) columns -----------------------------------------------


def category_frame() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The same log twice: plain columns, and ids, a label and a dense feature as `category`."""
    cols = table(shop=np.array([f"s{i % 7}" for i in range(200)]), age=np.arange(200) % 9 * 1.5)
    plain = pd.DataFrame({k: v for k, v in cols.items() if k != "hist"})
    categories = plain.copy()
    for name in ("user_id", "item_id", "shop", "click", "age"):
        categories[name] = categories[name].astype("category")
    return plain, categories


@pytest.mark.parametrize("where", MODULES)
def test_category_columns_read_as_the_values_they_encode(tmp_path: Path, where: str) -> None:
    plain, categories = category_frame()
    runs = {}
    for name, frame in (("plain", plain), ("category", categories)):
        data = pa.Table.from_pandas(frame, preserve_index=False)
        assert pa.types.is_dictionary(data.schema.field("shop").type) == (name == "category")
        module = load(
            where,
            tmp_path / name,
            data,
            sparse=["user_id", "item_id", "shop"],
            dense=["age"],
            sequences={},
        )
        batches = list(module.val_dataloader())
        runs[name] = (
            module,
            {k: torch.cat([b["features"][k] for b in batches]) for k in batches[0]["features"]},
            torch.cat([b["labels"]["click"] for b in batches]),
        )
    (a, fa, ya), (b, fb, yb) = runs["plain"], runs["category"]
    assert {k: v.values.tolist() for k, v in a.vocabs.items()} == {
        k: v.values.tolist() for k, v in b.vocabs.items()
    }
    assert a.dense_stats == b.dense_stats
    assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)
    assert torch.equal(ya, yb)


def test_an_imported_log_with_category_columns_equals_the_plain_one(tmp_path: Path) -> None:
    frame = pd.read_csv(LOG)
    categories = frame.copy()
    for name in ("uid", "category", "device", "clicked", "user_age", "ts"):
        categories[name] = categories[name].astype("category")
    out = {}
    for name, f in (("plain", frame), ("category", categories)):
        pq.write_table(pa.Table.from_pandas(f, preserve_index=False), tmp_path / f"{name}.parquet")
        import_log(tmp_path / f"{name}.parquet", SCHEMA, tmp_path / name)
        out[name] = pq.read_table(tmp_path / name / "data.parquet")
    assert out["category"].equals(out["plain"])


# -- ids beyond int64 ---------------------------------------------------------------------------


@pytest.mark.parametrize("where", MODULES)
def test_uint64_ids_at_or_above_2_63_are_refused_and_smaller_ones_read(
    tmp_path: Path, where: str
) -> None:
    users = table()["user_id"].astype(np.uint64)
    big = users.copy()
    big[5] = np.uint64(2**63 + 7)
    with pytest.raises(
        DataError,
        match=rf"{where_file(where)}: column 'user_id': id\(s\) at or above 2\*\*63 .*"
        r"1 row\(s\) \(5\) holding 9223372036854775815 \(rows counted from 0\)",
    ):
        load(where, tmp_path / "big", table(user_id=big))
    module = load(where, tmp_path / "small", table(user_id=users))  # user_id is also in data.meta
    batch = next(iter(module.train_dataloader()))
    assert batch["meta"]["user_id"].dtype == torch.int64
    assert set(batch["meta"]["user_id"].tolist()) <= set(users.tolist())


def test_ids_beyond_int64_are_refused_at_import(tmp_path: Path) -> None:
    frame = pd.read_csv(LOG)
    frame["video_id"] = frame["video_id"].astype(np.uint64)
    frame.loc[3, "video_id"] = np.uint64(2**63 + 1)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "log.parquet")
    with pytest.raises(
        LogImportError,
        match=r"column 'video_id': id\(s\) at or above 2\*\*63 .*: 1 row\(s\) \(4\) holding 9223372036854775809",
    ):
        import_log(tmp_path / "log.parquet", SCHEMA, tmp_path / "out")
    frame["video_id"] = frame["video_id"].astype(np.float64)
    frame.loc[3, "video_id"] = 1e300
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "log.parquet")
    with pytest.raises(
        LogImportError,
        match=r"column 'video_id': id\(s\) beyond int64's range .*: 1 row\(s\) \(4\) holding 1e\+300",
    ):
        import_log(tmp_path / "log.parquet", SCHEMA, tmp_path / "out")


def test_retrieval_refuses_ids_beyond_int64_and_reads_category_ids() -> None:
    good = _random_log()
    users = good.column("user_id").to_numpy().astype(np.uint64)
    users[3] = np.uint64(2**63)
    with pytest.raises(
        DataError,
        match=r"memory\.parquet: column 'user_id': id\(s\) at or above 2\*\*63 .*1 row\(s\) \(3\) holding 9223372036854775808",
    ):
        TableModule(good.set_column(0, "user_id", pa.array(users)), min_interactions=3).setup()
    plain = TableModule(good, min_interactions=3, history_len=5)
    plain.setup()
    coded = TableModule(
        good.set_column(1, "item_id", good.column("item_id").dictionary_encode()),
        min_interactions=3,
        history_len=5,
    )
    coded.setup()
    assert coded.vocabs["item_id"].values.tolist() == plain.vocabs["item_id"].values.tolist()
    assert coded.summary == plain.summary


# -- values that float32 cannot hold ------------------------------------------------------------


@pytest.mark.parametrize("where", MODULES)
@pytest.mark.parametrize("column", ["age", "watch_time", "duration"])
def test_values_beyond_float32_are_refused(tmp_path: Path, where: str, column: str) -> None:
    cols = table(age=np.arange(200.0))
    cols[column] = cols[column].astype(np.float64).copy()
    cols[column][9] = 1e300
    with pytest.raises(
        DataError,
        match=rf"{where_file(where)}: column '{column}': value\(s\) beyond float32's range "
        r".*1 row\(s\) \(9\) holding 1e\+300",
    ):
        load(where, tmp_path, cols, dense=["age"])


@pytest.mark.parametrize("column", ["user_age", "watch_seconds", "video_seconds"])
def test_values_beyond_float32_are_refused_at_import(tmp_path: Path, column: str) -> None:
    log_with(column, {10: 1e300}).to_csv(tmp_path / "log.csv", index=False)
    with pytest.raises(
        LogImportError,
        match=rf"column '{column}': value\(s\) beyond float32's range .*1 row\(s\) \(11\) holding 1e\+300",
    ):
        import_log(tmp_path / "log.csv", SCHEMA, tmp_path / "out")


# -- other types that cannot mean what the column is used for -----------------------------------


@pytest.mark.parametrize(
    ("overrides", "kw", "message"),
    [
        (
            {"age": pa.array([[1.0]] * 200)},
            {"dense": ["age"]},
            r"column 'age' must be numeric, got list<element: double>, one number per row "
            r"expected; 200 row\(s\) \(0, 1, 2, 3, 4, \.\.\.\) holding \[1\.0\]",
        ),
        (
            {"timestamp": np.ones(200, dtype=bool)},
            {},
            r"column 'timestamp' must be numeric or a timestamp, got bool",
        ),
        (
            {"position": np.ones(200, dtype=bool)},
            {},
            r"column 'position' must be numeric, got bool",
        ),
        (
            {"timestamp": np.array(["2024-05-01T12:00:00"] * 200)},
            {},
            r"column 'timestamp' must be numeric or a timestamp, got string \(date-time strings: "
            r"import the log with `python -m recolab data import`",
        ),
        (
            {"user_id": np.array([f"u{i % 20}" for i in range(200)])},
            {},
            r"column 'user_id' holds string ids, and data\.meta lists it: evaluation columns become tensors",
        ),
        (
            {"country": np.array(["fr"] * 200)},
            {"meta": ["user_id", "country"]},
            r"column 'country' \(data\.meta\) must be numeric \(evaluation columns become tensors\), got string",
        ),
        (
            {"item_id": np.array([str(i % 40) for i in range(200)])},
            {},
            r"column 'hist' shares the vocabulary of 'item_id' \(data\.sequences\.hist\.vocab_of\), "
            r"so it must hold the same kind of ids: 'item_id' holds string, 'hist' holds lists of int64",
        ),
    ],
)
def test_types_that_cannot_hold_what_the_column_means_are_refused(
    tmp_path: Path, overrides: dict, kw: dict, message: str
) -> None:
    with pytest.raises(DataError, match=rf"log\.parquet: .*{message}"):
        load("memory", tmp_path, table(**overrides), drop_bad_rows=True, **kw)


def test_boolean_labels_read_as_0_and_1(tmp_path: Path) -> None:
    floats = load("memory", tmp_path / "f", table())
    booleans = load("memory", tmp_path / "b", table(click=table()["click"] > 0))
    for split in ("train", "val", "test"):
        assert torch.equal(
            floats.data[split]["labels"]["click"], booleans.data[split]["labels"]["click"]
        )


@pytest.mark.parametrize(
    ("overrides", "kw", "message", "rows"),
    [
        (
            {"hist": pa.array([[1, None]] + [[2]] * 199, pa.list_(pa.int64()))},
            {},
            r"column 'hist': 1 list\(s\) holding a null id: 1 row\(s\) \(0\) holding \[1, None\]",
            1,
        ),
        (
            {"gt": pa.array([0.5] * 7 + [None] + [0.5] * 192)},
            {"meta": ["user_id", "gt"]},
            r"column 'gt': 1 null value\(s\): 1 row\(s\) \(7\) holding null",
            1,
        ),
        (
            {"gt": np.where(np.arange(200) == 4, np.nan, 0.5)},
            {"meta": ["user_id", "gt"], "oracle": {"click": "gt"}},
            r"column 'gt': 1 non-finite or null truth value\(s\): 1 row\(s\) \(4\) holding nan",
            1,
        ),
    ],
)
def test_values_that_would_be_read_as_something_else_are_bad_rows(
    tmp_path: Path, overrides: dict, kw: dict, message: str, rows: int
) -> None:
    with pytest.raises(DataError, match=rf"log\.parquet: {message} \(rows counted from 0\)"):
        load("memory", tmp_path / "fail", table(**overrides), **kw)
    kept = load("memory", tmp_path / "drop", table(**overrides), drop_bad_rows=True, **kw)
    assert kept.dropped_rows == rows


def test_import_names_positions_beyond_int32_and_text_that_is_not_utf8(tmp_path: Path) -> None:
    frame = pd.read_csv(LOG)
    frame["slot"] = frame["slot"].astype(float)
    frame.loc[3, "slot"] = 3e9
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "log.parquet")
    with pytest.raises(
        LogImportError,
        match=r"column 'slot': position\(s\) above 2\*\*31 - 1 \(written as int32\): 1 row\(s\) \(4\) holding 3000000000\.0",
    ):
        import_log(tmp_path / "log.parquet", SCHEMA, tmp_path / "out")
    (tmp_path / "log.csv").write_bytes(LOG.read_bytes().replace(b",news,", b",n\xffws,", 1))
    with pytest.raises(
        LogImportError,
        match=r"column 'category' holds ids, so it must be integer or string, got binary "
        r"\(bytes that are not UTF-8 text: 1 row\(s\) \(\d+\) holding b'n\\xffws'\)",
    ):
        import_log(tmp_path / "log.csv", SCHEMA, tmp_path / "out")
