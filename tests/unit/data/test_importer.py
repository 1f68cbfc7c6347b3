"""`recolab data import`: a user's CSV or parquet log and a small schema -> recolab's layout, a summary,
and an experiment that trains on it; every malformed input named by file, column and rows."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from recolab.data.importer import LogImportError, import_log
from recolab.train import train
from tests.conftest import ROOT, compose_train
from tests.integration.probe import one_torch_thread  # noqa: F401 (a fixture)

EXAMPLE = ROOT / "examples" / "import"
LOG, SCHEMA = EXAMPLE / "log.csv", EXAMPLE / "schema.yaml"


def test_the_example_file_is_what_its_script_writes() -> None:
    sys.path.insert(0, str(EXAMPLE))
    try:
        from make_example import make
    finally:
        sys.path.remove(str(EXAMPLE))
    pd.testing.assert_frame_equal(
        pd.read_csv(LOG), pd.read_csv(pd.io.common.StringIO(make().to_csv(index=False)))
    )


def test_import_writes_the_layout_and_a_true_summary(tmp_path: Path) -> None:
    summary = import_log(LOG, SCHEMA, tmp_path / "out")
    raw = pd.read_csv(LOG)
    out = pq.read_table(tmp_path / "out" / "data.parquet").to_pandas()
    assert list(out.columns) == [
        "user_id",
        "item_id",
        "timestamp",
        "position",
        "duration",
        "click",
        "like",
        "watch_time",
        "category",
        "device",
        "user_age",
    ]
    assert len(out) == len(raw) == summary["rows"] == 800
    assert summary["users"] == raw.uid.nunique() and summary["items"] == raw.video_id.nunique()
    assert summary["labels"]["click"]["rate"] == pytest.approx(raw.clicked.mean())
    assert summary["duration"]["p50"] == pytest.approx(raw.video_seconds.median())
    assert summary["position"]["rows_by_position"] == {
        int(k): int(v) for k, v in raw.slot.value_counts().sort_index().items()
    }
    # string ids became integer codes, with their mapping written beside the data
    codes = pq.read_table(tmp_path / "out" / "ids" / "user_id.parquet").to_pandas()
    assert (codes.set_index("code").loc[out.user_id, "id"].to_numpy() == raw.uid.to_numpy()).all()
    assert (
        out.timestamp.to_numpy()
        == (pd.to_datetime(raw.ts) - pd.Timestamp("1970-01-01")).dt.total_seconds().to_numpy()
    ).all()
    spec = yaml.safe_load((tmp_path / "out" / "recolab_schema.yaml").read_text())
    assert spec["sparse"] == ["user_id", "item_id", "category", "device"] and spec["meta"] == [
        "user_id",
        "position",
        "duration",
    ]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["rows"] == 800
    assert "| label click (binary) | rate 0.3412" in (tmp_path / "out" / "summary.md").read_text()


@pytest.mark.usefixtures("one_torch_thread")
def test_an_experiment_trains_on_the_imported_log(tmp_path: Path) -> None:
    import_log(LOG, SCHEMA, tmp_path / "imported")
    cfg = compose_train(
        tmp_path,
        [
            "+exp=mmoe",
            "data=imported",
            f"data.path={tmp_path / 'imported'}",
            "data.batch_size=64",
            "trainer.max_epochs=1",
            "logger=none",
        ],
    )
    metrics = train(cfg)
    assert 0.0 <= metrics["test/auc/click"] <= 1.0 and np.isfinite(metrics["test/mae/watch_time"])
    assert {"test/gauc/like", "test/xauc/watch_time"} <= metrics.keys()


def broken_log(tmp_path: Path, **changes: dict[int, object]) -> Path:
    frame = pd.read_csv(LOG)
    for column, rows in changes.items():
        if column not in frame:
            continue
        frame[column] = frame[column].astype(object)
        for row, value in rows.items():
            frame.loc[row, column] = value
    path = tmp_path / "log.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"video_seconds": {4: -3.0, 9: -1.0}},
            r"column 'video_seconds': negative duration\(s\) \(seconds, must be >= 0\): 2 row\(s\) \(5, 10\)",
        ),
        (
            {"slot": {0: 0}},
            r"column 'slot': position\(s\) below 1 or fractional \(slots count from 1\): 1 row\(s\) \(1\)",
        ),
        ({"clicked": {2: 2}}, r"column 'clicked': binary label\(s\) not 0 or 1: 1 row\(s\) \(3\)"),
        (
            {"watch_seconds": {7: -5.0}},
            r"column 'watch_seconds': negative value\(s\): 1 row\(s\) \(8\)",
        ),
        ({"uid": {3: None}}, r"column 'uid': missing id\(s\): 1 row\(s\) \(4\)"),
        (
            {"ts": {5: "yesterday"}},
            r"column 'ts': timestamp\(s\) that are not ISO date-times .*: 1 row\(s\) \(6\)",
        ),
        (
            {"user_age": {11: None}},
            r"column 'user_age': missing or non-finite value\(s\): 1 row\(s\) \(12\)",
        ),
    ],
)
def test_bad_rows_are_named_by_file_column_and_row_then_dropped_on_request(
    tmp_path: Path, changes: dict, message: str
) -> None:
    path = broken_log(tmp_path, **changes)
    with pytest.raises(LogImportError, match=rf"log\.csv: {message}.*drop_bad_rows=true"):
        import_log(path, SCHEMA, tmp_path / "out")
    assert not (tmp_path / "out").exists(), "something was written for a log that failed its checks"
    summary = import_log(path, SCHEMA, tmp_path / "out", drop_bad_rows=True)
    bad = sum(len(rows) for rows in changes.values())
    assert summary["dropped_rows"]["total"] == bad and summary["rows"] == 800 - bad


def test_duplicate_rows_are_found_at_import(tmp_path: Path) -> None:
    frame = pd.read_csv(LOG)
    path = tmp_path / "log.csv"
    pd.concat([frame, frame.iloc[[10, 20]]]).to_csv(path, index=False)
    with pytest.raises(LogImportError, match=r"duplicate row\(s\) .*: 2 row\(s\) \(801, 802\)"):
        import_log(path, SCHEMA, tmp_path / "out")


NOON = 1714564800  # 2024-05-01T12:00:00Z in unix seconds
TINY_SCHEMA = "user: uid\nitem: video_id\ntimestamp: ts\nlabels: [clicked]\n"


def tiny_log(tmp_path: Path, name: str, **columns: object) -> tuple[Path, Path]:
    """A four-row log (parquet, or CSV if `name` says so) and its schema; `columns` replace the defaults."""
    table = pa.table(
        {
            "uid": [1, 2, 3, 4],
            "video_id": [5, 6, 7, 8],
            "ts": [NOON + i for i in range(4)],
            "clicked": [0, 1, 0, 1],
        }
        | columns
    )
    path, schema = tmp_path / name, tmp_path / "schema.yaml"
    if name.endswith(".csv"):
        table.to_pandas().to_csv(path, index=False)
    else:
        pq.write_table(table, path)
    schema.write_text(TINY_SCHEMA)
    return path, schema


@pytest.mark.parametrize(
    ("name", "ts", "seconds"),
    [
        (  # pyarrow reads these as timestamp[ns]; the fractions are kept
            "fractions.csv",
            ["2024-05-01T12:00:00.5", "2024-05-01T12:00:01.999", "2024-05-01T12:00:02", None],
            [NOON + 0.5, NOON + 1.999, NOON + 2],
        ),
        (
            "micros.parquet",
            pa.array(
                np.array(
                    [
                        "2024-05-01T12:00:00.25",
                        "2024-05-01T12:00:01.999999",
                        "1969-12-31T23:59:59.5",
                    ]
                    + [None],
                    "datetime64[us]",
                ),
                pa.timestamp("us"),
            ),
            [NOON + 0.25, NOON + 1.999999, -0.5],
        ),
        (  # ISO strings with a zone are the instant they name; without one they are UTC
            "zones.parquet",
            [
                "2024-05-01T12:00:00Z",
                "2024-05-01T12:00:00+00:00",
                "2024-05-01T14:00:00+02:00",
                None,
            ],
            [NOON, NOON, NOON],
        ),
        (
            "zones.csv",
            [
                "2024-05-01T12:00:00Z",
                "2024-05-01T10:00:00.5-02:00",
                "2024-05-01T14:00:00+02:00",
                None,
            ],
            [NOON, NOON + 0.5, NOON],
        ),
        (
            "mixed.parquet",
            ["2024-05-01T12:00:00", "2024-05-01T14:00:01+02:00", "2024-05-01T12:00:02.7Z", None],
            [NOON, NOON + 1, NOON + 2.7],
        ),
    ],
)
def test_sub_second_and_zoned_timestamps_become_utc_seconds(
    tmp_path: Path, name: str, ts: object, seconds: list[int]
) -> None:
    path, schema = tiny_log(tmp_path, name, ts=ts)
    with pytest.raises(
        LogImportError, match=r"column 'ts': missing timestamp\(s\): 1 row\(s\) \(4\)"
    ):
        import_log(path, schema, tmp_path / "out")
    summary = import_log(path, schema, tmp_path / "out", drop_bad_rows=True)
    assert summary["dropped_rows"]["total"] == 1
    column = pq.read_table(tmp_path / "out" / "data.parquet").column("timestamp")
    assert column.to_pylist() == pytest.approx(seconds, abs=1e-6)
    # int64 when every second is whole; float64 seconds when a fraction is to be kept
    whole = all(float(v).is_integer() for v in seconds)
    assert column.type == (pa.int64() if whole else pa.float64())


def test_what_is_no_iso_date_time_is_named_by_the_parser_that_converts(tmp_path: Path) -> None:
    ts = ["2024-05-01T12:00:00+00:00", "yesterday", "2024-05-01T12:00:02", "2024-05-01T14:00:03+02"]
    path, schema = tiny_log(tmp_path, "log.parquet", ts=ts)
    with pytest.raises(LogImportError, match=r"not ISO date-times .*: 1 row\(s\) \(2\)"):
        import_log(path, schema, tmp_path / "out")
    summary = import_log(path, schema, tmp_path / "out", drop_bad_rows=True)
    assert summary["dropped_rows"]["total"] == 1
    out = pq.read_table(tmp_path / "out" / "data.parquet").column("timestamp").to_pylist()
    assert out == [NOON, NOON + 2, NOON + 3]


@pytest.mark.parametrize(("column", "what"), [("uid", "id"), ("ts", "timestamp")])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_in_a_float_id_or_timestamp_is_a_missing_value(
    tmp_path: Path, column: str, what: str, bad: float
) -> None:
    columns = {"uid": [1.0, 2.0, 3.0, 4.0], "ts": [NOON + 0.5 * i for i in range(4)]}
    columns[column][1], columns[column][3] = bad, None  # reported with the nulls, as one problem
    path, schema = tiny_log(tmp_path, "log.parquet", **columns)
    reason = f"column {column!r}: missing {what}(s)"
    with pytest.raises(
        LogImportError, match=rf"log\.parquet: {re.escape(reason)}: 2 row\(s\) \(2, 4\)"
    ):
        import_log(path, schema, tmp_path / "out")
    summary = import_log(path, schema, tmp_path / "out", drop_bad_rows=True)
    assert summary["dropped_rows"] == {"total": 2, "reasons": {reason: 2}} and summary["rows"] == 2
    out = pq.read_table(tmp_path / "out" / "data.parquet").to_pydict()
    assert out["user_id"] == [1, 3] and out["timestamp"] == [NOON, NOON + 1]


@pytest.mark.parametrize(
    ("schema_text", "message"),
    [
        (
            "user: uid\nitem: video\nlabels: [clicked]\nsplit: {kind: random}\n",
            r"schema item names column 'video', which is not in the file; did you mean 'video_id'\?",
        ),
        (
            "user: uid\nitem: video_id\nlables: [clicked]\n",
            r"schema\.yaml: unknown key 'lables'; did you mean 'labels'\?",
        ),
        (
            "user: uid\nitem: video_id\nlabels: [{column: clicked, kind: binry}]\nsplit: {kind: random}\n",
            r"labels\[0\]\.kind='binry': expected 'binary' or 'regression'",
        ),
        (
            "user: uid\nitem: video_id\nlabels: [clicked]\n",
            r"a time split needs a `timestamp` column",
        ),
        ("user: uid\nitem: [video_id\n", r"schema\.yaml: not valid YAML"),
        (
            "user: uid\nitem: video_id\nlabels: [category]\nsplit: {kind: random}\n",
            r"log\.csv: column 'category' \(label\) must be numeric, got string: text that is not a "
            r"number in 800 row\(s\) \(1, 2, 3, 4, 5, \.\.\.\) holding 'news', 'food', 'news'",
        ),
        (
            "user: uid\nitem: video_id\nlabels: [clicked]\nsparse: [uid]\nsplit: {kind: random}\n",
            r"column\(s\) \['uid'\] given more than one role",
        ),
    ],
)
def test_a_bad_schema_is_named_by_file_and_key(
    tmp_path: Path, schema_text: str, message: str
) -> None:
    schema = tmp_path / "schema.yaml"
    schema.write_text(schema_text)
    with pytest.raises(LogImportError, match=message):
        import_log(LOG, schema, tmp_path / "out")


def test_the_command_line_imports_and_reports_errors(tmp_path: Path) -> None:
    env = {**os.environ, "RECOLAB_CONFIG_DIR": str(ROOT / "configs")}
    run = [
        sys.executable,
        "-m",
        "recolab",
        "data",
        "import",
        f"path={LOG}",
        f"schema={SCHEMA}",
        f"out={tmp_path / 'out'}",
    ]
    r = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (
        "| rows | 800 |" in r.stdout and f"data=imported data.path={tmp_path / 'out'}" in r.stdout
    )
    bad = broken_log(tmp_path, slot={0: -1})
    r = subprocess.run(
        [*run[:5], f"path={bad}", f"schema={SCHEMA}", f"out={tmp_path / 'out2'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 2 and "log.csv: column 'slot': position(s) below 1" in r.stderr
    r = subprocess.run(
        [*run[:5], f"path={LOG}", f"shema={SCHEMA}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode != 0 and "unknown key 'shema'; did you mean 'schema'?" in r.stderr


def test_rows_a_fraction_of_a_second_apart_are_not_duplicates(tmp_path: Path) -> None:
    ts = pa.array(
        np.array(
            ["2024-05-01T12:00:00.1", "2024-05-01T12:00:00.7", "2024-05-01T12:00:01", None],
            "datetime64[ms]",
        ),
        pa.timestamp("ms"),
    )
    path, schema = tiny_log(
        tmp_path,
        "log.parquet",
        ts=ts,
        uid=[1, 1, 3, 4],
        video_id=[5, 5, 7, 8],
        clicked=[0, 0, 0, 1],
    )
    summary = import_log(path, schema, tmp_path / "out", drop_bad_rows=True)
    assert summary["dropped_rows"]["total"] == 1  # the null timestamp alone
    out = pq.read_table(tmp_path / "out" / "data.parquet").column("timestamp").to_pylist()
    assert out == pytest.approx([NOON + 0.1, NOON + 0.7, NOON + 1])
