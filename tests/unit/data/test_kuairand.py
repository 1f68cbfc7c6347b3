"""The KuaiRand loader on the shared subset (skipped without ../shared) and on malformed copies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recolab.data.datamodule import DataError
from recolab.data.kuairand import KuaiRandDataModule
from tests.conftest import shared_data

NAME = "processed_standard_kcore_15.tsv"


def module(path: Path, cache: Path, **kw) -> KuaiRandDataModule:
    args = dict(
        path=str(path),
        cache_dir=str(cache),
        sparse=["user_id", "item_id", "hour"],
        dense=["log_duration"],
        tasks=[
            {"name": "click"},
            {"name": "long_view"},
            {"name": "watch_time", "kind": "regression", "transform": "log1p"},
        ],
        meta=["user_id", "duration"],
        split={"kind": "time", "fractions": [0.8, 0.1, 0.1]},
        batch_size=64,
        eval_batch_size=256,
    )
    return KuaiRandDataModule(**(args | kw))


def small_copy(tmp_path: Path, rows: int = 400) -> Path:
    src = shared_data("kuairand-27k-likehate-subset") / NAME
    dst = tmp_path / "kuairand" / NAME
    dst.parent.mkdir()
    pd.read_csv(src, sep="\t", nrows=rows, dtype=str).to_csv(dst, sep="\t", index=False)
    return dst


def test_watch_time_and_duration_in_seconds(tmp_path: Path) -> None:
    src = shared_data("kuairand-27k-likehate-subset")
    raw = pd.read_csv(src / NAME, sep="\t", nrows=3000)
    dm = module(src, tmp_path / "cache", max_rows=3000)
    dm.prepare_data()
    dm.setup()
    assert sum(len(dm.data[s]["labels"]["click"]) for s in ("train", "val", "test")) == 3000
    cached = pd.read_parquet(next((tmp_path / "cache").glob("*.parquet")))
    sidecar = json.loads(next((tmp_path / "cache").glob("*.json")).read_text())
    full = pd.read_csv(src / NAME, sep="\t", usecols=["duration_ms"])
    assert sidecar["rows_without_duration_left_out"] == int((full["duration_ms"] <= 0).sum()) > 0
    assert (cached["duration"] > 0).all() and len(cached) == sidecar["rows"]
    kept = raw[raw["duration_ms"] > 0].iloc[0]
    first = cached.iloc[0]
    assert first["watch_time"] == pytest.approx(kept["play_time_ms"] / 1000)
    assert first["duration"] == pytest.approx(kept["duration_ms"] / 1000)
    assert first["hour"] == kept["hourmin"] // 100
    # max_rows keeps the earliest rows by time.
    _, loaded = dm._load()
    np.testing.assert_array_equal(
        np.sort(loaded.column("timestamp").to_numpy()),
        np.sort(cached["timestamp"].to_numpy())[:3000],
    )
    assert (
        "duration" in dm.data["test"]["meta"] and "duration" not in dm.schema.feature_names
    )  # duration is meta


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            lambda f: f.drop(columns=["play_time_ms"]),
            r"kcore_15\.tsv: missing column\(s\) \['play_time_ms'\]",
        ),
        (
            lambda f: f.assign(is_click=f["is_click"].where(f.index != 4, "2")),
            r"kcore_15\.tsv: column 'is_click' must hold 0 or 1; line 6 has '2'",
        ),
        (
            lambda f: f.assign(duration_ms=f["duration_ms"].where(f.index != 7, "abc")),
            r"kcore_15\.tsv: column 'duration_ms' must hold integers; line 9 has 'abc'",
        ),
        (
            lambda f: f.assign(play_time_ms=f["play_time_ms"].where(f.index != 0, "-5")),
            r"kcore_15\.tsv: column 'play_time_ms' must be >= 0; line 2 has '-5'",
        ),
    ],
)
def test_malformed_copies_fail_naming_file_and_column(tmp_path: Path, edit, match: str) -> None:
    path = small_copy(tmp_path)
    edit(pd.read_csv(path, sep="\t", dtype=str)).to_csv(path, sep="\t", index=False)
    with pytest.raises(DataError, match=match):
        module(path, tmp_path / "cache").prepare_data()


def test_repeated_rows_are_kept_once_and_counted(tmp_path: Path) -> None:
    path = small_copy(tmp_path, rows=100)
    frame = pd.read_csv(path, sep="\t", dtype=str)
    frame = frame[frame["duration_ms"].astype(int) > 0].drop_duplicates()
    pd.concat([frame, frame.iloc[:5]]).to_csv(path, sep="\t", index=False)
    module(path, tmp_path / "cache").prepare_data()
    sidecar = json.loads(next((tmp_path / "cache").glob("*.json")).read_text())
    assert sidecar["repeated_rows_left_out"] == 5 and sidecar["rows"] == len(frame)


def test_missing_path_and_bad_settings_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere: no such file or folder \(data.path\)"):
        module(tmp_path / "nowhere", tmp_path / "cache").prepare_data()
    with pytest.raises(DataError, match=r"expected one .tsv log in the folder, found \[\]"):
        module(tmp_path, tmp_path / "cache").prepare_data()
    with pytest.raises(ValueError, match=r"data.max_rows must be >= 10"):
        module(tmp_path, tmp_path, max_rows=3)
