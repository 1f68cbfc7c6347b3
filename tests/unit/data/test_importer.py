"""`recolab data import`: a user's CSV or parquet log and a small schema -> recolab's layout, a summary,
and an experiment that trains on it; every malformed input named by file, column and rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
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
            r"log\.csv: column 'category' \(label\) must be numeric, got string \(e\.g\. \['news'",
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
