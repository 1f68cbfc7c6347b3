"""Side-by-side comparison of tracked runs: the config keys that differ, each metric, mean +- std over seeds.

Runs whose params are equal once the seed keys are removed form one group (one row); a metric's
cell is `mean +- std (n)` over the group's seeds, with the sample standard deviation (ddof=1).
"""

from __future__ import annotations

import fnmatch
import html
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass
class RunRecord:
    run_id: str
    name: str
    params: dict[str, str]
    metrics: dict[str, float]


#: Glob patterns of params that do not define a configuration: the seed and keys derived from
#: it, and the run's own folders.
SEED_KEYS = (
    "seed",
    "run_name",
    "*.seed",
    "*.run_name",
    "*.recolab.seed",
    "ckpt_path",
    "*.dirpath",
    "*.default_root_dir",
    "*.artifact_location",
    "*.tracking_uri",
)


def comparison_table(
    runs: list[RunRecord], *, metric_patterns: list[str], seed_keys: tuple[str, ...] = SEED_KEYS
) -> pd.DataFrame:
    """One row per group of runs that differ only by seed; columns: differing keys, then metrics."""
    if not runs:
        raise ValueError("no runs to compare: check the experiment name, filter, tags or run ids")
    keys = sorted(
        {k for r in runs for k in r.params if not any(fnmatch.fnmatchcase(k, p) for p in seed_keys)}
    )
    differing = [k for k in keys if len({r.params.get(k) for r in runs}) > 1]
    metric_names = sorted(
        {
            m
            for r in runs
            for m in r.metrics
            if any(fnmatch.fnmatchcase(m, p) for p in metric_patterns)
        }
    )
    groups: dict[tuple, list[RunRecord]] = {}
    for r in runs:
        groups.setdefault(tuple(r.params.get(k) for k in differing), []).append(r)
    rows = []
    for key, members in groups.items():
        row: dict[str, object] = dict(zip(differing, key))
        row["runs"] = len(members)
        row["seeds"] = ",".join(sorted(str(m.params.get("seed", "?")) for m in members))
        for m in metric_names:
            values = np.array([r.metrics[m] for r in members if m in r.metrics], dtype=float)
            row[m] = _cell(values)
        rows.append(row)
    return pd.DataFrame(rows, columns=[*differing, "runs", "seeds", *metric_names])


def _cell(values: np.ndarray) -> str:
    if len(values) == 0:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{values.mean():.4f} +- {values.std(ddof=1):.4f} ({len(values)})"


def write_comparison(
    table: pd.DataFrame, out_dir: str | Path, *, title: str, source: str
) -> list[Path]:
    """Write `comparison.md` and `comparison.html` (self-contained) under `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header = "| " + " | ".join(map(str, table.columns)) + " |"
    sep = "|" + "---|" * len(table.columns)
    body = ["| " + " | ".join(_md(v) for v in row) + " |" for row in table.itertuples(index=False)]
    md = [
        f"# {title}",
        "",
        f"Runs from {source}. Cells: mean +- sample std (number of seeds).",
        "",
        header,
        sep,
        *body,
        "",
    ]
    paths = [out / "comparison.md", out / "comparison.html"]
    paths[0].write_text("\n".join(md))
    paths[1].write_text(
        "<!doctype html><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4}</style>"
        f"<h1>{html.escape(title)}</h1><p>Runs from {html.escape(source)}. Cells: mean +- sample std (number of seeds).</p>"
        + table.to_html(index=False, na_rep="-", escape=True)
    )
    return paths


def _md(v: object) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return str(v).replace("|", "\\|")
