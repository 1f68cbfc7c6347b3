"""Ali-CCP (Alibaba Click and Conversion Prediction; Ma et al., "Entire Space Multi-Task Model",
SIGIR 2018, https://tianchi.aliyun.com/dataset/408): Taobao impressions with a click and a
purchase label, the data set of ESMM.

`data.path` is a folder holding the preprocessed split files of AITM's script
(github.com/xidongbo/AITM, `process_public_dataset.py`, as torch-rechub ships them):
`ali_ccp_train.csv`, `ali_ccp_val.csv` and `ali_ccp_test.csv`, or the samples of the same layout
`ali_ccp_{train,val,test}_sample.csv` (null: `../shared/data/ali-ccp-sample` beside the
repository). Each is comma-separated with a header: `click`, `purchase` (0/1; a purchase only
where there is a click), the label-encoded sparse feature fields named by their Ali-CCP field id
(`101` the user id, `205` the item id, `121`, ..., `109_14`, ...), and the normalized dense
fields prefixed with `D` (`D109_14`, ..., `D853`). Every file must have the same columns.

It is converted once to parquet under `cache_dir` (`recolab.data.source`). Columns of the cached
table: `user_id` (field 101), `item_id` (205), `f<field>` for the other sparse fields (`f121`,
`f109_14`), `d<field>` for the dense ones (`d109_14`), `click` and `purchase` (float 0/1), and
`split` (`train`, `val`, `test`: the file each row came from; `data.split: {kind: column,
column: split}`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recolab.data.checks import DataError
from recolab.data.datamodule import RankDataModule
from recolab.data.selection import RowSelection, select_rows_spec
from recolab.data.source import SPLITS, cached_parquet, read_csv, require
from recolab.data.validation import check_columns

log = logging.getLogger(__name__)

#: Bump when the converted table changes, so caches are converted again.
LOADER_VERSION = 1
LABELS = ("click", "purchase")
#: The Ali-CCP fields that become `user_id` and `item_id`.
RENAMED = {"101": "user_id", "205": "item_id"}
#: Where `path: null` points: ../shared/data/ali-ccp-sample beside the repository (src layout).
DEFAULT_PATH = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "ali-ccp-sample"


def split_files(path: str | Path) -> dict[str, Path]:
    """{split: file} in the folder `data.path`: `ali_ccp_<split>.csv` or `ali_ccp_<split>_sample.csv`."""
    folder = require(path, "folder")
    found = {}
    for split in SPLITS:
        names = [f"ali_ccp_{split}.csv", f"ali_ccp_{split}_sample.csv"]
        present = [folder / n for n in names if (folder / n).is_file()]
        if len(present) != 1:
            raise DataError(
                f"{folder} (data.path): expected one of {names} for the {split} split, found "
                f"{[p.name for p in present] or 'neither'} (the folder has "
                f"{sorted(p.name for p in folder.iterdir())[:10]})"
            )
        found[split] = present[0]
    return found


def column_name(field: str) -> str:
    """The cached table's name of an Ali-CCP column (see the module docstring)."""
    if field in LABELS:
        return field
    if field in RENAMED:
        return RENAMED[field]
    return f"d{field[1:]}" if field.startswith("D") else f"f{field}"


def read_split(path: Path, header: list[str] | None) -> tuple[pd.DataFrame, list[str]]:
    """One split file as the cached columns, and its header, checked: the layout (the same
    columns as `header`, the first file's, where given), 0/1 labels, a purchase only after a
    click, integer sparse fields and numeric dense ones; a DataError names the file, the column
    and the line."""
    frame = read_csv(path, [*LABELS, *RENAMED], what="the comma-separated Ali-CCP file", shown=12)
    columns = [str(c) for c in frame.columns]
    if header is not None and columns != header:
        missing = [c for c in header if c not in columns]
        extra = [c for c in columns if c not in header]
        raise DataError(
            f"{path}: its columns differ from the train file's: missing {missing}, extra {extra}"
            + ("" if missing or extra else " (same names, another order)")
        )
    out: dict[str, np.ndarray] = {}
    for field in columns:
        values = pd.to_numeric(frame[field], errors="coerce")
        dense = field.startswith("D")
        bad = values.isna() | (~np.isfinite(values) if dense else values != np.floor(values))
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"{path}: column {field!r} must hold {'numbers' if dense else 'integers'}; line "
                f"{i + 2} has {str(frame[field].iloc[i])!r} ({int(bad.sum())} bad value(s))"
            )
        out[column_name(field)] = values.to_numpy(np.float32 if dense else np.int64)
    for name in LABELS:
        bad = ~np.isin(out[name], (0, 1))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{path}: column {name!r} must hold 0 or 1; line {i + 2} has {str(frame[name].iloc[i])!r}"
            )
        out[name] = out[name].astype(np.float32)
    orphan = (out["purchase"] == 1) & (out["click"] == 0)
    if orphan.any():
        i = int(np.flatnonzero(orphan)[0])
        raise DataError(
            f"{path}: column 'purchase' is 1 without a click (column 'click' 0) on line {i + 2} "
            f"and {int(orphan.sum()) - 1} more: Ali-CCP's purchase follows a click"
        )
    return pd.DataFrame(out), columns


def convert(files: dict[str, Path]) -> tuple[pa.Table, dict[str, Any]]:
    """The cached table (see the module docstring) from the three split files."""
    frames, header = [], None
    for split, path in files.items():
        frame, header = read_split(path, header)
        frames.append(frame.assign(split=split))
    table = pa.Table.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False)
    rows = {s: len(f) for s, f in zip(files, frames)}
    log.info("Ali-CCP %s: %s rows (train/val/test)", list(files.values())[0].parent, rows)
    return table, {"rows_per_split": rows}


def cached_ali_ccp(path: str | Path, cache_dir: str | Path) -> Path:
    """The parquet conversion of the split files under `cache_dir`, converting on first use."""
    files = split_files(path)
    return cached_parquet(
        "ali_ccp",
        lambda: convert(files),
        cache_dir=cache_dir,
        files=list(files.values()),
        version=LOADER_VERSION,
    )


class AliCCPDataModule(RowSelection, RankDataModule):
    """Ali-CCP as a ranking data set (click; click and purchase).

    Args:
        path: the folder of the split files; None for `DEFAULT_PATH`.
        cache_dir: where the parquet conversion goes.
        select_rows: opt-in, `{where: click, splits: [train, val]}`: a CVR model on the clicked
            impressions alone (`recolab.data.selection`); None keeps every row.
        **kwargs: `RankDataModule` arguments (features, tasks, meta, split, batch sizes, seed).
    """

    def __init__(
        self,
        *,
        path: str | None = None,
        cache_dir: str,
        select_rows: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.select_rows = select_rows_spec(select_rows, self.required_columns)
        self.source = AliCCPSource(str(DEFAULT_PATH) if path is None else path, cache_dir)


class AliCCPSource:
    """The cached table's columns."""

    def __init__(self, path: str, cache_dir: str) -> None:
        self.path, self.cache_dir = path, cache_dir

    def prepare(self) -> None:
        cached_ali_ccp(self.path, self.cache_dir)

    def load(self, columns: list[str]) -> tuple[str, pa.Table]:
        out = cached_ali_ccp(self.path, self.cache_dir)
        check_columns(f"{self.path} (converted: {out})", pq.read_schema(out).names, columns)
        return self.path, pq.read_table(out, columns=list(columns))
