"""Per-user results: the values a run's grouped and retrieval metrics average, as `per_user.parquet`.

Every evaluation writes this file beside its report (and logs it with the report, under
`report/` in MLflow), so two runs on the same test users can be compared user by user
(`recolab compare`'s paired bootstrap). One row per user (per group of `group_key` in ranking):

- `user_id`: the raw id where the data's vocabulary gives it back, else the encoded one;
  `id_kind` says which (`raw` or `encoded`). Ranking groups by a meta column, which holds raw ids.
- ranking: `rows` (the user's test rows), `positives/<task>` (binary tasks), one column per
  grouped metric named as logged without the split (`gauc/<task>`: the user's AUC,
  `xgauc/<task>`: the user's XAUC), nan where the user is left out of that metric, and
  `left_out/<metric>/<task>` saying why (`single row`, `no positive`, `no negative`, `one
  distinct target`; null where the user counts).
- retrieval: `targets`, then `recall_at_K`, `ndcg_at_K`, `hit_rate_at_K` per K and `mrr` (the
  user's reciprocal rank), the same for the baselines (`baseline_popular/...`,
  `baseline_random/...`), and `left_out` (`no target`).

The logged metric is the weighted mean of its column over the users with a value: weights are
`rows` for GAUC (by impressions) and XGAUC, 1 for retrieval metrics. The parquet's metadata
(`recolab.weights`: metric column -> weight column, null for uniform) says so for each column;
`read_per_user` returns it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recolab import metrics as M
from recolab.metrics.registry import at_k
from recolab.reports.stats import bootstrap_interval

FILE = "per_user.parquet"
ID = "user_id"
_WEIGHTS_KEY = b"recolab.weights"


def rank_per_user(details: dict[str, M.GroupedMetric]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The per-user table of a ranking run from its grouped metrics' details (`metric/task` keys).

    Every grouped metric groups the same rows by the same meta column, so their groups coincide;
    the ids are that column's raw values.
    """
    found = {k: d.per_group for k, d in details.items() if d.per_group is not None}
    if not found:
        return pd.DataFrame(), {}
    first = next(iter(found.values()))
    table: dict[str, Any] = {ID: first.groups, "id_kind": "raw", "rows": first.rows}
    weights: dict[str, Any] = {}
    for key, g in found.items():
        if not np.array_equal(g.groups, first.groups):
            raise ValueError(f"{key}: its groups differ from {next(iter(found))}'s")
        if g.positives is not None:
            table[f"positives/{key.split('/', 1)[1]}"] = g.positives
        table[key] = g.values
        table[f"left_out/{key}"] = _reasons(g)
        weight = details[key].weight
        weights[key] = {"impressions": "rows", "uniform": None}.get(
            weight, f"positives/{key.split('/', 1)[1]}"
        )
    return pd.DataFrame(table), weights


def _reasons(g: M.PerGroup) -> np.ndarray:
    """Why each group was left out of the metric (None where it counts)."""
    out = np.full(g.rows.shape, None, dtype=object)
    left = np.isnan(g.values)
    out[left] = "one distinct target"
    if g.positives is not None:
        out[left & (g.positives == 0)] = "no positive"
        out[left & (g.positives == g.rows)] = "no negative"
    out[left & (g.rows == 1)] = "single row"
    return out


def user_ids(encoded: np.ndarray, vocabulary: np.ndarray | None) -> tuple[np.ndarray, str]:
    """Encoded user ids -> the raw ids where the vocabulary (sorted raw ids, id i at i - 1) knows
    every one of them, else the encoded ids; and which (`raw` or `encoded`)."""
    encoded = np.asarray(encoded, dtype=np.int64)
    if vocabulary is not None and encoded.size and (encoded >= 1).all():
        if int(encoded.max()) <= len(vocabulary):
            return np.asarray(vocabulary)[encoded - 1], "raw"
    return encoded, "encoded"


def recall_per_user(
    rows: dict[str, np.ndarray],
    *,
    ks: Sequence[int],
    users: np.ndarray,
    id_kind: str,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The per-user table of a retrieval test: the model's and the baselines' top-k lists.

    Args:
        rows: the gathered test rows: `targets` (U, M) and top-k lists `model`, and optionally
            `popular` and `random` (U, max(ks)).
        ks: the cut-offs.
        users: (U,) the users' ids, in the rows' order.
        id_kind: `raw` or `encoded`.
    """
    table: dict[str, Any] = {ID: users, "id_kind": id_kind}
    weights: dict[str, Any] = {}
    for name, prefix in (
        ("model", ""),
        ("popular", "baseline_popular/"),
        ("random", "baseline_random/"),
    ):
        if name not in rows:
            continue
        for k in ks:
            d = M.retrieval_details(rows[name], rows["targets"], k=k).per_user
            if name == "model" and "targets" not in table:
                table["targets"] = d.targets
                table["left_out"] = np.where(d.targets == 0, "no target", None)
            for metric, values in (("recall", d.recall), ("ndcg", d.ndcg), ("hit_rate", d.hit)):
                table[prefix + at_k(metric, k)] = values
            table[prefix + "mrr"] = d.reciprocal_rank
    for column in table:
        if column not in (ID, "id_kind", "targets", "left_out"):
            weights[column] = None
    return pd.DataFrame(table), weights


def write_per_user(
    table: pd.DataFrame, weights: dict[str, Any], out_dir: str | Path, *, group_key: str = ID
) -> Path | None:
    """Write `per_user.parquet` under `out_dir` (None, nothing written, for an empty table)."""
    if table.empty:
        return None
    path = Path(out_dir) / FILE
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    meta = dict(arrow.schema.metadata or {})
    meta[_WEIGHTS_KEY] = json.dumps(weights).encode()
    meta[b"recolab.group_key"] = group_key.encode()
    pq.write_table(arrow.replace_schema_metadata(meta), path)
    return path


def read_per_user(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """`per_user.parquet` -> (table, weights: metric column -> weight column or None)."""
    arrow = pq.read_table(path)
    raw = (arrow.schema.metadata or {}).get(_WEIGHTS_KEY)
    if raw is None:
        raise ValueError(
            f"{path}: no {_WEIGHTS_KEY.decode()} metadata: expected a {FILE} written by a recolab "
            "report (recolab.reports.per_user.write_per_user)"
        )
    return arrow.to_pandas(), json.loads(raw)


def metric_weights(table: pd.DataFrame, weights: dict[str, Any], column: str) -> np.ndarray:
    """(U,) each user's weight in `column`'s metric: 0 where the user has no value."""
    values = table[column].to_numpy(dtype=np.float64)
    source = weights.get(column)
    w = np.ones(len(table)) if source is None else table[source].to_numpy(dtype=np.float64)
    return np.where(np.isnan(values), 0.0, w)


def mean_of(table: pd.DataFrame, weights: dict[str, Any], column: str) -> float:
    """The metric `column` averages to: its weighted mean over the users with a value."""
    return M.weighted_mean(
        np.nan_to_num(table[column].to_numpy(dtype=np.float64)),
        metric_weights(table, weights, column),
    )


def intervals(
    table: pd.DataFrame, weights: dict[str, Any], *, samples: int, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """Each metric column's 95% percentile bootstrap interval over users (`stats.bootstrap_interval`)."""
    if samples < 1 or table.empty:
        return {}
    return {
        column: bootstrap_interval(
            table[column].to_numpy(dtype=np.float64),
            metric_weights(table, weights, column),
            samples=samples,
            seed=seed,
        )
        for column in weights
    }
