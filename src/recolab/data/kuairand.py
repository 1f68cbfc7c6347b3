"""KuaiRand (Gao et al., "KuaiRand: An Unbiased Sequential Recommendation Dataset with Randomly
Exposed Videos", CIKM 2022): a Kuaishou short-video log with watch time and video duration.

`data.path` is a tab-separated log (or the folder holding one `*.tsv`; null:
`../shared/data/kuairand-27k-likehate-subset` beside the repository) with the KuaiRand
standard-log columns `user_id, video_id, time_ms, hourmin, is_click, long_view, play_time_ms,
duration_ms` (the shared `kuairand-27k-likehate-subset` is such a file: see its SOURCE.md for how
it was filtered, which inflates click and watch rates). It is converted once to parquet under
`cache_dir` (`recolab.data.source`: a changed file is converted again). Columns of the cached table:

- `user_id`, `item_id` (the video id), `timestamp` (`time_ms`), `hour` (0-23, from `hourmin`);
- `click` (`is_click`), `long_view` (0/1), `like` (the file's `label` when present: 1 like, 0 hate);
- `watch_time` (`play_time_ms` / 1000, seconds), `duration` (`duration_ms` / 1000, seconds),
  `log_duration`.

Rows whose duration is not positive (the log records 0 for some videos) can hold no duration
group or watch ratio; they are left out at conversion, and so are rows that repeat an earlier row in
every column (one event written twice); both are counted in the cache's JSON sidecar and the log.
`max_rows` keeps the earliest rows, for quick runs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recolab.data.datamodule import DataError, RankDataModule
from recolab.data.source import cached_parquet, check_max_rows, read_csv, require, take_earliest
from recolab.data.validation import check_columns
from recolab.params import Count, checked

log = logging.getLogger(__name__)

#: Bump when the converted table changes, so caches are converted again.
LOADER_VERSION = 1
REQUIRED = (
    "user_id",
    "video_id",
    "time_ms",
    "hourmin",
    "is_click",
    "long_view",
    "play_time_ms",
    "duration_ms",
)
BINARY = ("is_click", "long_view")
#: Where `path: null` points: ../shared/data/kuairand-27k-likehate-subset beside the repository (src layout).
DEFAULT_PATH = (
    Path(__file__).resolve().parents[3].parent / "shared" / "data" / "kuairand-27k-likehate-subset"
)


def log_file(path: str | Path) -> Path:
    """The log named by `data.path`: the file itself, or the single `*.tsv` in the folder."""
    p = require(path)
    if p.is_dir():
        found = sorted(p.glob("*.tsv"))
        if len(found) != 1:
            raise DataError(
                f"{p} (data.path): expected one .tsv log in the folder, found {[f.name for f in found]}"
            )
        return found[0]
    return p


def read_log(path: Path) -> tuple[pd.DataFrame, int]:
    """The checked log as the cached columns, and how many rows had no positive duration."""
    frame = read_csv(path, REQUIRED, what="the tab-separated log", sep="\t", dtype=str)
    values = {name: _integers(path, frame, name) for name in REQUIRED}
    for name in BINARY:
        bad = ~np.isin(values[name], (0, 1))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{path}: column {name!r} must hold 0 or 1; line {i + 2} has {frame[name].iloc[i]!r}"
            )
    bad = values["play_time_ms"] < 0
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}: column 'play_time_ms' must be >= 0; line {i + 2} has {frame['play_time_ms'].iloc[i]!r}"
        )
    keep = values["duration_ms"] > 0
    dur = values["duration_ms"][keep] / 1000.0
    out = pd.DataFrame(
        {
            "user_id": values["user_id"][keep],
            "item_id": values["video_id"][keep],
            "timestamp": values["time_ms"][keep],
            "hour": (values["hourmin"][keep] // 100).astype(np.int64),
            "click": values["is_click"][keep].astype(np.float32),
            "long_view": values["long_view"][keep].astype(np.float32),
            "watch_time": (values["play_time_ms"][keep] / 1000.0).astype(np.float32),
            "duration": dur.astype(np.float32),
            "log_duration": np.log(dur).astype(np.float32),
        }
    )
    if "label" in frame.columns:
        like = _integers(path, frame, "label")
        if not np.isin(like, (0, 1)).all():
            raise DataError(f"{path}: column 'label' must hold 0 (hate) or 1 (like)")
        out["like"] = like[keep].astype(np.float32)
    return out, int((~keep).sum())


def drop_duplicates(frame: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, int]:
    """Rows equal to an earlier row in every column are one logged event written twice: keep one."""
    dup = frame.duplicated(keep="first").to_numpy()
    if dup.any():
        log.warning(
            "%s: %d row(s) repeat an earlier row in every column; kept once", path, int(dup.sum())
        )
    return frame[~dup].reset_index(drop=True), int(dup.sum())


def _integers(path: Path, frame: pd.DataFrame, name: str) -> np.ndarray:
    numeric = pd.to_numeric(frame[name], errors="coerce")
    bad = (numeric.isna() | (numeric != np.floor(numeric))).to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}: column {name!r} must hold integers; line {i + 2} has {frame[name].iloc[i]!r} ({int(bad.sum())} bad value(s))"
        )
    return numeric.to_numpy(dtype=np.int64)


def convert(src: Path) -> tuple[pa.Table, dict[str, int]]:
    """The cached table (see the module docstring) from the log, and how many rows were left out."""
    frame, no_duration = read_log(src)
    frame, duplicates = drop_duplicates(frame, src)
    log.info(
        "%s: %d rows, %d left out for a duration <= 0, %d repeated rows",
        src,
        len(frame),
        no_duration,
        duplicates,
    )
    facts = {"rows_without_duration_left_out": no_duration, "repeated_rows_left_out": duplicates}
    return pa.Table.from_pandas(frame, preserve_index=False), facts


def cached_kuairand(path: str | Path, cache_dir: str | Path) -> Path:
    """The parquet conversion of the log under `cache_dir`, converting on first use."""
    src = log_file(path)
    return cached_parquet(
        f"kuairand-{src.stem}",
        lambda: convert(src),
        cache_dir=cache_dir,
        files=[src],
        version=LOADER_VERSION,
    )


class KuaiRandDataModule(RankDataModule):
    """A KuaiRand log as a ranking data set (watch time with duration; click, long view).

    Args:
        path: the `.tsv` log, or the folder holding it; None for `DEFAULT_PATH`.
        cache_dir: where the parquet conversion goes.
        max_rows: keep at most this many rows, the earliest by time (null: all).
        **kwargs: `RankDataModule` arguments (features, tasks, meta, split, batch sizes, seed).
    """

    @checked
    def __init__(
        self,
        *,
        path: str | None = None,
        cache_dir: str,
        max_rows: Count | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        path = str(DEFAULT_PATH) if path is None else path
        self.source = KuaiRandSource(path, cache_dir, check_max_rows(max_rows))


class KuaiRandSource:
    """The cached log's columns, the earliest `max_rows` rows by time (all if None)."""

    def __init__(self, path: str, cache_dir: str, max_rows: int | None) -> None:
        self.path, self.cache_dir, self.max_rows = path, cache_dir, max_rows

    def prepare(self) -> None:
        cached_kuairand(self.path, self.cache_dir)

    def load(self, columns: list[str]) -> tuple[str, pa.Table]:
        out = cached_kuairand(self.path, self.cache_dir)
        check_columns(str(out), pq.read_schema(out).names, columns)
        table = pq.read_table(out, columns=list(dict.fromkeys([*columns, "timestamp"])))
        table = take_earliest(table, self.max_rows)
        return str(log_file(self.path)), table.select(columns)
