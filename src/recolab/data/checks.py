"""Row and column checks on a loaded table, shared by the data modules and `recolab data import`.

Each check names the column and counts the rows; the caller adds the file and decides (fail, or
drop with `drop_bad_rows` and report the count). Policies:

- **ids**: sparse id columns hold integers or strings (a float id is almost always a parsing
  accident: `3.0` and `3` would be two ids); sequence columns hold lists of ids.
- **special columns** (DESIGN.md section 2), wherever they appear (feature, label or meta):
  `duration` and `watch_time` are >= 0 seconds; `position` is an integer >= 1 (slots count from
  1); `timestamp` is numeric or a timestamp type, never null, NaN or infinite.
- **duplicates**: in an event log (a table with a `timestamp` column), a row equal to an earlier
  one in every column used is a duplicate (a logging or join accident that would weigh that
  impression twice); with `drop_bad_rows` the first copy is kept. A table without timestamps (a
  census sample, say) may hold identical records of distinct people, so it is not checked.
- **out-of-vocabulary ids are not an error**: an id that the vocabulary does not hold (unseen in
  the training split, or in the checkpoint's vocabulary when new data is evaluated) maps to the
  OOV bucket 0. `oov_rows` counts them per split and column, and the runs report the counts
  (`data/oov_rows/<split>/<column>` in MLflow).
- **types** (`number_type_problem`, `beyond_int64`, `beyond_float32`): numbers (labels, dense
  features, special columns) are integers, floats or (labels and dense features) booleans, one per
  row, and fit in float32 (the tensors' type: `1e300` would become `inf`); ids fit in int64 (a
  uint64 id at or above 2**63 does not); dictionary-encoded columns (pandas `category`) are read
  as the values they encode (`decode_dictionaries`). A column named twice is refused
  (`duplicate_names`), and so is a parquet file that cannot be read (`open_parquet`).

One validation path: the data modules (in memory, streamed and retrieval) run
`recolab.data.validation.validate`, and `recolab data import` settles its bad rows with the same
`recolab.data.validation.settle`; all build their messages from these checks; a row problem is a `RowProblem` (what, the bad rows, their values), and
`describe` names the first rows and their values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

#: Special columns that hold non-negative amounts of time (seconds).
NON_NEGATIVE = ("duration", "watch_time")
POSITION = "position"
TIMESTAMP = "timestamp"
#: Rows (and their values) a message shows; it says how many more there are.
SHOWN_ROWS = 5
#: Labels, dense features and special columns become float32 tensors.
FLOAT32_MAX = float(np.finfo(np.float32).max)
INT64_MAX = np.iinfo(np.int64).max


class DataError(ValueError):
    """Bad input data: the message names the file, the column, the rows and their values."""


class RowProblem(NamedTuple):
    """A problem some rows have: what it is, which rows (a mask), and the column they are in."""

    what: str
    mask: np.ndarray
    values: pa.ChunkedArray | pa.Array | np.ndarray | None = None


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, bytes):
        return repr(value[:40])
    if isinstance(value, str) and len(value) > 40:
        return repr(value[:40] + "...")
    return repr(value)


def rows_text(
    mask: np.ndarray,
    values: pa.ChunkedArray | pa.Array | np.ndarray | None = None,
    *,
    first: int = 0,
) -> str:
    """`N row(s) (3, 7, ...) holding 'abc', nan, ...`: how many, the first `SHOWN_ROWS` rows
    (counted from `first`) and, if given, their values."""
    idx = np.flatnonzero(mask)
    shown = idx[:SHOWN_ROWS]
    more = ", ..." if len(idx) > SHOWN_ROWS else ""
    text = f"{len(idx)} row(s) ({', '.join(str(int(i) + first) for i in shown)}{more})"
    if values is not None and len(shown):
        if isinstance(values, (pa.Array, pa.ChunkedArray)):
            picked = values.take(pa.array(shown)).to_pylist()
        else:
            picked = [values[i] for i in shown]
        text += " holding " + ", ".join(_show(v) for v in picked) + more
    return text


def describe(problems: list[RowProblem], *, first: int = 0) -> str:
    """The problems, each with its rows and their values (see `rows_text`)."""
    return "; ".join(f"{p.what}: {rows_text(p.mask, p.values, first=first)}" for p in problems)


def duplicate_names(names: list[str], used: list[str] | None = None) -> str | None:
    """Column names that appear more than once (among `used`, if given), with their places, or None.

    A name given twice is ambiguous (which column is the label?), and pyarrow and pandas each
    pick differently, or fail, so it is refused whatever the reader would do.
    """
    names = list(names)
    wanted = set(names if used is None else used)
    twice = {n: [i + 1 for i, m in enumerate(names) if m == n] for n in names if n in wanted}
    twice = {n: places for n, places in twice.items() if len(places) > 1}
    if not twice:
        return None
    where = "; ".join(
        f"{n!r} at columns {', '.join(map(str, places))}" for n, places in twice.items()
    )
    return (
        f"column name(s) {list(twice)} appear more than once ({where}, counted from 1); "
        "every column needs its own name"
    )


def decode_dictionaries(table: pa.Table) -> pa.Table:
    """Dictionary-encoded columns (pandas `category`, parquet dictionaries) as the values they
    encode: `category` ids, labels or features are the same data as plain ones."""
    for i, type_ in enumerate(table.schema.types):
        if pa.types.is_dictionary(type_):
            table = table.set_column(
                i, table.column_names[i], table.column(i).cast(type_.value_type)
            )
    return table


def to_int64(table: pa.Table, names: list[str]) -> pa.Table:
    """Unsigned integer columns (and lists of them) among `names` as int64, which torch indexes
    and sorts with (checked first: `beyond_int64`)."""
    for name in dict.fromkeys(names):
        if name not in table.column_names:
            continue
        type_ = table.column(name).type
        if pa.types.is_unsigned_integer(type_):
            target: pa.DataType = pa.int64()
        elif _is_list(type_) and pa.types.is_unsigned_integer(type_.value_type):
            target = (
                pa.list_(pa.int64(), type_.list_size)
                if pa.types.is_fixed_size_list(type_)
                else pa.large_list(pa.int64())
                if pa.types.is_large_list(type_)
                else pa.list_(pa.int64())
            )
        else:
            continue
        i = table.column_names.index(name)
        table = table.set_column(i, name, table.column(name).cast(target))
    return table


def beyond_int64(name: str, col: pa.ChunkedArray) -> RowProblem | None:
    """Rows of an id column (or of a list of ids) holding a uint64 at or above 2**63, which int64
    (the type ids are indexed with) cannot hold."""
    type_ = col.type
    listed = _is_list(type_)
    element = type_.value_type if listed else type_
    if not (pa.types.is_uint64(element)):
        return None
    if listed:
        arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        flat = pc.list_flatten(arr)
        over = pc.greater(flat, pa.scalar(INT64_MAX, pa.uint64())).to_numpy(zero_copy_only=False)
        if not over.any():
            return None
        rows = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False)[over]
        mask = np.zeros(len(col), dtype=bool)
        mask[rows] = True
    else:
        mask = pc.fill_null(pc.greater(col, pa.scalar(INT64_MAX, pa.uint64())), False)
        mask = mask.to_numpy(zero_copy_only=False)
        if not mask.any():
            return None
    return RowProblem(
        f"column {name!r}: id(s) at or above 2**63 (uint64 values that int64, the type ids are "
        "indexed with, cannot hold)",
        mask,
        col,
    )


def as_numbers(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """float64 values of a numeric, boolean or (numbers as text) string column; nulls and text
    that is no number are NaN."""
    type_ = col.type
    if pa.types.is_boolean(type_):
        col = pc.cast(col, pa.int8())
    elif pa.types.is_string(type_) or pa.types.is_large_string(type_):
        text = pd.Series(col.to_numpy(zero_copy_only=False), dtype=object)
        return pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return col.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> NaN


def text_not_numbers(col: pa.ChunkedArray) -> np.ndarray:
    """Rows of a string column whose text is there but is no number."""
    return (
        ~np.isfinite(as_numbers(col))
        & ~col.is_null().to_numpy(zero_copy_only=False)
        & ~(
            np.isin(
                pd.Series(col.to_numpy(zero_copy_only=False), dtype=object)
                .str.strip()
                .str.lower()
                .to_numpy(),
                ["nan", "inf", "+inf", "-inf", "infinity", "-infinity"],
            )
        )
    )


def _is_text(type_: pa.DataType) -> bool:
    return pa.types.is_string(type_) or pa.types.is_large_string(type_)


def number_type_problem(
    name: str, col: pa.ChunkedArray, *, role: str = "", booleans: bool = True, first: int = 0
) -> str | None:
    """Why a column that must hold one number per row cannot, or None. Text names the rows whose
    text is no number (counted from `first`) and their values, not the first values of the
    column, which may be fine."""
    type_ = col.type
    if pa.types.is_integer(type_) or pa.types.is_floating(type_):
        return None
    if pa.types.is_boolean(type_) and booleans:
        return None
    label = f"column {name!r}{f' ({role})' if role else ''} must be numeric, got {type_}"
    if _is_text(type_):
        bad = text_not_numbers(col)
        if not bad.any():
            return f"{label} (numbers written as text: store the column as numbers)"
        return f"{label}: text that is not a number in {rows_text(bad, col, first=first)} (rows counted from {first})"
    if _is_list(type_) or pa.types.is_struct(type_) or pa.types.is_map(type_):
        present = ~col.is_null().to_numpy(zero_copy_only=False)
        return f"{label}, one number per row expected; {rows_text(present, col, first=first)} (rows counted from {first})"
    if pa.types.is_boolean(type_):
        return f"{label} (true/false is no {role or 'number'} here)"
    return label


def beyond_float32(name: str, col: pa.ChunkedArray, values: np.ndarray) -> RowProblem | None:
    """Rows whose finite value float32 (the tensors' type) cannot hold: it would become inf."""
    over = np.isfinite(values) & (np.abs(values) > FLOAT32_MAX)
    if not over.any():
        return None
    return RowProblem(
        f"column {name!r}: value(s) beyond float32's range (|x| <= {FLOAT32_MAX:.4g} expected; "
        "they would become inf)",
        over,
        col,
    )


def id_type_problem(name: str, type_: pa.DataType) -> str | None:
    """What is wrong with a sparse id column's type, or None."""
    if pa.types.is_dictionary(type_):
        type_ = type_.value_type
    if pa.types.is_integer(type_) or pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return None
    return f"column {name!r} holds ids, so it must be integer or string, got {type_}"


def sequence_type_problem(name: str, type_: pa.DataType) -> str | None:
    if (
        pa.types.is_list(type_)
        or pa.types.is_large_list(type_)
        or pa.types.is_fixed_size_list(type_)
    ):
        return id_type_problem(f"{name}[]", type_.value_type)
    return f"column {name!r} is a sequence, so it must hold lists of ids, got {type_}"


def special_column_problems(
    table: pa.Table,
    *,
    finite_checked: frozenset[str] = frozenset(),
    sign_checked: frozenset[str] = frozenset(),
) -> list[RowProblem]:
    """Row problems of the special columns this table holds (see the module docstring).

    Columns in `finite_checked` (labels, dense features) are already checked for NaN, inf, null
    and float32's range, and those in `sign_checked` (log1p targets) for negative values, by the
    caller.
    """
    out = []

    def add(name: str, what: str, wrong: np.ndarray) -> None:
        if wrong.any():
            out.append(RowProblem(f"column {name!r}: {int(wrong.sum())} {what}", wrong, col))

    for name in NON_NEGATIVE:
        if name in table.column_names and _is_number(table.column(name).type):
            col = table.column(name)
            values = as_numbers(col)
            if name not in sign_checked:
                wrong = np.isfinite(values) & (values < 0)
                what = "negative value(s)"
                if name not in finite_checked:
                    wrong |= ~np.isfinite(values)
                    what = "negative or missing value(s)"
                add(name, f"{what} (seconds, must be >= 0)", wrong)
            if name not in finite_checked and (p := beyond_float32(name, col, values)):
                out.append(p)
    if POSITION in table.column_names and _is_number(table.column(POSITION).type):
        col = table.column(POSITION)
        values = as_numbers(col)
        finite = np.isfinite(values)
        wrong = (finite & ((values < 1) | (values != np.round(values)))) | (
            ~finite if POSITION not in finite_checked else False
        )
        add(POSITION, "position(s) below 1, fractional or missing (slots count from 1)", wrong)
    if TIMESTAMP in table.column_names:
        col = table.column(TIMESTAMP)
        wrong = col.is_null().to_numpy(zero_copy_only=False)
        if pa.types.is_floating(col.type):  # NaN and inf are no time either (NaN sorts last)
            wrong = wrong | ~np.isfinite(as_numbers(col))
        add(TIMESTAMP, "missing or non-finite timestamp(s)", wrong)
    return out


def special_type_problems(table: pa.Table) -> list[str]:
    """Special columns of a type that cannot hold what they mean (true/false is no time, position
    or duration)."""
    out = []
    for name in (*NON_NEGATIVE, POSITION):
        if name in table.column_names and (
            p := number_type_problem(name, table.column(name), booleans=False)
        ):
            out.append(p)
    if TIMESTAMP in table.column_names:
        type_ = table.column(TIMESTAMP).type
        if not (
            pa.types.is_integer(type_)
            or pa.types.is_floating(type_)
            or pa.types.is_timestamp(type_)
            or pa.types.is_date(type_)
        ):
            hint = (
                " (date-time strings: import the log with `python -m recolab data import`, which "
                "reads ISO date-times)"
                if _is_text(type_)
                else ""
            )
            out.append(f"column {TIMESTAMP!r} must be numeric or a timestamp, got {type_}{hint}")
    return out


def _is_number(type_: pa.DataType) -> bool:
    return pa.types.is_integer(type_) or pa.types.is_floating(type_) or pa.types.is_boolean(type_)


def _list_row_hash(arr: pa.Array) -> np.ndarray:
    """One uint64 per row of a list column, from its elements and their places."""
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    row = _list_elements_hash(arr)
    if arr.null_count:  # a missing list is not an empty one: its own value, whatever its slot holds
        row[arr.is_null().to_numpy(zero_copy_only=False)] = np.uint64(0x5BD1E9955BD1E995)
    return row


def _list_elements_hash(arr: pa.Array) -> np.ndarray:
    """`_list_row_hash` of each row's slot in the child values (a missing list's slot included)."""
    if pa.types.is_fixed_size_list(arr.type):  # (N, L): one pass per place, no per-element work
        size = arr.type.list_size
        child = arr.values.slice(arr.offset * size, len(arr) * size)  # `values` ignores the offset
        grid = child.to_numpy(zero_copy_only=False).reshape(len(arr), size)
        row = np.zeros(len(arr), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for j in range(grid.shape[1]):
                row = splitmix64(row ^ _element_hash(grid[:, j]))
        return row
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = arr.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
    offsets = offsets - offsets[0]
    lengths = np.diff(offsets)
    place = (np.arange(len(values), dtype=np.int64) - np.repeat(offsets[:-1], lengths)).astype(
        np.uint64
    )
    with np.errstate(over="ignore"):
        # the place goes through a salted hash: with the same hash for value and place, [1, 1] and
        # [2, 2] would collide (h(1) ^ h(1) == h(2) ^ h(2))
        element = splitmix64(
            _element_hash(values) ^ splitmix64(splitmix64(place) ^ np.uint64(0xD6E8FEB86659FD93))
        )
        sums = np.concatenate(
            [[np.uint64(0)], np.cumsum(element, dtype=np.uint64)]
        )  # wraps mod 2**64
        return splitmix64(
            (sums[offsets[1:]] - sums[offsets[:-1]])
            ^ splitmix64(lengths.astype(np.uint64) + np.uint64(2))
        )


def _list_keys(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Each list as a hashable tuple (None for a missing list), for the exact comparison."""
    out = np.empty(len(col), dtype=object)
    out[:] = [None if v is None else tuple(v) for v in col.to_pylist()]
    return out


def _element_hash(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind in "iu":
        return splitmix64(values.astype(np.int64).view(np.uint64))
    return pd.util.hash_array(values)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijection of uint64 that spreads every input bit over the output."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _is_list(type_: pa.DataType) -> bool:
    return (
        pa.types.is_list(type_)
        or pa.types.is_large_list(type_)
        or pa.types.is_fixed_size_list(type_)
    )


def duplicate_rows(table: pa.Table) -> np.ndarray:
    """Rows equal to an earlier row in every column (list columns compared through a 64-bit hash of
    their elements, other columns exactly); the first copy is not marked. Only for event logs:
    a table without a `timestamp` column has none (see the module docstring).

    One 64-bit hash per row finds the candidates (rows whose hash is not unique) in O(N log N);
    only those are compared value by value, so a hash collision never makes a duplicate.
    """
    n = table.num_rows
    if n < 2 or TIMESTAMP not in table.column_names:
        return np.zeros(n, dtype=bool)
    columns = {
        name: _list_row_hash(col) if _is_list(col.type) else col.to_numpy(zero_copy_only=False)
        for name, col in zip(table.column_names, table.columns)
    }
    row = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for values in columns.values():
            row = splitmix64(row ^ pd.util.hash_array(values))
    _, first, counts = np.unique(row, return_inverse=True, return_counts=True)
    candidates = np.flatnonzero(counts[first] > 1)  # ascending: "earlier" keeps its meaning
    out = np.zeros(n, dtype=bool)
    if len(candidates):  # compare the candidates by value, lists element by element
        frame = pd.DataFrame(
            {
                name: _list_keys(table.column(name).take(candidates))
                if _is_list(table.column(name).type)
                else values[candidates]
                for name, values in columns.items()
            }
        )
        out[candidates] = frame.duplicated(keep="first").to_numpy()
    return out


def oov_rows(data: dict[str, dict[str, dict]], sparse_names: list[str]) -> dict[str, int]:
    """`{"<split>/<column>": rows}` whose encoded id is the OOV bucket 0, per split and sparse column."""
    return {
        f"{split}/{name}": int((columns["features"][name] == 0).sum())
        for split, columns in data.items()
        for name in sparse_names
        if name in columns["features"]
    }


# -- parquet files that cannot be read --------------------------------------------------------

#: What pyarrow raises for a file that is no (complete) parquet file.
PARQUET_ERRORS = (pa.ArrowException, OSError)


def unreadable(path: str | Path, error: BaseException) -> DataError:
    """A `DataError` saying why a parquet file cannot be read, in words (0 bytes, no footer, damaged)."""
    path = Path(path)
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if path.is_file() and path.stat().st_size == 0:
        why = "the file is empty (0 bytes: a write that did not finish, or a placeholder)"
    elif "magic bytes" in first or "size is" in first:
        why = "no parquet footer at its end: not a parquet file, or one cut short"
    else:
        why = f"a damaged parquet file ({first})"
    return DataError(f"{path}: cannot be read as parquet: {why}. Write the file again")


def open_parquet(path: str | Path) -> pq.ParquetFile:
    """`pq.ParquetFile(path)`, or a `DataError` naming the file and why it cannot be read."""
    try:
        return pq.ParquetFile(path)
    except PARQUET_ERRORS as e:
        raise unreadable(path, e) from e


def read_row_group(
    pf: pq.ParquetFile, index: int, columns: list[str], path: str | Path
) -> pa.Table:
    """One row group, or a `DataError` naming the file and row group whose pages are damaged."""
    try:
        return pf.read_row_group(index, columns=columns)
    except PARQUET_ERRORS as e:
        error = unreadable(path, e)
        raise DataError(str(error).replace(f"{path}:", f"{path} (row group {index}):", 1)) from e


def unreadable_in_folder(folder: Path, error: BaseException) -> DataError:
    """The first file of a folder of parquet files that cannot be read, named; pyarrow's own
    message names no file."""
    for file in sorted(folder.rglob("*.parquet")):
        if any(part.startswith(("_", ".")) for part in file.relative_to(folder).parts):
            continue
        try:
            pq.ParquetFile(file).read()
        except PARQUET_ERRORS as e:
            return unreadable(file, e)
    return unreadable(folder, error)
