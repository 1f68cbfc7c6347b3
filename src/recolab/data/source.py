"""The data-source contract: a source converts its raw files to an Arrow table once.

A source is a function of its raw files (and of its conversion's parameters) that returns an
Arrow table, or `(table, facts)` where `facts` are counts worth keeping beside the table (rows
left out and why). `cached_parquet` runs it once and keeps the result:

- **one key**: a hash of the source files' identity (resolved path, size, modification time),
  the conversion's parameters, the converter's version and this module's `FORMAT_VERSION`; an
  edited, replaced or moved file, other parameters or a bumped version give a new cache file;
- **written atomically**: the table goes to a temporary file beside the target, which is then
  renamed over it, so a killed conversion never leaves a half-written cache;
- **a JSON sidecar** (`<name>-<key>.json`) records the sources, parameters, versions, row count
  and the converter's facts.

A `Source` object wraps it for a data module: `prepare()` converts once, `load(columns)` reads the
cached file and applies what the source's settings say (`max_rows`: `check_max_rows`,
`take_earliest`). The data modules compose one (`Sourced`: ranking and retrieval alike) and do
the rest themselves: validation (`recolab.data.validation`), split, vocabularies, batches. The
messages for a missing path (`no_such`, `require`) and the split cuts (`split_rows`,
`split_column`) live here too, so every source words and cuts them alike.

A new data set is three files: `recolab/data/<name>.py` (the converter, its `Source`, and a
`RankDataModule` or `RetrievalDataModule` subclass whose constructor takes the config's keys and
sets `self.source`; `kuairand.py` is a short example), `configs/data/<name>.yaml`, and
`tests/unit/data/test_<name>.py`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recolab.data.checks import DataError
from recolab.data.validation import check_columns

log = logging.getLogger(__name__)

#: Bump when the cache's layout (key, sidecar) changes: every cache is converted again.
FORMAT_VERSION = 2
SPLITS = ("train", "val", "test")
#: The fewest rows `max_rows` may keep: fewer leaves a split empty.
MIN_ROWS = 10

Converted = pa.Table | tuple[pa.Table, dict[str, Any]]


class Source(Protocol):
    """Where a data module's table comes from; the data modules (ranking and retrieval) hold one
    and do the rest (validation, split, vocabularies, batches) themselves."""

    def prepare(self) -> None:
        """Convert the raw files once (`cached_parquet`); the data module's `prepare_data`."""

    def load(self, columns: Sequence[str]) -> tuple[str, pa.Table]:
        """(where the table comes from, for messages; the table, holding at least `columns`)."""


class Sourced:
    """What a data module does with its source (ranking and retrieval modules alike): its
    `prepare_data` converts once, its `_load` reads the columns it uses (`required_columns`)."""

    #: The table's source, set by each data set's constructor.
    source: Source | None = None

    def prepare_data(self) -> None:
        if self.source is not None:
            self.source.prepare()

    def _load(self) -> tuple[str, pa.Table]:
        """(where, for messages; the table): the source's, with the columns this module uses."""
        if self.source is None:
            raise TypeError(
                f"{type(self).__name__} has no source: a data module's constructor sets "
                "self.source (recolab.data.source.Source)"
            )
        return self.source.load(self.required_columns)


def select(where: str, table: pa.Table, columns: Sequence[str]) -> pa.Table:
    """`table`'s `columns`, or a DataError naming the missing ones (`where`: the source)."""
    check_columns(where, table.column_names, columns)
    return table.select(list(columns))


def file_identity(path: Path) -> dict[str, Any]:
    """What names a source file's content for the cache: resolved path, size, modification time."""
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_key(files: Sequence[Path], params: Mapping[str, Any], version: int) -> str:
    """12 hex digits of the hash of the files' identity, the parameters and the versions."""
    blob = json.dumps(
        {
            "format": FORMAT_VERSION,
            "version": version,
            "files": [file_identity(Path(f)) for f in files],
            "params": dict(params),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def cached_parquet(
    name: str,
    convert: Callable[[], Converted],
    *,
    cache_dir: str | Path,
    files: Sequence[Path] = (),
    params: Mapping[str, Any] | None = None,
    version: int,
    row_group_size: int | None = None,
) -> Path:
    """`<cache_dir>/<name>-<key>.parquet`, made by `convert()` on first use (see the module docstring).

    Args:
        name: the cache file's readable prefix (e.g. `kuairand-<log name>`).
        convert: returns the table, or `(table, facts)`; called only when the cache is missing.
        cache_dir: the folder of cached conversions.
        files: the raw files read by `convert` (their identity is part of the key).
        params: the conversion's parameters (JSON-able), part of the key and the sidecar.
        version: the converter's version: bump it when the converted table changes.
        row_group_size: the parquet row group size (None: pyarrow's default).
    """
    params = dict(params or {})
    out = Path(cache_dir) / f"{name}-{cache_key(files, params, version)}.parquet"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    log.info("converting %s -> %s", [str(f) for f in files] or params, out)
    converted = convert()
    table, facts = converted if isinstance(converted, tuple) else (converted, {})
    _atomic(out, lambda tmp: pq.write_table(table, tmp, row_group_size=row_group_size))
    sidecar = {
        "sources": [file_identity(Path(f)) for f in files],
        "params": params,
        "version": version,
        "format": FORMAT_VERSION,
        "rows": table.num_rows,
        **facts,
    }
    text = json.dumps(sidecar, indent=2, default=str)
    _atomic(out.with_suffix(".json"), lambda tmp: tmp.write_text(text))
    return out


def _atomic(path: Path, write: Callable[[Path], Any]) -> None:
    """Write through a temporary file beside `path`, then rename it over `path` (atomic)."""
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def check_max_rows(max_rows: int | None) -> int | None:
    """`data.max_rows`: None (every row) or at least `MIN_ROWS`."""
    if max_rows is not None and max_rows < MIN_ROWS:
        raise ValueError(
            f"data.max_rows must be >= {MIN_ROWS} (or null for every row), got {max_rows}"
        )
    return max_rows


def no_such(
    path: str | Path, kind: str = "file or folder", key: str = "data.path", hint: str = ""
) -> DataError:
    """`<path>: no such <kind> (<key>)<hint>`, the message for a configured path that is not there."""
    return DataError(f"{path}: no such {kind} ({key}){hint}")


def require(
    path: str | Path, kind: str = "file or folder", key: str = "data.path", hint: str = ""
) -> Path:
    """`path` as a Path when it is a `kind` (file, folder, or either), else `no_such`."""
    p = Path(path)
    found = {"file": p.is_file, "folder": p.is_dir, "file or folder": p.exists}[kind]()
    if not found:
        raise no_such(p, kind, key, hint)
    return p


def split_cuts(n: int, fractions: Sequence[float]) -> np.ndarray:
    """(2,) the row counts where val and test start: `round(cumsum(fractions) * n)`."""
    return np.round(np.cumsum(np.asarray(fractions, dtype=np.float64))[:2] * n).astype(int)


def split_rows(order: np.ndarray, fractions: Sequence[float]) -> dict[str, np.ndarray]:
    """`order` (row indices) cut into train, val and test at `split_cuts`."""
    return dict(zip(SPLITS, np.split(order, split_cuts(len(order), fractions))))


def take_earliest(table: pa.Table, max_rows: int | None, by: str = "timestamp") -> pa.Table:
    """At most `max_rows` rows (all when None): the earliest by `by`, in the table's row order."""
    if max_rows is None or table.num_rows <= max_rows:
        return table
    order = np.argsort(table.column(by).to_numpy(), kind="stable")[:max_rows]
    return table.take(pa.array(np.sort(order)))


def read_csv(
    path: Path, required: Sequence[str], *, what: str, shown: int | None = None, **kwargs: Any
) -> pd.DataFrame:
    """A delimited text file (`pd.read_csv(path, **kwargs)`) holding the `required` columns and
    at least one row, or a DataError naming the file (`what`: how its parse failure reads;
    `shown`: at most this many header names quoted)."""
    try:
        frame = pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot parse {what} ({e})") from e
    if missing := [c for c in required if c not in frame.columns]:
        header = list(frame.columns)
        more = " ..." if shown is not None and len(header) > shown else ""
        raise DataError(
            f"{path}: missing column(s) {missing}; the header has {header[:shown]}{more}"
        )
    if len(frame) == 0:
        raise DataError(f"{path}: the file holds no rows")
    return frame


def split_column(n: int, fractions: Sequence[float], seed: int) -> pa.Array:
    """(n,) strings `train` / `val` / `test`: rows in a permutation seeded with `seed`, cut at
    `fractions` (`split_rows`); the same whatever the training seed."""
    split = np.empty(n, dtype=object)
    for name, rows in split_rows(np.random.default_rng(seed).permutation(n), fractions).items():
        split[rows] = name
    return pa.array(split, pa.string())
