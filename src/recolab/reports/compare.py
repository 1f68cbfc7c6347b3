"""Comparison of tracked runs: the configurations side by side, with intervals and significance.

Runs whose params are equal once the seed keys are removed form one configuration; a seed run
twice counts once (the newest run). The overview table has one row per configuration: its label
(the experiment's name and the keys that tell its configurations apart), its headline metrics
(`metric_order`: `test/*`, ranking metrics first, then `val/*`, then the rest), runs and seeds,
the config keys that differ (a key whose values repeat another shown key's, such as the MLflow
tag that copies `exp_name`, is shown once; `exp_name` is in the label), and `oracle/*` last; each
metric as `mean +- std (n)` over the seeds (sample std, ddof=1). An `oracle/*` metric equal in
every configuration is stated once under the table instead of repeated in a column.

`comparison_records` gives, per configuration and metric: n seeds, mean, std and a 95% Student t
interval over seeds; and against a baseline configuration, the difference with its 95% interval
and two-sided p-value from two tests (`recolab.reports.stats`):

- `seeds`: a paired t-test over seeds where both configurations ran the same seeds, else
  Welch's t-test: training noise;
- `users` (metrics with per-user values: GAUC, XGAUC, recall@K, NDCG@K, ...): a paired
  bootstrap over test users, pooled over the seed-matched pairs of runs, from each run's
  `per_user.parquet`: test-set noise for these trained models.

Each test's p-values are Holm-corrected across the configurations compared with the baseline
(per metric); a difference whose interval covers 0 is "within noise".
"""

from __future__ import annotations

import fnmatch
import html
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recolab.reports import inline_html
from recolab.reports import per_user as PU
from recolab.reports import stats as S


@dataclass
class RunRecord:
    run_id: str
    name: str
    params: dict[str, str]
    metrics: dict[str, float]
    start_time: int = 0
    tags: dict[str, str] = field(default_factory=dict)


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

#: Loads a run's per-user table and weights (`per_user.read_per_user`), or None if it has none.
PerUserLoader = Callable[[str], "tuple[pd.DataFrame, dict[str, Any]] | None"]


@dataclass
class Config:
    """One configuration: its label, the params that tell it apart, its runs by seed."""

    label: str
    params: dict[str, str]
    runs: dict[str, RunRecord]  # seed -> the newest run with that seed

    def values(self, metric: str) -> dict[str, float]:
        return {s: r.metrics[metric] for s, r in self.runs.items() if metric in r.metrics}


@dataclass
class Grouping:
    configs: list[Config]
    differing: list[str]
    duplicates_dropped: list[RunRecord]


def _is_seed_key(key: str, seed_keys: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in seed_keys)


def group_runs(runs: list[RunRecord], seed_keys: tuple[str, ...] = SEED_KEYS) -> Grouping:
    """Runs -> configurations (runs equal but for the seed keys), a seed run twice counted once."""
    if not runs:
        raise ValueError("no runs to compare: check the experiment name, filter, tags or run ids")
    keys = sorted({k for r in runs for k in r.params if not _is_seed_key(k, seed_keys)})
    keys.sort(key=lambda k: k != "exp_name")  # the experiment's name first
    differing: list[str] = []
    columns: list[tuple] = []
    for k in keys:
        column = tuple(r.params.get(k) for r in runs)
        if len(set(column)) > 1 and column not in columns:  # a copy of a shown key: once
            differing.append(k)
            columns.append(column)
    groups: dict[tuple, list[RunRecord]] = {}
    for r in runs:
        groups.setdefault(tuple(r.params.get(k) for k in differing), []).append(r)
    # A label names the experiment, then only the keys that tell its configurations apart.
    exp_names = [dict(zip(differing, key)).get("exp_name") for key in groups]
    shown = {
        e: [
            k
            for i, k in enumerate(differing)
            if k != "exp_name"
            and len({key[i] for key, e2 in zip(groups, exp_names) if e2 == e}) > 1
        ]
        for e in exp_names
    }
    configs, dropped = [], []
    for (key, members), exp in zip(groups.items(), exp_names):
        by_seed: dict[str, RunRecord] = {}
        for r in sorted(members, key=lambda r: r.start_time, reverse=True):  # newest first
            seed = r.params.get("seed", r.run_id)
            if seed in by_seed:
                dropped.append(r)
            else:
                by_seed[seed] = r
        params = dict(zip(differing, key))
        label = _label(params, shown[exp], members[0])
        configs.append(Config(label, params, dict(sorted(by_seed.items()))))
    return Grouping(configs, differing, dropped)


def _label(params: dict[str, str | None], keys: list[str], run: RunRecord) -> str:
    """`mmoe`, or `mmoe, model.num_experts=8`: the experiment's name, then the keys that tell
    its configurations apart."""
    parts = [str(run.params.get("exp_name", ""))] if run.params.get("exp_name") else []
    parts += [f"{k}={params[k]}" for k in keys]
    return ", ".join(parts) or "all runs"


#: The order of a split's metrics in the table: ranking quality first (AUC-like, then retrieval),
#: then the rest, the losses last; a name none of these match sorts among the rest, by name.
METRIC_ORDER = ("gauc", "auc", "xgauc", "xauc", "recall*", "ndcg*", "hit_rate*", "mrr*")
SPLIT_ORDER = ("test", "val")


def metric_order(name: str) -> tuple:
    """Sort key: `test/*`, then `val/*`, then the other metrics (`train/samples_per_sec`), then
    `oracle/*` (the data's, not a configuration's); within a split, `METRIC_ORDER`, then the task."""
    split, _, rest = name.partition("/")
    metric, _, task = rest.partition("/")
    if split == "oracle":
        group = len(SPLIT_ORDER) + 1
    else:
        group = SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER)
    rank = next(
        (i for i, p in enumerate(METRIC_ORDER) if fnmatch.fnmatchcase(metric, p)),
        len(METRIC_ORDER) + (1 if metric.startswith("loss") else 0),
    )
    return group, rank, metric, task


def _metric_names(runs: list[RunRecord], patterns: list[str]) -> list[str]:
    names = {m for r in runs for m in r.metrics if any(fnmatch.fnmatchcase(m, p) for p in patterns)}
    return sorted(names, key=metric_order)


def comparison_table(
    runs: list[RunRecord], *, metric_patterns: list[str], seed_keys: tuple[str, ...] = SEED_KEYS
) -> pd.DataFrame:
    """One row per configuration; columns: the configuration's label, its metrics but the
    oracle's (`metric_order`: `test/*`, `val/*`, then the others), runs and seeds, the config keys
    that differ (`exp_name` only where the label does not show it), then the `oracle/*` metrics.

    `table.attrs["constant"]` holds the `oracle/*` cells equal in every configuration (left out
    of the columns), `table.attrs["duplicates"]` the older runs of a seed run twice (left out).
    """
    grouping = group_runs(runs, seed_keys)
    metric_names = _metric_names(runs, metric_patterns)
    headline = [m for m in metric_names if not m.startswith("oracle/")]
    oracle = [m for m in metric_names if m.startswith("oracle/")]
    labelled = all(c.label.split(", ")[0] == c.params.get("exp_name") for c in grouping.configs)
    keys = [k for k in grouping.differing if not (k == "exp_name" and labelled)]
    rows = []
    for c in grouping.configs:
        row: dict[str, object] = {"configuration": c.label}
        for m in headline:
            row[m] = _cell(np.array(list(c.values(m).values()), dtype=float))
        row["runs"] = len(c.runs)
        row["seeds"] = ",".join(c.runs)
        row |= {k: c.params.get(k) for k in keys}
        for m in oracle:
            row[m] = _cell(np.array(list(c.values(m).values()), dtype=float))
        rows.append(row)
    table = pd.DataFrame(
        rows, columns=["configuration", *headline, "runs", "seeds", *keys, *oracle]
    )
    # An oracle metric is the data's: equal in every run (whatever the number of seeds of each
    # configuration), it is stated once instead of repeated in a column.
    constant = {}
    for m in oracle:
        values = {r.metrics[m] for c in grouping.configs for r in c.runs.values() if m in r.metrics}
        if len(grouping.configs) > 1 and len(values) == 1:
            constant[m] = _cell(np.array(list(values), dtype=float))
    table = table.drop(columns=list(constant))
    table.attrs["constant"] = constant
    table.attrs["duplicates"] = [r.run_id for r in grouping.duplicates_dropped]
    return table


def _cell(values: np.ndarray) -> str:
    if len(values) == 0:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{values.mean():.4f} +- {values.std(ddof=1):.4f} ({len(values)})"


def select_baseline(selector: str, configs: list[Config]) -> Config:
    """The one configuration `baseline=` names.

    `selector` is a configuration's label or its `exp_name` (`shared_bottom`), or `key=value`
    (or `key:value`, which Hydra's command line takes unquoted) pairs separated by commas,
    matched against the runs' params (`model.num_experts=8`; a key may be given by its last
    dotted parts, `num_experts:8`).
    """
    by_params = "=" in selector or ":" in selector

    def params_match(c: Config) -> bool:
        params = next(iter(c.runs.values())).params
        for pair in selector.split(","):
            key, _, value = pair.partition("=") if "=" in pair else pair.partition(":")
            key, value = key.strip(), value.strip()
            hits = [k for k in params if k == key or k.endswith("." + key)]
            if not any(params[k] == value for k in hits):
                return False
        return True

    if by_params:
        found = [c for c in configs if params_match(c)]
    else:
        found = [c for c in configs if selector in (c.label, c.params.get("exp_name"))]
        if not found:
            found = [
                c for c in configs if next(iter(c.runs.values())).params.get("exp_name") == selector
            ]
    if len(found) != 1:
        labels = "; ".join(c.label for c in configs)
        raise ValueError(
            f"baseline={selector!r} matches {len(found)} configurations, one expected; "
            f"the configurations are: {labels} (name one by its label or exp_name, or by key:value pairs of its params)"
        )
    return found[0]


def _column(metric: str) -> str:
    """The per-user column a logged metric averages: its name without the `test/` split."""
    return metric[len("test/") :] if metric.startswith("test/") else metric


def _user_difference(
    config: Config,
    baseline: Config,
    metric: str,
    load: PerUserLoader,
    *,
    samples: int,
    seed: int,
) -> tuple[S.Difference | None, list[str]]:
    """The paired bootstrap over users, pooled over the seeds both ran, from their per-user files."""
    column = _column(metric)
    notes: list[str] = []
    pairs = []
    for s in sorted(set(config.runs) & set(baseline.runs)):
        loaded = [load(config.runs[s].run_id), load(baseline.runs[s].run_id)]
        if any(x is None or column not in x[1] for x in loaded):
            continue
        (ta, wa), (tb, wb) = loaded
        joined = (
            ta[[PU.ID]]
            .assign(_a=ta[column], _wa=PU.metric_weights(ta, wa, column))
            .merge(
                tb[[PU.ID]].assign(_b=tb[column], _wb=PU.metric_weights(tb, wb, column)), on=PU.ID
            )
        )
        if len(joined) < max(len(ta), len(tb)):
            notes.append(
                f"{metric}, seed {s}: {len(joined)} users in both runs' per_user.parquet "
                f"({len(ta)} and {len(tb)})"
            )
        pairs.append(joined)
    if not pairs:
        return None, notes
    users = np.unique(np.concatenate([p[PU.ID].to_numpy() for p in pairs]))  # (U,)
    shape = (len(pairs), len(users))
    a, b = np.full(shape, np.nan), np.full(shape, np.nan)
    wa, wb = np.zeros(shape), np.zeros(shape)
    for i, p in enumerate(pairs):
        at = np.searchsorted(users, p[PU.ID].to_numpy())
        a[i, at], b[i, at] = p["_a"], p["_b"]
        wa[i, at], wb[i, at] = p["_wa"], p["_wb"]
    return S.paired_bootstrap(a, b, wa, wb, samples=samples, seed=seed), notes


def comparison_records(
    runs: list[RunRecord],
    *,
    metric_patterns: list[str],
    seed_keys: tuple[str, ...] = SEED_KEYS,
    baseline: str | None = None,
    load_per_user: PerUserLoader | None = None,
    samples: int = S.BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Per configuration and metric: n, mean, std, 95% t interval over seeds; against `baseline`
    (`select_baseline`), one record per test (`seeds`, and `users` where per-user files exist)
    with the difference, its interval, p, Holm's p and `within_noise`. Returns (records, notes)."""
    grouping = group_runs(runs, seed_keys)
    configs = grouping.configs
    metrics = _metric_names(runs, metric_patterns)
    # The oracle is the data's: one equal in every configuration is stated once (in the table),
    # and no oracle metric is tested against the baseline.
    metrics = [
        m
        for m in metrics
        if not (
            m.startswith("oracle/") and len({v for c in configs for v in c.values(m).values()}) == 1
        )
    ]
    base = select_baseline(baseline, configs) if baseline else None
    notes = [
        f"run {r.run_id} ({r.name}) left out: seed {r.params.get('seed')} ran again later"
        for r in grouping.duplicates_dropped
    ]
    records: list[dict[str, Any]] = []
    for m in metrics:
        tests: dict[str, list[dict[str, Any]]] = {"seeds": [], "users": []}
        for c in configs:
            summary = S.t_summary(np.array(list(c.values(m).values()), dtype=float))
            if summary.n == 0:
                continue
            common = {
                "config": c.label,
                "metric": m,
                **asdict(summary),
                "baseline": base.label if base else None,
            }
            if base is None or c is base or m.startswith("oracle/"):
                records.append(common | _no_test(is_baseline=c is base))
                continue
            found = {"seeds": S.seed_difference(c.values(m), base.values(m))}
            if load_per_user is not None and not m.startswith("oracle/"):
                diff, more = _user_difference(c, base, m, load_per_user, samples=samples, seed=seed)
                notes += more
                if diff is not None:
                    found["users"] = diff
            for test, d in found.items():
                record = common | {
                    "test": test,
                    "method": d.method,
                    "diff": d.diff,
                    "diff_ci_low": d.ci_low,
                    "diff_ci_high": d.ci_high,
                    "p_value": d.p_value,
                    "units": d.n,
                    "seed_pairs": d.pairs,
                    "within_noise": S.within_noise(d.ci_low, d.ci_high),
                }
                records.append(record)
                tests[test].append(record)
        for group in tests.values():  # Holm across the configurations, per metric and test
            for record, p in zip(group, S.holm([r["p_value"] for r in group])):
                record["p_holm"] = p
    return records, notes


def _no_test(*, is_baseline: bool) -> dict[str, Any]:
    return {
        "test": None,
        "method": "baseline" if is_baseline else None,
        **dict.fromkeys(("diff", "diff_ci_low", "diff_ci_high", "p_value", "p_holm")),
        "units": None,
        "seed_pairs": None,
        "within_noise": None,
    }


def _num(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.4f}"


def _p(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.3g}"


def _interval(low: Any, high: Any) -> str:
    return "-" if _num(low) == "-" else f"[{_num(low)}, {_num(high)}]"


def _verdict(r: dict[str, Any]) -> str:
    if r["within_noise"] is None:
        return "-"
    return "within noise" if r["within_noise"] else "significant"


RECORD_COLUMNS = (
    "configuration",
    "metric",
    "n",
    "mean",
    "std",
    "95% CI (t, seeds)",
    "test",
    "diff",
    "95% CI of diff",
    "p",
    "p (Holm)",
    "",
)


def _record_row(r: dict[str, Any]) -> list[str]:
    return [
        r["config"],
        r["metric"],
        str(r["n"]),
        _num(r["mean"]),
        _num(r["std"]),
        _interval(r["ci_low"], r["ci_high"]),
        r["method"] or "-",
        _num(r["diff"]),
        _interval(r["diff_ci_low"], r["diff_ci_high"]),
        _p(r["p_value"]),
        _p(r["p_holm"]),
        _verdict(r),
    ]


def write_comparison(
    table: pd.DataFrame,
    out_dir: str | Path,
    *,
    title: str,
    source: str,
    records: list[dict[str, Any]] | None = None,
    notes: list[str] | None = None,
    settings: dict[str, Any] | None = None,
) -> list[Path]:
    """Write `comparison.md`, `comparison.html` (self-contained) and, given the records,
    `comparison.json` under `out_dir`; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header = "| " + " | ".join(map(str, table.columns)) + " |"
    sep = "|" + "---|" * len(table.columns)
    body = ["| " + " | ".join(_md(v) for v in row) + " |" for row in table.itertuples(index=False)]
    constant = table.attrs.get("constant", {})
    constant_lines = [f"- `{m}` is {v} in every configuration" for m, v in constant.items()]
    records = records or []
    baseline = next((r["baseline"] for r in records if r["baseline"]), None)
    explain = [
        "Per configuration and metric: n seeds, mean, sample std and a 95% Student t interval over "
        "seeds. "
        + (
            f"Against the baseline `{baseline}`: the difference (configuration minus baseline), "
            "its 95% interval and two-sided p-value, by two tests: over seeds (paired t where "
            "both ran the same seeds, else Welch), and, for metrics with per-user values, a "
            "paired bootstrap over test users (the same users resampled for both, pooled over "
            "the seed-matched runs). p (Holm): corrected across the configurations compared, "
            "per metric and test. A difference whose interval covers 0 is within noise."
            if baseline
            else "No baseline given (`baseline=`): no differences tested."
        )
    ]
    md = [
        f"# {title}",
        "",
        f"Runs from {source}. Cells: mean +- sample std (number of seeds).",
        "",
        header,
        sep,
        *body,
        "",
        *(constant_lines + [""] if constant_lines else []),
    ]
    if records:
        md += [
            "## Intervals and differences",
            "",
            *explain,
            "",
            "| " + " | ".join(RECORD_COLUMNS) + " |",
            "|" + "---|" * len(RECORD_COLUMNS),
            *["| " + " | ".join(_md(v) for v in _record_row(r)) + " |" for r in records],
            "",
        ]
    if notes:
        md += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    paths = [out / "comparison.md", out / "comparison.html"]
    paths[0].write_text("\n".join(md))
    esc = html.escape
    records_html = ""
    if records:
        records_html = (
            f"<h2>Intervals and differences</h2><p>{inline_html(explain[0])}</p><table><tr>"
            + "".join(f"<th>{esc(c)}</th>" for c in RECORD_COLUMNS)
            + "</tr>"
            + "".join(
                "<tr>" + "".join(f"<td>{esc(v)}</td>" for v in _record_row(r)) + "</tr>"
                for r in records
            )
            + "</table>"
        )
    paths[1].write_text(
        "<!doctype html><meta charset='utf-8'><title>" + esc(title) + "</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4}</style>"
        f"<h1>{esc(title)}</h1><p>Runs from {esc(source)}. Cells: mean +- sample std (number of seeds).</p>"
        + table.to_html(index=False, na_rep="-", escape=True)
        + "".join(f"<p>{inline_html(line[2:])}</p>" for line in constant_lines)
        + records_html
        + (
            "<h2>Notes</h2><ul>" + "".join(f"<li>{inline_html(n)}</li>" for n in notes) + "</ul>"
            if notes
            else ""
        )
    )
    if records or settings is not None:
        paths.append(out / "comparison.json")
        paths[2].write_text(
            json.dumps(
                {
                    "title": title,
                    "source": source,
                    "baseline": baseline,
                    "level": S.LEVEL,
                    **(settings or {}),
                    "records": _finite(records),
                    "constant": constant,
                    "notes": notes or [],
                },
                indent=2,
                default=_json_default,
                allow_nan=False,
            )
        )
    return paths


def _finite(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """NaN (no interval, no test) as null: comparison.json is strict JSON."""
    return [
        {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
        for r in records
    ]


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    return str(x)


def _md(v: object) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return str(v).replace("|", "\\|")
