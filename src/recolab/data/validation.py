"""The one validation of a loaded table, before any training starts.

`validate` serves every data module: the in-memory ranking module runs it on the whole table,
the streaming module on each row group, the retrieval module on its interactions. A `TableSpec`
says what each column is for (ids, numbers, labels, evaluation columns); the checks themselves
and their policies are `recolab.data.checks`'s, which `recolab data import` builds its messages
from too. Every message starts with where the table came from, names the column, and, for row
problems, the first rows (counted from 0) and their values.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recolab.data import checks
from recolab.data.checks import DataError
from recolab.data.schema import Task

log = logging.getLogger(__name__)

#: What a ranking data module's message says to do about bad rows.
FIX = "Fix the data, or set data.drop_bad_rows=true to drop these rows."


@dataclass(frozen=True)
class TableSpec:
    """What a table's columns are for.

    Attributes:
        required: every column used, in order (missing ones are named).
        sparse: id columns (integers or strings; `integers` must hold integers).
        dense: numeric features.
        sequences: `{column: vocab_of}`, lists of ids (sharing `vocab_of`'s ids, if named).
        tasks: the label columns.
        meta: evaluation-only columns (they become tensors, so numeric).
        oracle: the meta columns holding a true probability or expectation.
        integers: id columns that must hold integers (the retrieval module's).
        duplicates: whether an event log's repeated rows are bad rows (the retrieval module
            keeps the first of a repeated (user, item) instead).
        fix: what the message for bad rows says to do.
    """

    required: Sequence[str]
    sparse: Sequence[str] = ()
    dense: Sequence[str] = ()
    sequences: Mapping[str, str | None] = field(default_factory=dict)
    tasks: Sequence[Task] = ()
    meta: Sequence[str] = ()
    oracle: Sequence[str] = ()
    integers: Sequence[str] = ()
    duplicates: bool = True
    fix: str = FIX

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]


def check_columns(where: str, names: Sequence[str], required: Sequence[str]) -> None:
    """Every required column is there, and none is named twice."""
    missing = [c for c in required if c not in names]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; the table has {list(names)}")
    if twice := checks.duplicate_names(list(names), list(required)):
        raise DataError(f"{where}: {twice}")


def validate(
    table: pa.Table, spec: TableSpec, where: str, *, drop_bad_rows: bool = False
) -> tuple[pa.Table, int]:
    """Fail (or, with `drop_bad_rows`, drop and count) on bad columns and rows.

    Wrong types fail whatever `drop_bad_rows` says. Returns (the table as the rest reads it:
    dictionaries decoded, unsigned ids as int64 (`recolab.data.checks`); how many bad rows were
    dropped), which may have no rows left when every row was bad.
    """
    check_columns(where, table.column_names, spec.required)
    if table.num_rows == 0:
        raise DataError(f"{where}: the table has no rows")
    table = checks.decode_dictionaries(table)
    # Types no row can fix (checks states the policies).
    wrong_types = type_problems(table, spec)
    if wrong_types:
        raise DataError(f"{where}: " + "; ".join(wrong_types))
    found: list[checks.RowProblem] = []

    def flag(name: str, wrong: np.ndarray, what: str) -> None:
        if wrong.any():
            found.append(
                checks.RowProblem(
                    f"column {name!r}: {int(wrong.sum())} {what}", wrong, table.column(name)
                )
            )

    for name in [*spec.task_names, *spec.dense]:
        values = checks.as_numbers(table.column(name))
        flag(name, ~np.isfinite(values), "non-finite value(s) (NaN, inf or null)")
        if p := checks.beyond_float32(name, table.column(name), values):
            found.append(p)
    for task in spec.tasks:
        values = checks.as_numbers(table.column(task.name))
        if task.kind == "binary":
            wrong = np.isfinite(values) & (values != 0) & (values != 1)
            flag(task.name, wrong, "binary label(s) not 0 or 1")
        elif task.transform == "log1p":
            flag(
                task.name,
                np.isfinite(values) & (values < 0),
                "negative value(s) (log1p target)",
            )
    for name in spec.sparse:
        flag(name, table.column(name).is_null().to_numpy(zero_copy_only=False), "null id(s)")
    for name in spec.sequences:
        found += sequence_problems(name, table.column(name))
    for name in dict.fromkeys([*spec.sparse, *spec.sequences, *spec.meta]):
        if p := checks.beyond_int64(name, table.column(name)):
            found.append(p)
    oracle = set(spec.oracle)
    for name in spec.meta:
        col = table.column(name)
        if name in oracle:
            flag(name, ~np.isfinite(checks.as_numbers(col)), "non-finite or null truth value(s)")
        elif name not in (
            *checks.NON_NEGATIVE,
            checks.POSITION,
            checks.TIMESTAMP,
            *spec.sparse,
        ):
            flag(name, col.is_null().to_numpy(zero_copy_only=False), "null value(s)")
    log1p = frozenset(t.name for t in spec.tasks if t.transform == "log1p")
    found += checks.special_column_problems(
        table,
        finite_checked=frozenset([*spec.task_names, *spec.dense]),
        sign_checked=log1p,
    )
    duplicates = checks.duplicate_rows(table) if spec.duplicates else np.zeros(0, dtype=bool)
    if duplicates.any():
        found.append(
            checks.RowProblem(
                f"{int(duplicates.sum())} duplicate row(s) (equal to an earlier row in every column used: {table.column_names})",
                duplicates,
            )
        )
    table, bad = settle(table, found, where, drop_bad_rows=drop_bad_rows, fix=spec.fix)
    dropped = 0 if bad is None else int(bad.sum())
    ids = [*spec.sparse, *spec.sequences, *spec.meta]
    return checks.to_int64(table, ids), dropped


def settle(
    table: pa.Table,
    found: list[checks.RowProblem],
    where: str,
    *,
    drop_bad_rows: bool,
    fix: str = FIX,
    first: int = 0,
    counted: str = "rows counted from 0",
    error: type[DataError] = DataError,
) -> tuple[pa.Table, np.ndarray | None]:
    """What to do about the bad rows `found`: fail with `error` (the message names each problem,
    its first rows and their values, then says `fix`), or with `drop_bad_rows` drop them (and
    log it). Returns (the rows kept, the mask of the dropped rows; None when none was bad)."""
    if not found:
        return table, None
    problems = checks.describe(found, first=first)
    if not drop_bad_rows:
        raise error(f"{where}: {problems} ({counted}). {fix}")
    bad = np.logical_or.reduce([p.mask for p in found])
    log.warning("%s: dropping %d bad row(s): %s (%s)", where, int(bad.sum()), problems, counted)
    return table.filter(pa.array(~bad)), bad


def type_problems(table: pa.Table, spec: TableSpec) -> list[str]:
    """Columns whose type cannot hold what the config uses them for."""
    out = [
        *(
            p
            for n in spec.sparse
            if (p := _id_problem(n, table.column(n).type, n in spec.integers))
        ),
        *(
            p
            for n in spec.sequences
            if (p := checks.sequence_type_problem(n, table.column(n).type))
        ),
        *(
            f"column {n!r} must hold integers, got {table.column(n).type}"
            for n in spec.integers
            if n not in spec.sparse and not pa.types.is_integer(table.column(n).type)
        ),
        *checks.special_type_problems(table),
        *(
            p
            for n in [*spec.task_names, *spec.dense]
            if (p := checks.number_type_problem(n, table.column(n)))
        ),
    ]
    for name, shared in spec.sequences.items():
        if out or not shared or shared not in table.column_names:
            continue
        element = table.column(name).type.value_type
        if _id_kind(element) != _id_kind(table.column(shared).type):
            out.append(
                f"column {name!r} shares the vocabulary of {shared!r} (data.sequences.{name}.vocab_of), "
                f"so it must hold the same kind of ids: {shared!r} holds {table.column(shared).type}, "
                f"{name!r} holds lists of {element}"
            )
    for name in spec.meta:
        type_ = table.column(name).type
        if checks._is_number(type_) or name in (*checks.NON_NEGATIVE, checks.POSITION):
            continue  # the special columns' types are checked above
        if name not in spec.sparse or not checks._is_text(type_):
            out.append(
                f"column {name!r} (data.meta) must be numeric (evaluation columns become "
                f"tensors), got {type_}"
            )
        else:
            out.append(
                f"column {name!r} holds {type_} ids, and data.meta lists it: evaluation columns "
                "become tensors, so they must be numeric. Import the log with `python -m "
                "recolab data import` (it turns string ids into integer codes), or leave "
                f"{name!r} out of data.meta"
            )
    return out


def sequence_problems(name: str, col: pa.ChunkedArray) -> list[checks.RowProblem]:
    """Rows whose list of ids holds a missing id (it would silently read as padding)."""
    arr = col.combine_chunks()
    flat = pc.list_flatten(arr)
    if not flat.null_count:
        return []
    rows = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False)
    mask = np.zeros(len(arr), dtype=bool)
    mask[rows[flat.is_null().to_numpy(zero_copy_only=False)]] = True
    return [
        checks.RowProblem(
            f"column {name!r}: {int(mask.sum())} list(s) holding a null id", mask, col
        )
    ]


def _id_problem(name: str, type_: pa.DataType, integer: bool) -> str | None:
    if integer and not pa.types.is_integer(type_):
        return f"column {name!r} must hold integers, got {type_}"
    return checks.id_type_problem(name, type_)


def _id_kind(type_: pa.DataType) -> str:
    """`integer` or `string`: ids of different kinds never match (1 is not "1")."""
    return "integer" if pa.types.is_integer(type_) else "string"
