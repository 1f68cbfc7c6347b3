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
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

#: Special columns that hold non-negative amounts of time (seconds).
NON_NEGATIVE = ("duration", "watch_time")
POSITION = "position"
TIMESTAMP = "timestamp"


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


def _numeric(col: pa.ChunkedArray) -> np.ndarray:
    return col.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> NaN


def special_column_problems(
    table: pa.Table,
    *,
    finite_checked: frozenset[str] = frozenset(),
    sign_checked: frozenset[str] = frozenset(),
) -> list[tuple[str, np.ndarray]]:
    """`(problem, bad row mask)` for the special columns this table holds (see the module docstring).

    Columns in `finite_checked` (labels, dense features) are already checked for NaN, inf and
    null, and those in `sign_checked` (log1p targets) for negative values, by the caller.
    """
    out = []
    for name in NON_NEGATIVE:
        if (
            name in table.column_names
            and name not in sign_checked
            and _is_number(table.column(name).type)
        ):
            values = _numeric(table.column(name))
            wrong = np.isfinite(values) & (values < 0)
            what = "negative value(s)"
            if name not in finite_checked:
                wrong |= ~np.isfinite(values)
                what = "negative or missing value(s)"
            if wrong.any():
                out.append(
                    (f"column {name!r}: {int(wrong.sum())} {what} (seconds, must be >= 0)", wrong)
                )
    if POSITION in table.column_names and _is_number(table.column(POSITION).type):
        values = _numeric(table.column(POSITION))
        finite = np.isfinite(values)
        wrong = (finite & ((values < 1) | (values != np.round(values)))) | (
            ~finite if POSITION not in finite_checked else False
        )
        if wrong.any():
            out.append(
                (
                    f"column {POSITION!r}: {int(wrong.sum())} position(s) below 1, fractional or missing (slots count from 1)",
                    wrong,
                )
            )
    if TIMESTAMP in table.column_names:
        column = table.column(TIMESTAMP)
        wrong = column.is_null().to_numpy(zero_copy_only=False)
        if pa.types.is_floating(column.type):  # NaN and inf are no time either (NaN sorts last)
            wrong = wrong | ~np.isfinite(_numeric(column))
        if wrong.any():
            out.append(
                (
                    f"column {TIMESTAMP!r}: {int(wrong.sum())} missing or non-finite timestamp(s)",
                    wrong,
                )
            )
    return out


def special_type_problems(table: pa.Table) -> list[str]:
    """Special columns of a type that cannot hold what they mean."""
    out = []
    for name in (*NON_NEGATIVE, POSITION):
        if name in table.column_names and not _is_number(table.column(name).type):
            out.append(f"column {name!r} must be numeric, got {table.column(name).type}")
    if TIMESTAMP in table.column_names:
        type_ = table.column(TIMESTAMP).type
        if not (_is_number(type_) or pa.types.is_timestamp(type_) or pa.types.is_date(type_)):
            out.append(f"column {TIMESTAMP!r} must be numeric or a timestamp, got {type_}")
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
