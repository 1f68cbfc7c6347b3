"""The data-source contract: the one cached-parquet helper, max_rows, path messages, the split
cuts and the dense statistics that every source and data module shares."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from recolab.data.census import cached_census
from recolab.data.checks import DataError
from recolab.data.columnar import DenseStats
from recolab.data.kuairand import cached_kuairand
from recolab.data.movielens import cached_movielens
from recolab.data.open_bandit import cached_open_bandit
from recolab.data.source import (
    cached_parquet,
    check_max_rows,
    require,
    split_rows,
    take_earliest,
)
from recolab.data.synthetic_video import WorldParams, cached_world
from tests.conftest import shared_data


def test_cache_is_written_once_and_keyed_by_files_params_and_version(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text("1\n2\n3\n")
    calls = []

    def convert() -> tuple[pa.Table, dict[str, int]]:
        calls.append(1)
        values = [int(v) for v in raw.read_text().split()]
        return pa.table({"x": values}), {"lines_left_out": 0}

    def cached(**kw) -> Path:
        args = {"files": [raw], "params": {"a": 1}, "version": 1} | kw
        return cached_parquet("toy", convert, cache_dir=tmp_path / "cache", **args)

    first = cached()
    assert cached() == first and len(calls) == 1  # reused, not converted again
    assert pq.read_table(first).column("x").to_pylist() == [1, 2, 3]
    sidecar = json.loads(first.with_suffix(".json").read_text())
    st = raw.stat()
    assert sidecar["sources"] == [
        {"path": str(raw.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    ]
    assert (sidecar["params"], sidecar["version"], sidecar["rows"]) == ({"a": 1}, 1, 3)
    assert sidecar["lines_left_out"] == 0
    # Other parameters, another version, an edited file: each its own cache file.
    others = {cached(params={"a": 2}), cached(version=2)}
    raw.write_text("1\n2\n3\n4\n")
    os.utime(raw, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    edited = cached()
    assert len({first, edited, *others}) == 4 and pq.read_table(edited).num_rows == 4
    # Written through a temporary file beside the target: nothing else is left behind.
    assert (
        sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == [".json"] * 4 + [".parquet"] * 4
    )


def test_a_failed_conversion_leaves_no_cache(tmp_path: Path) -> None:
    def broken() -> pa.Table:
        raise DataError("bad input")

    with pytest.raises(DataError, match="bad input"):
        cached_parquet("toy", broken, cache_dir=tmp_path, version=1)
    assert list(tmp_path.iterdir()) == []


def test_max_rows_and_missing_paths_are_worded_in_one_place(tmp_path: Path) -> None:
    assert check_max_rows(None) is None and check_max_rows(10) == 10
    with pytest.raises(ValueError, match=r"data.max_rows must be >= 10 \(or null for every row\)"):
        check_max_rows(3)
    assert require(tmp_path, "folder") == tmp_path
    with pytest.raises(DataError, match=r"nowhere: no such file or folder \(data.path\)"):
        require(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"x.csv: no such file \(data.file\); see SOURCE.md"):
        require(tmp_path / "x.csv", "file", "data.file", "; see SOURCE.md")


def test_take_earliest_keeps_the_earliest_rows_in_row_order() -> None:
    table = pa.table({"timestamp": [5, 1, 4, 1, 3], "v": list("abcde")})
    assert take_earliest(table, None) is table and take_earliest(table, 5) is table
    assert take_earliest(table, 3).column("v").to_pylist() == ["b", "d", "e"]


@pytest.mark.parametrize("n", [1, 2, 10, 101, 1000])
def test_split_rows_cuts_at_rounded_cumulative_shares(n: int) -> None:
    order = np.random.default_rng(n).permutation(n)
    fractions = [0.8, 0.1, 0.1]
    cuts = np.round(np.cumsum(fractions)[:2] * n).astype(int)  # the pre-redesign formula
    expected = dict(zip(("train", "val", "test"), np.split(order, cuts)))
    got = split_rows(order, fractions)
    assert list(got) == ["train", "val", "test"]
    for name in got:
        np.testing.assert_array_equal(got[name], expected[name])


def test_dense_stats_in_one_chunk_are_numpys_exactly() -> None:
    rng = np.random.default_rng(0)
    for i in range(300):
        x = rng.normal(size=int(rng.integers(1, 3000))) * 10.0 ** rng.integers(-3, 6) + rng.normal()
        if i % 3 == 0:
            x = x.astype(np.float32)  # a float32 column is read as float64
        values = x.astype(np.float64)
        mean, std = DenseStats().add(x).result()
        if np.ptp(values) == 0:
            assert (mean, std) == (float(values[0]), 1.0)
        else:
            assert (mean, std) == (float(values.mean()), float(values.std()))


def test_dense_stats_in_chunks_match_the_whole_column() -> None:
    x = np.random.default_rng(1).lognormal(size=10_000)
    stats = DenseStats()
    for chunk in np.array_split(x, [3, 700, 701, 5000]):
        stats.add(chunk)
    mean, std = stats.result()
    assert mean == pytest.approx(x.mean(), rel=1e-12) and std == pytest.approx(x.std(), rel=1e-12)
    assert DenseStats().add(np.full(9, 0.3)).result() == (0.3, 1.0)  # constant: scale 1
    assert DenseStats().result() == (0.0, 1.0)


def table_digest(table: pa.Table) -> str:
    """A hash of the table's column names, types and values."""
    h = hashlib.sha1()
    for name, col in zip(table.column_names, table.columns):
        h.update(f"{name}:{col.type};".encode())
        arr = col.combine_chunks()
        if pa.types.is_fixed_size_list(arr.type) or pa.types.is_list(arr.type):
            arr = pc.list_flatten(arr)
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            h.update("\x1f".join(arr.to_pylist()).encode())
        else:
            h.update(np.ascontiguousarray(arr.to_numpy(zero_copy_only=False)).tobytes())
    return h.hexdigest()[:16]


#: Digests of the tables the pre-redesign converters (five cache writers, three keying schemes)
#: made from the shared samples: the one helper must give the same tables.
BEFORE = {
    "census": "bc51cdfb54e33ae6",
    "kuairand": "535f9b17a9770c54",
    "open_bandit": "0c6d8a4344d66256",
    "movielens": "a3a00cd631487cb4",
    "synthetic_video": "1b7c052e7d316493",
}


@pytest.mark.parametrize("source", sorted(BEFORE))
def test_every_source_converts_as_before(source: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    if source == "synthetic_video":
        path = cached_world(WorldParams(num_users=300, num_items=200, num_impressions=5000), cache)
    elif source == "census":
        folder = shared_data("census-income-kdd")
        path = cached_census(folder / "census-income.test.gz", cache)
    elif source == "kuairand":
        path = cached_kuairand(shared_data("kuairand-27k-likehate-subset"), cache)
    elif source == "open_bandit":
        path = cached_open_bandit(shared_data("open-bandit-dataset-small"), ["men"], cache)
    else:
        path = cached_movielens(shared_data("ml-latest-small"), cache)[1]
    assert table_digest(pq.read_table(path)) == BEFORE[source]
