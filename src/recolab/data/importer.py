"""`python -m recolab data import`: a user's own log (CSV or parquet) -> recolab's parquet layout.

A small YAML schema says which column is what (see `examples/import/schema.yaml`):

```yaml
user: uid                 # required: the user id column
item: video_id            # required: the item id column
timestamp: ts             # unix time or an ISO date-time; needed by the time split
timestamp_unit: s         # the unit of numeric timestamps: s (default), ms, us or ns
position: slot            # optional: the 1-based slot the item was shown in
duration: video_seconds   # optional: the item's length
duration_unit: s          # its unit: s (default), ms, us or ns
labels:                   # one or more tasks
  - {column: clicked, name: click, kind: binary}
  - {column: watch_seconds, name: watch_time, kind: regression, transform: log1p}
sparse: [category]        # categorical features (integers or strings)
dense: [user_age]         # numeric features
split: {kind: time, fractions: [0.8, 0.1, 0.1]}
```

The import writes `<out>/data.parquet` with recolab's column names (`user_id`, `item_id`,
`timestamp`, `position`, `duration`, one column per task, the features under their own names),
`<out>/recolab_schema.yaml` (the data module's arguments, read by `data=imported`), string ids
turned into integer codes with their mapping in `<out>/ids/<column>.parquet`, and a summary
(`summary.json`, `summary.md`: rows, users, items, label rates, duration and position
distributions). Every problem is found before anything is written, and named by file, column and
rows (1-based data rows, the CSV header not counted); `drop_bad_rows=true` drops bad rows and
the summary says how many, and why. A null, NaN or infinite id or timestamp is a missing one.

`timestamp` is written as unix seconds: int64 when every row is a whole second, float64 (to the
microsecond) when some row has a fraction, which is kept: rows a fraction of a second apart stay
in their order, and are not duplicates of each other. Numbers are unix time in `timestamp_unit`
(`s`, `ms`, `us` or `ns`; default `s`), and durations in `duration_unit` (the same units); both are
written in seconds. Values whose magnitude says another unit than the declared one (a median
timestamp that is a date before 1990 or after 2100 in the declared unit but not in another, a
median duration under a second or over six hours that another unit brings within them) give a
warning naming the column and the likely unit, in the log and in the summary, which also prints
the units. ISO strings with
a zone (`2024-05-01T14:00:00+02:00`, `...Z`) are the instant they name; strings without one, and
timestamp columns without a zone, are read as UTC (`2024-05-01T12:00:00` -> 1714564800).
"""

from __future__ import annotations

import difflib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import yaml

from recolab.data import checks, validation

log = logging.getLogger(__name__)

DATA_FILE = "data.parquet"
SCHEMA_FILE = "recolab_schema.yaml"
SCHEMA_KEYS = (
    "user",
    "item",
    "timestamp",
    "timestamp_unit",
    "position",
    "duration",
    "duration_unit",
    "labels",
    "sparse",
    "dense",
    "split",
)
LABEL_KEYS = ("column", "name", "kind", "weight", "transform")
SECOND_PARTS = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}
UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}
#: Unix seconds a log's median timestamp plausibly lies in: 1990-01-01 to 2100-01-01 (UTC).
PLAUSIBLE_TIME = (631152000.0, 4102444800.0)
#: Seconds an item's median duration plausibly lies in: one second to six hours.
PLAUSIBLE_DURATION = (1.0, 6 * 3600.0)
# Arrow's ISO-8601 parsers: without a zone (whole seconds reach past 2262, ns take fractions), then
# with one (converted to UTC). A string is read by the first that takes it; all give the same instant.
ISO_TYPES = (
    pa.timestamp("s"),
    pa.timestamp("ns"),
    pa.timestamp("s", "UTC"),
    pa.timestamp("ns", "UTC"),
)
ZONED = r"(?:[Zz]|[+-]\d\d:?\d\d)$"  # only sorts strings for speed: every string may try every type


class LogImportError(checks.DataError):
    """A log or schema that cannot be imported; the message names the file, the column, the rows
    and their values. A `DataError`, like every bad-data error of recolab."""


@dataclass
class LogSchema:
    """The user's YAML schema, checked (see the module docstring)."""

    user: str
    item: str
    labels: list[dict[str, Any]]
    timestamp: str | None = None
    position: str | None = None
    duration: str | None = None
    timestamp_unit: str = "s"
    duration_unit: str = "s"
    sparse: list[str] = field(default_factory=list)
    dense: list[str] = field(default_factory=list)
    split: dict[str, Any] = field(
        default_factory=lambda: {"kind": "time", "fractions": [0.8, 0.1, 0.1]}
    )

    def renames(self) -> dict[str, str]:
        """Log column -> recolab column, in output order."""
        out = {self.user: "user_id", self.item: "item_id"}
        for key, special in (
            ("timestamp", "timestamp"),
            ("position", "position"),
            ("duration", "duration"),
        ):
            if getattr(self, key):
                out[getattr(self, key)] = special
        for label in self.labels:
            out[label["column"]] = label["name"]
        out |= {c: c for c in (*self.sparse, *self.dense)}
        return out


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def read_schema(path: str | Path) -> LogSchema:
    """Parse and check the YAML schema; `LogImportError` names the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise LogImportError(f"{path}: no such schema file (schema=)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise LogImportError(
            f"{path}: not valid YAML: {getattr(e, 'problem', None) or e}{where}"
        ) from e
    if not isinstance(raw, dict):
        raise LogImportError(
            f"{path}: expected a mapping of keys ({', '.join(SCHEMA_KEYS)}), got {type(raw).__name__}"
        )
    problems = [
        f"unknown key {k!r}{_suggest(str(k), list(SCHEMA_KEYS))}"
        for k in raw
        if k not in SCHEMA_KEYS
    ]
    problems += [
        f"key {k!r} is required (the {k} id column)" for k in ("user", "item") if not raw.get(k)
    ]
    labels = raw.get("labels")
    if isinstance(labels, (str, dict)):
        labels = [labels]
    if not labels:
        problems.append(
            "key 'labels' is required: at least one label column, e.g. [{column: clicked, name: click, kind: binary}]"
        )
        labels = []
    parsed = []
    for i, label in enumerate(labels):
        label = {"column": label} if isinstance(label, str) else label
        if not isinstance(label, dict) or not label.get("column"):
            problems.append(
                f"labels[{i}]: expected a column name or {{column: ..., name: ..., kind: binary|regression}}, got {label!r}"
            )
            continue
        problems += [
            f"labels[{i}]: unknown key {k!r}{_suggest(str(k), list(LABEL_KEYS))}"
            for k in label
            if k not in LABEL_KEYS
        ]
        label = {
            "name": label["column"],
            "kind": "binary",
            "weight": 1.0,
            "transform": "none",
        } | label
        if label["kind"] not in ("binary", "regression"):
            problems.append(
                f"labels[{i}].kind={label['kind']!r}: expected 'binary' or 'regression'"
            )
        if label["transform"] not in ("none", "log1p"):
            problems.append(
                f"labels[{i}].transform={label['transform']!r}: expected 'none' or 'log1p'"
            )
        parsed.append(label)
    for key in ("timestamp_unit", "duration_unit"):
        if raw.get(key, "s") not in SECOND_PARTS:
            problems.append(
                f"key {key!r}={raw[key]!r}: expected one of {', '.join(SECOND_PARTS)} (the unit "
                f"of the {key.split('_')[0]} column's numbers: {', '.join(UNIT_NAMES.values())})"
            )
    for key in ("sparse", "dense"):
        value = raw.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(f"key {key!r}: expected a list of column names, got {value!r}")
    split = raw.get("split") or {"kind": "time", "fractions": [0.8, 0.1, 0.1]}
    if not isinstance(split, dict) or split.get("kind", "time") not in ("time", "random"):
        problems.append(
            f"key 'split': expected {{kind: time|random, fractions: [train, val, test]}}, got {split!r}"
        )
    elif split.get("kind", "time") == "time" and not raw.get("timestamp"):
        problems.append(
            "key 'split': a time split needs a `timestamp` column; name it, or use split: {kind: random}"
        )
    if problems:
        raise LogImportError(f"{path}: " + "; ".join(problems))
    schema = LogSchema(
        user=raw["user"],
        item=raw["item"],
        labels=parsed,
        timestamp=raw.get("timestamp"),
        position=raw.get("position"),
        duration=raw.get("duration"),
        timestamp_unit=str(raw.get("timestamp_unit", "s")),
        duration_unit=str(raw.get("duration_unit", "s")),
        sparse=list(raw.get("sparse") or []),
        dense=list(raw.get("dense") or []),
        split=dict(split),
    )
    used = [
        c
        for c in [
            schema.user,
            schema.item,
            schema.timestamp,
            schema.position,
            schema.duration,
            *(lbl["column"] for lbl in parsed),
            *schema.sparse,
            *schema.dense,
        ]
        if c
    ]
    twice = sorted({c for c in used if used.count(c) > 1})
    names = list(schema.renames().values())
    clash = sorted({n for n in names if names.count(n) > 1})
    if twice or clash:
        raise LogImportError(
            f"{path}: "
            + "; ".join(
                ([f"column(s) {twice} given more than one role"] if twice else [])
                + (
                    [
                        f"output name(s) {clash} used twice (a feature named like a special column or a task?)"
                    ]
                    if clash
                    else []
                )
            )
        )
    return schema


def read_log(path: str | Path) -> pa.Table:
    path = Path(path)
    if not path.exists():
        raise LogImportError(f"{path}: no such file (path=)")
    try:
        if path.suffix.lower() in (".csv", ".tsv", ".txt") or path.name.lower().endswith(
            (".csv.gz", ".tsv.gz")
        ):
            delimiter = "\t" if ".tsv" in path.name.lower() else ","
            return pacsv.read_csv(  # an empty field is a missing value, for strings too (an empty id is no id)
                path,
                parse_options=pacsv.ParseOptions(delimiter=delimiter),
                convert_options=pacsv.ConvertOptions(strings_can_be_null=True),
            )
        if path.is_dir():
            return pq.read_table(path)
        if (
            path.suffix.lower() == ".parquet"
        ):  # a file's reader, unlike read_table, reads columns named twice
            return pq.ParquetFile(path).read()
    except checks.PARQUET_ERRORS as e:
        if path.suffix.lower() == ".parquet" or path.is_dir():
            error = (
                checks.unreadable_in_folder(path, e)
                if path.is_dir()
                else checks.unreadable(path, e)
            )
            raise LogImportError(str(error)) from e
        raise LogImportError(f"{path}: cannot be read ({str(e).splitlines()[0]})") from e
    raise LogImportError(
        f"{path}: expected a .csv, .tsv or .parquet file (or a folder of parquet files)"
    )


def _as_float(col: pa.ChunkedArray) -> np.ndarray:
    """float64 values of a numeric, boolean or text column (text that is no number is NaN)."""
    return checks.as_numbers(col)


def _missing(col: pa.ChunkedArray) -> np.ndarray:
    """Rows that are null, or NaN or infinite in a float column: an id or a timestamp that is not there."""
    missing = col.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_floating(col.type):
        missing |= ~np.isfinite(col.to_numpy(zero_copy_only=False).astype(np.float64))
    return missing


def _seconds(times: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Unix seconds (float64, fractions kept) of a timestamp or date array; nulls give 0."""
    if pa.types.is_date32(times.type):  # days
        return pc.fill_null(pc.cast(times, pa.int32()), 0).to_numpy().astype(np.float64) * 86400
    if pa.types.is_date64(times.type):  # milliseconds
        return pc.fill_null(pc.cast(times, pa.int64()), 0).to_numpy() / 1000
    ticks = pc.fill_null(pc.cast(times, pa.int64()), 0).to_numpy()  # UTC, in the type's unit
    per = SECOND_PARTS[times.type.unit]
    return (ticks // per).astype(np.float64) + (ticks % per) / per  # whole part exact


def _iso_seconds(strings: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """`(unix seconds (float64), whether read)` of non-null strings, by the first of `ISO_TYPES`
    that reads them: a whole array at once, and value by value only if no type reads all of it."""
    for type_ in ISO_TYPES:
        try:
            return _seconds(pc.cast(strings, type_)), np.ones(len(strings), dtype=bool)
        except pa.ArrowInvalid:
            continue
    distinct, codes = np.unique(strings.to_numpy(zero_copy_only=False), return_inverse=True)
    seconds, read = np.zeros(len(distinct)), np.zeros(len(distinct), dtype=bool)
    for i, value in enumerate(distinct):  # a log with bad strings, or with and without zones
        for type_ in ISO_TYPES:
            try:
                seconds[i] = _seconds(pc.cast(pa.array([value], strings.type), type_))[0]
            except pa.ArrowInvalid:
                continue
            read[i] = True
            break
    return seconds[codes], read[codes]


def _timestamp_seconds(
    col: pa.ChunkedArray, unit: str = "s"
) -> tuple[np.ndarray, np.ndarray] | None:
    """`(unix seconds, rows without a time)` from numbers (in `unit`), timestamps, dates or ISO
    date-time strings (see the module docstring: int64 if all are whole seconds, else float64);
    None if the type holds no times.

    A row has no time if it is missing (`_missing`) or a string that is not an ISO date-time; its
    seconds are 0. `check_log` reports these rows (`_unparsed`) and `convert` writes the seconds.
    """
    missing = _missing(col)
    per = SECOND_PARTS[unit]
    if pa.types.is_integer(col.type):
        ticks = pc.fill_null(pc.cast(col, pa.int64()), 0).to_numpy()
        if per == 1:
            return ticks, missing
        seconds = (ticks // per).astype(np.float64) + (ticks % per) / per  # whole part exact
    elif pa.types.is_floating(col.type):
        ticks = np.where(missing, 0.0, col.to_numpy(zero_copy_only=False).astype(np.float64))
        seconds = ticks / per
    elif pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
        seconds = _seconds(col)
    elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        seconds, unread = np.zeros(len(col)), missing.copy()
        strings = pc.drop_null(col.combine_chunks())
        present = np.flatnonzero(~missing)
        zoned = pc.match_substring_regex(strings, ZONED).to_numpy(zero_copy_only=False)
        for group in (~zoned, zoned):  # one fast cast each for logs with and without zones
            if group.any():
                values, read = _iso_seconds(strings.filter(pa.array(group)))
                seconds[present[group]], unread[present[group]] = values, ~read
        missing = unread
    else:
        return None
    whole = np.array_equal(seconds, np.floor(seconds)) and np.abs(seconds).max(initial=0) < 2**62
    return (seconds.astype(np.int64) if whole else seconds), missing


def _unparsed(col: pa.ChunkedArray) -> np.ndarray | None:
    """Rows whose timestamp is there but is neither a number nor an ISO date-time (by the parser
    that `convert` uses, `_timestamp_seconds`); None if the type holds neither."""
    parsed = _timestamp_seconds(col)
    return None if parsed is None else parsed[1] & ~_missing(col)


def _likely_unit(
    value: float, declared: str, plausible: tuple[float, float]
) -> tuple[str, float] | None:
    """`(unit, seconds)`: the unit in which `value` lies within `plausible` seconds, where the
    declared one does not (None where it does, or where no unit does: nothing to say). Of two
    that do, the one nearer the range's middle (on a log scale)."""
    low, high = plausible
    if low <= value / SECOND_PARTS[declared] <= high:
        return None
    middle = math.sqrt(low * high)
    fits = [
        (abs(math.log(value / per / middle)), unit, value / per)
        for unit, per in SECOND_PARTS.items()
        if low <= value / per <= high
    ]
    return min(fits)[1:] if fits else None


def _when(seconds: float) -> str:
    import datetime as dt

    try:
        return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%d")
    except (OverflowError, OSError, ValueError):
        return "no date"


def unit_warnings(table: pa.Table, schema: LogSchema) -> list[str]:
    """Warnings for numeric timestamp and duration columns whose median says another unit than
    the schema's `timestamp_unit` / `duration_unit` (see the module docstring)."""
    # (role, column, declared unit, plausible seconds, the values that count, how seconds read)
    checked = []
    if schema.timestamp:
        type_ = table.column(schema.timestamp).type
        if pa.types.is_integer(type_) or pa.types.is_floating(type_):
            checked.append(
                (
                    "timestamp",
                    schema.timestamp,
                    schema.timestamp_unit,
                    PLAUSIBLE_TIME,
                    np.isfinite,
                    _when,
                )
            )
    if schema.duration:
        checked.append(
            (
                "duration",
                schema.duration,
                schema.duration_unit,
                PLAUSIBLE_DURATION,
                lambda v: np.isfinite(v) & (v > 0),
                lambda seconds: f"{seconds:.4g} s",
            )
        )
    found = []
    for role, column, unit, plausible, counts, show in checked:
        values = _as_float(table.column(column))
        values = values[counts(values)]
        if not len(values):
            continue
        median = float(np.median(values))
        if likely := _likely_unit(median, unit, plausible):
            found.append(
                f"column {column!r} ({role}): median {median:.6g} read as {UNIT_NAMES[unit]} "
                f"({role}_unit: {unit}) is {show(median / SECOND_PARTS[unit])}; as "
                f"{UNIT_NAMES[likely[0]]} it is {show(likely[1])}: likely unit {likely[0]} (set "
                f"{role}_unit: {likely[0]} in the schema if so)"
            )
    return found


def check_log(table: pa.Table, schema: LogSchema) -> tuple[list[checks.RowProblem], list[str]]:
    """`(problems rows cause, each with its bad rows and their values; problems no row can fix)`."""
    renames = schema.renames()
    # a name given twice first: the column the schema meant may be the one that lost its name
    twice = checks.duplicate_names(table.column_names, list(renames))
    fatal: list[str] = [twice] if twice else []
    missing = [c for c in renames if c not in table.column_names]
    for c in missing:
        role = next(k for k, v in _roles(schema).items() if c in v)
        fatal.append(
            f"schema {role} names column {c!r}, which is not in the file{_suggest(c, table.column_names)}"
        )
    if missing:
        return [], fatal + [f"the file has {table.column_names}"]
    if fatal:
        return [], fatal
    found: list[checks.RowProblem] = []

    def flag(mask: np.ndarray, what: str, column: str | None = None) -> None:
        if mask.any():
            found.append(
                checks.RowProblem(what, mask, None if column is None else table.column(column))
            )

    for column in [schema.user, schema.item, *schema.sparse]:
        col = table.column(column)
        if pa.types.is_floating(col.type):  # a float id column is fine if every value is integral
            values = col.to_numpy(zero_copy_only=False)
            flag(
                np.isfinite(values) & (values != np.round(values)),
                f"column {column!r}: fractional id(s)",
                column,
            )
            flag(
                np.isfinite(values) & (np.abs(values) >= 2.0**63),
                f"column {column!r}: id(s) beyond int64's range (|id| < 2**63 expected)",
                column,
            )
        elif problem := checks.id_type_problem(column, col.type):
            if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
                problem += f" (bytes that are not UTF-8 text: {checks.rows_text(_not_utf8(col), col, first=1)})"
            fatal.append(problem)
            continue
        elif problem := checks.beyond_int64(column, col):
            found.append(problem)
        flag(_missing(col), f"column {column!r}: missing id(s)", column)
    numeric = [(lbl["column"], "label") for lbl in schema.labels] + [
        (c, "dense feature") for c in schema.dense
    ]
    numeric += [
        (c, k) for c, k in ((schema.position, "position"), (schema.duration, "duration")) if c
    ]
    for column, role in numeric:
        col = table.column(column)
        if problem := checks.number_type_problem(
            column, col, role=role, booleans=role in ("label", "dense feature"), first=1
        ):
            if not checks._is_text(col.type) or not np.isfinite(_as_float(col)).any():
                fatal.append(problem)
                continue
            # text, some of it numbers (a CSV column with a stray word): the rows are the problem
            flag(
                checks.text_not_numbers(col),
                f"column {column!r} ({role}): text that is not a number",
                column,
            )
        values = _as_float(col)
        flag(
            ~np.isfinite(values) & ~checks.text_not_numbers(col)
            if checks._is_text(col.type)
            else ~np.isfinite(values),
            f"column {column!r}: missing or non-finite value(s)",
            column,
        )
        if role != "position" and (problem := checks.beyond_float32(column, col, values)):
            found.append(problem)
    if schema.timestamp:
        col = table.column(schema.timestamp)
        unparsed = _unparsed(col)
        if unparsed is None:
            fatal.append(
                f"column {schema.timestamp!r} (timestamp) must be unix seconds or date-times, got {col.type}"
            )
        else:
            flag(
                _missing(col),
                f"column {schema.timestamp!r}: missing timestamp(s)",
                schema.timestamp,
            )
            flag(
                unparsed,
                f"column {schema.timestamp!r}: timestamp(s) that are not ISO date-times like 2024-05-01T12:00:00",
                schema.timestamp,
            )
    if fatal:
        return found, fatal
    for label in schema.labels:
        values = _as_float(table.column(label["column"]))
        if label["kind"] == "binary":
            flag(
                np.isfinite(values) & (values != 0) & (values != 1),
                f"column {label['column']!r}: binary label(s) not 0 or 1",
                label["column"],
            )
        elif label["transform"] == "log1p" or label["name"] in checks.NON_NEGATIVE:
            flag(
                np.isfinite(values) & (values < 0),
                f"column {label['column']!r}: negative value(s)",
                label["column"],
            )
    if schema.duration:
        values = _as_float(table.column(schema.duration))
        flag(
            np.isfinite(values) & (values < 0),
            f"column {schema.duration!r}: negative duration(s) (seconds, must be >= 0)",
            schema.duration,
        )
    if schema.position:
        values = _as_float(table.column(schema.position))
        flag(
            np.isfinite(values) & ((values < 1) | (values != np.round(values))),
            f"column {schema.position!r}: position(s) below 1 or fractional (slots count from 1)",
            schema.position,
        )
        flag(
            np.isfinite(values) & (values > 2**31 - 1),
            f"column {schema.position!r}: position(s) above 2**31 - 1 (written as int32)",
            schema.position,
        )
    if schema.timestamp:  # an event log: exact repeats are logging accidents (recolab.data.checks)
        used = table.select(list(renames)).rename_columns(list(renames.values()))
        flag(
            checks.duplicate_rows(used),
            "duplicate row(s) (equal to an earlier row in every imported column)",
        )
    return found, fatal


def _not_utf8(col: pa.ChunkedArray) -> np.ndarray:
    """Rows of a binary column (a CSV reader's type for text that is no UTF-8) that are not UTF-8."""
    return np.array([v is not None and not _is_utf8(v) for v in col.to_pylist()], dtype=bool)


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _roles(schema: LogSchema) -> dict[str, list[str]]:
    return {
        "user": [schema.user],
        "item": [schema.item],
        "timestamp": [schema.timestamp],
        "position": [schema.position],
        "duration": [schema.duration],
        "labels": [lbl["column"] for lbl in schema.labels],
        "sparse": schema.sparse,
        "dense": schema.dense,
    }


def _encode_ids(col: pa.ChunkedArray) -> tuple[pa.Array, pa.Table | None]:
    """Integer ids as they are; string ids -> int64 codes (sorted order) and the code -> id table."""
    if pa.types.is_dictionary(col.type):
        col = pc.cast(col, col.type.value_type)
    if pa.types.is_integer(col.type):
        return pc.cast(col, pa.int64()), None
    if pa.types.is_floating(col.type):
        return pc.cast(col, pa.int64()), None  # integral and within int64, checked
    raw = col.to_numpy(zero_copy_only=False).astype(str)
    distinct, codes = np.unique(raw, return_inverse=True)
    return pa.array(codes.astype(np.int64)), pa.table(
        {"code": np.arange(len(distinct), dtype=np.int64), "id": distinct}
    )


def convert(table: pa.Table, schema: LogSchema) -> tuple[pa.Table, dict[str, pa.Table]]:
    """The log in recolab's layout, and the code tables of string id columns."""
    columns, id_maps = {}, {}
    for column, name in schema.renames().items():
        col = table.column(column)
        if column in (schema.user, schema.item, *schema.sparse):
            col, mapping = _encode_ids(col)
            if mapping is not None:
                id_maps[name] = mapping
        elif column == schema.timestamp:
            # every row has a time (`check_log`); numbers in `timestamp_unit`
            col = pa.array(_timestamp_seconds(col, schema.timestamp_unit)[0])
        elif column == schema.position:  # whole numbers from 1 to 2**31 - 1, checked
            col = pa.array(_as_float(col).astype(np.int32))
        elif column == schema.duration:  # seconds, from `duration_unit`
            col = pa.array((_as_float(col) / SECOND_PARTS[schema.duration_unit]).astype(np.float32))
        else:
            col = pa.array(_as_float(col).astype(np.float32))
        columns[name] = col
    return pa.table(columns), id_maps


def module_schema(schema: LogSchema) -> dict[str, Any]:
    """The data module's arguments (`recolab_schema.yaml`): features, tasks, evaluation columns, split."""
    meta = [
        "user_id",
        *(["position"] if schema.position else []),
        *(["duration"] if schema.duration else []),
    ]
    return {
        "sparse": ["user_id", "item_id", *schema.sparse],
        "dense": list(schema.dense),
        "tasks": [
            {k: lbl[k] for k in ("name", "kind", "weight", "transform")} for lbl in schema.labels
        ],
        "meta": meta,
        "split": {
            "kind": schema.split.get("kind", "time"),
            "fractions": list(schema.split.get("fractions", [0.8, 0.1, 0.1])),
        },
    }


def _quantiles(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {}
    q = np.quantile(values, [0.0, 0.1, 0.5, 0.9, 1.0])
    return {
        "min": float(q[0]),
        "p10": float(q[1]),
        "p50": float(q[2]),
        "p90": float(q[3]),
        "max": float(q[4]),
        "mean": float(values.mean()),
    }


def summarize(
    out: pa.Table, schema: LogSchema, *, source: str, dropped: dict[str, Any]
) -> dict[str, Any]:
    """Rows, users, items, label rates, and the duration and position distributions."""
    users = out.column("user_id").to_numpy()
    items = out.column("item_id").to_numpy()
    per_user = np.unique(users, return_counts=True)[1]
    per_item = np.unique(items, return_counts=True)[1]
    summary: dict[str, Any] = {
        "source": source,
        "rows": out.num_rows,
        "dropped_rows": dropped,
        "users": int(len(per_user)),
        "items": int(len(per_item)),
        "rows_per_user": _quantiles(per_user.astype(float)),
        "rows_per_item": _quantiles(per_item.astype(float)),
        "labels": {},
    }
    for label in schema.labels:
        y = out.column(label["name"]).to_numpy().astype(np.float64)
        summary["labels"][label["name"]] = (
            {"kind": "binary", "rate": float(y.mean()), "positives": int(y.sum())}
            if label["kind"] == "binary"
            else {"kind": "regression", "zero_share": float((y == 0).mean()), **_quantiles(y)}
        )
    if schema.duration:
        summary["duration"] = _quantiles(out.column("duration").to_numpy().astype(np.float64))
    if schema.position:
        pos, counts = np.unique(out.column("position").to_numpy(), return_counts=True)
        summary["position"] = {
            "rows_by_position": {int(p): int(c) for p, c in zip(pos[:20], counts[:20])},
            **_quantiles(out.column("position").to_numpy().astype(float)),
        }
        if schema.labels and schema.labels[0]["kind"] == "binary":
            y = out.column(schema.labels[0]["name"]).to_numpy()
            p = out.column("position").to_numpy()
            summary["position"][f"{schema.labels[0]['name']}_rate_by_position"] = {
                int(k): float(y[p == k].mean()) for k in pos[:20]
            }
    if schema.timestamp:
        t = out.column("timestamp").to_numpy()
        summary["timestamp"] = {
            "first": int(t.min()),
            "last": int(t.max()),
            "days": round(float(t.max() - t.min()) / 86400, 2),
        }
    return summary


def units(table: pa.Table, schema: LogSchema) -> dict[str, str]:
    """How the timestamp and duration columns were read, for the summary."""
    out = {}
    if schema.timestamp:
        col = table.column(schema.timestamp)
        numeric = pa.types.is_integer(col.type) or pa.types.is_floating(col.type)
        out["timestamp"] = (
            f"{schema.timestamp_unit} (numbers, written as seconds)"
            if numeric
            else "date-times (written as seconds)"
        )
    if schema.duration:
        out["duration"] = f"{schema.duration_unit} (written as seconds)"
    return out


def summary_markdown(s: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    def dist(d: dict[str, float]) -> str:
        return ", ".join(f"{k} {fmt(v)}" for k, v in d.items() if not isinstance(v, dict))

    lines = [
        f"# Imported log: {s['source']}",
        "",
        "| what | value |",
        "| --- | --- |",
        f"| rows | {s['rows']} |",
        *(
            [f"| units read | {'; '.join(f'{k} {v}' for k, v in s['units'].items())} |"]
            if s.get("units")
            else []
        ),
        *[f"| **warning** | {w} |" for w in s.get("warnings", [])],
        f"| dropped rows | {s['dropped_rows']['total']} |",
        f"| users | {s['users']} |",
        f"| items | {s['items']} |",
        f"| rows per user | {dist(s['rows_per_user'])} |",
        f"| rows per item | {dist(s['rows_per_item'])} |",
    ]
    for name, label in s["labels"].items():
        if label["kind"] == "binary":
            lines.append(
                f"| label {name} (binary) | rate {fmt(label['rate'])} ({label['positives']} positives) |"
            )
        else:
            lines.append(
                f"| label {name} (regression) | {dist({k: v for k, v in label.items() if k != 'kind'})} |"
            )
    if "duration" in s:
        lines.append(f"| duration (s) | {dist(s['duration'])} |")
    if "position" in s:
        lines.append(f"| position | {dist(s['position'])} |")
        lines.append(
            f"| rows by position | {', '.join(f'{k}: {v}' for k, v in s['position']['rows_by_position'].items())} |"
        )
        for key, rates in s["position"].items():
            if key.endswith("_rate_by_position"):
                lines.append(
                    f"| {key.replace('_', ' ')} | {', '.join(f'{k}: {fmt(v)}' for k, v in rates.items())} |"
                )
    if "timestamp" in s:
        lines.append(f"| time span | {s['timestamp']['days']} days |")
    for reason, n in s["dropped_rows"].get("reasons", {}).items():
        lines.append(f"| dropped: {reason} | {n} |")
    return "\n".join(lines) + "\n"


def import_log(
    path: str | Path, schema_path: str | Path, out: str | Path, *, drop_bad_rows: bool = False
) -> dict[str, Any]:
    """Check, convert and write a log (see the module docstring); return the summary."""
    schema = read_schema(schema_path)
    table = checks.decode_dictionaries(read_log(path))  # pandas `category` columns: their values
    source = str(Path(path))
    if table.num_rows == 0:
        raise LogImportError(f"{source}: the file has no rows")
    found, fatal = check_log(table, schema)
    if fatal:
        raise LogImportError(f"{source}: " + "; ".join(fatal))
    table, bad = validation.settle(
        table,
        found,
        source,
        drop_bad_rows=drop_bad_rows,
        fix="Fix the file, or import with drop_bad_rows=true to drop these rows.",
        first=1,
        counted="data rows counted from 1, the header not counted",
        error=LogImportError,
    )
    dropped: dict[str, Any] = {"total": 0}
    if bad is not None:
        dropped = {
            "total": int(bad.sum()),
            "reasons": {p.what: int(p.mask.sum()) for p in found},
        }
        if table.num_rows == 0:
            raise LogImportError(f"{source}: no rows left after dropping bad rows")
    warnings = unit_warnings(table, schema)
    for w in warnings:
        log.warning("%s: %s", source, w)
    converted, id_maps = convert(table, schema)
    summary = summarize(converted, schema, source=str(Path(path).resolve()), dropped=dropped)
    summary["units"] = units(table, schema)
    summary["warnings"] = warnings
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(converted, out / DATA_FILE)
    (out / SCHEMA_FILE).write_text(
        f"# Written by `python -m recolab data import` from {Path(path).resolve()}; read by data=imported.\n"
        + yaml.safe_dump(module_schema(schema), sort_keys=False)
    )
    if id_maps:
        (out / "ids").mkdir(exist_ok=True)
        for name, mapping in id_maps.items():
            pq.write_table(mapping, out / "ids" / f"{name}.parquet")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")
    (out / "summary.md").write_text(summary_markdown(summary))
    return summary


def _json_default(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return None if math.isnan(v) else float(v)
    raise TypeError(type(v))
