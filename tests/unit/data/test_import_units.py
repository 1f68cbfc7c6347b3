"""Units on import: `timestamp_unit` and `duration_unit` convert numbers to seconds, the summary
says which units were read, and values whose magnitude says another unit get a warning naming the
column and the likely unit."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from recolab.data.importer import LogImportError, import_log, summary_markdown

START = 1714521600  # 2024-05-01T00:00:00Z, in seconds


def _log(tmp: Path, *, time_scale: int, duration_scale: int, n: int = 200) -> Path:
    """A log whose timestamps are unix time times `time_scale` (1000: milliseconds) and whose
    durations are seconds times `duration_scale`."""
    rng = np.random.default_rng(0)
    seconds = START + np.sort(rng.integers(0, 30 * 86400, n))
    frame = pd.DataFrame(
        {
            "uid": rng.integers(0, 20, n),
            "vid": rng.integers(0, 30, n),
            "ts": seconds * time_scale + rng.integers(0, time_scale, n),
            "len": np.round(rng.uniform(5, 120, n), 1) * duration_scale,
            "clicked": rng.integers(0, 2, n),
        }
    )
    path = tmp / "log.csv"
    frame.to_csv(path, index=False)
    return path


def _schema(tmp: Path, **units: str) -> Path:
    schema = {
        "user": "uid",
        "item": "vid",
        "timestamp": "ts",
        "duration": "len",
        "labels": [{"column": "clicked", "name": "click"}],
        **units,
    }
    path = tmp / "schema.yaml"
    path.write_text(yaml.safe_dump(schema))
    return path


def test_declared_units_are_converted_to_seconds_and_printed(tmp_path, caplog) -> None:
    log = _log(tmp_path, time_scale=1000, duration_scale=1000)
    schema = _schema(tmp_path, timestamp_unit="ms", duration_unit="ms")
    with caplog.at_level(logging.WARNING, logger="recolab.data.importer"):
        summary = import_log(log, schema, tmp_path / "out")
    raw = pd.read_csv(log)
    out = pq.read_table(tmp_path / "out" / "data.parquet").to_pandas()
    np.testing.assert_allclose(out["timestamp"], raw["ts"] / 1000)
    np.testing.assert_allclose(out["duration"], raw["len"] / 1000, rtol=1e-6)
    assert summary["timestamp"]["days"] < 31  # not 30,000 days
    assert summary["duration"]["max"] <= 120
    assert summary["units"] == {
        "timestamp": "ms (numbers, written as seconds)",
        "duration": "ms (written as seconds)",
    }
    assert summary["warnings"] == [] and not caplog.records
    text = summary_markdown(summary)
    assert "| units read | timestamp ms (numbers, written as seconds); duration ms" in text


def test_milliseconds_read_as_seconds_are_named_with_the_likely_unit(tmp_path, caplog) -> None:
    log = _log(tmp_path, time_scale=1000, duration_scale=1000)
    with caplog.at_level(logging.WARNING, logger="recolab.data.importer"):
        summary = import_log(log, _schema(tmp_path), tmp_path / "out")  # units left at s
    ts, duration = summary["warnings"]
    assert ts.startswith("column 'ts' (timestamp): median ") and "likely unit ms" in ts
    assert "set timestamp_unit: ms in the schema" in ts and "2024-05-" in ts
    assert duration.startswith("column 'len' (duration): median ") and "likely unit ms" in duration
    assert [r.getMessage().split(": ", 1)[1] for r in caplog.records] == [ts, duration]
    text = summary_markdown(summary)
    assert f"| **warning** | {ts} |" in text and "| units read | timestamp s (numbers" in text


def test_seconds_declared_as_nanoseconds_and_microsecond_times(tmp_path) -> None:
    log = _log(tmp_path, time_scale=10**6, duration_scale=1)
    summary = import_log(
        log, _schema(tmp_path, timestamp_unit="ns", duration_unit="ns"), tmp_path / "out"
    )
    ts, duration = summary["warnings"]
    assert "likely unit us" in ts
    assert "(duration_unit: ns)" in duration and "likely unit s " in duration


def test_times_no_unit_explains_give_no_warning(tmp_path) -> None:
    """Seconds since the log's start (no date in any unit): nothing to say."""
    log = _log(tmp_path, time_scale=1, duration_scale=1)
    frame = pd.read_csv(log)
    frame["ts"] -= START
    frame.to_csv(log, index=False)
    assert import_log(log, _schema(tmp_path), tmp_path / "out")["warnings"] == []


def test_an_unknown_unit_is_a_clear_error(tmp_path) -> None:
    log = _log(tmp_path, time_scale=1, duration_scale=1)
    with pytest.raises(
        LogImportError,
        match=r"schema\.yaml: key 'duration_unit'='sec': expected one of s, ms, us, ns",
    ):
        import_log(log, _schema(tmp_path, duration_unit="sec"), tmp_path / "out")
