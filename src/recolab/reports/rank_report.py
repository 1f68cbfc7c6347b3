"""The ranking run's offline report: markdown summary, self-contained HTML with plots, JSON numbers.

Sections: metrics per task (next to the oracle on synthetic data); a reliability diagram and ECE
per binary task (before and after the calibration stage, when there is one); observed vs
predicted rate by display position; the position effect a head learned, next to the true
examination curve when the data knows it; watch time observed (mean and median) vs predicted by
duration decile, with what the prediction serves (`served_value`: a log-scale regression serves a
median-like value, below the mean);
the users left out of GAUC / XGAUC. Beside them, `per_user.parquet` (`recolab.reports.per_user`):
each user's AUC and XAUC, which GAUC and XGAUC average; the report gives those metrics' 95%
intervals over users from it (a percentile bootstrap over users, `bootstrap_samples` resamples,
seed 0).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from recolab import metrics as M  # noqa: E402
from recolab.data.schema import Schema  # noqa: E402
from recolab.metrics.calibration import ECE_BINS  # noqa: E402
from recolab.reports import fmt, fmt_interval, inline_html, report_header, write_json  # noqa: E402
from recolab.reports import per_user as PU  # noqa: E402
from recolab.reports.stats import BOOTSTRAP_SAMPLES  # noqa: E402


def metric_table(
    metrics: dict[str, float],
    schema: Schema,
    intervals: dict[str, tuple[float, float]] | None = None,
) -> list[dict[str, Any]]:
    """Rows `{task, metric, model, oracle}` from flat `split/metric/task` test metrics, with
    `ci` (the 95% interval over users, keyed `metric/task` in `intervals`) where there is one."""
    rows = []
    for task in schema.tasks:
        for key, value in metrics.items():
            parts = key.split("/")
            if (
                len(parts) == 3
                and parts[0] == "test"
                and parts[2] == task.name
                and parts[1] != "loss"
            ):
                oracle = metrics.get(f"oracle/{parts[1]}/{task.name}")
                row = {"task": task.name, "metric": parts[1], "model": value, "oracle": oracle}
                if intervals is not None:
                    row["ci"] = intervals.get(f"{parts[1]}/{task.name}")
                rows.append(row)
    return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
    with_ci = any("ci" in r for r in rows)
    head = "| task | metric | model | oracle |" + (" 95% CI over users |" if with_ci else "")
    lines = [head, "|---|---|---:|---:|" + ("---:|" if with_ci else "")]
    lines += [
        f"| {r['task']} | {r['metric']} | {fmt(r['model'])} | {fmt(r['oracle'])} |"
        + (f" {fmt_interval(r.get('ci'))} |" if with_ci else "")
        for r in rows
    ]
    return "\n".join(lines)


def _grouped_means(
    keys: np.ndarray, *values: np.ndarray
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Distinct keys, the mean of each value array per key, and the count per key (vectorized)."""
    uniq, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    means = [
        np.bincount(inverse, weights=v.astype(np.float64), minlength=len(uniq)) / counts
        for v in values
    ]
    return uniq, means, counts


def served_value(task: Any, head: dict[str, Any] | None = None) -> str:
    """What a regression task's prediction estimates, in words, for the report and its plot.

    Trained with squared error on `log1p(label)` (`transform: log1p`), the model's output is
    E[log1p(y) | x] and the prediction `expm1` of it: for a skewed, log-normal-like label that is
    close to the conditional median (a geometric mean), below the mean. Without the transform,
    squared error serves the conditional mean. A head (D2Q, ...) serves what its summary names.
    """
    if head:
        return f"{head.get('head', 'head')}'s prediction"
    if getattr(task, "transform", "none") == "log1p":
        return "median-like (log-scale regression)"
    return "mean (squared error)"


def calibration_sections(
    schema: Schema, results: dict[str, Any], heads: dict[str, dict[str, Any]] | None = None
) -> tuple[dict[str, Any], dict[str, plt.Figure]]:
    """Numbers and figures: reliability per binary task, rate by position, the position effect a
    head learned, watch time by duration."""
    preds, labels, meta = results["preds"], results["labels"], results["meta"]
    numbers: dict[str, Any] = {}
    figures: dict[str, plt.Figure] = {}
    binary = [t.name for t in schema.tasks if t.kind == "binary"]
    raw_preds = results.get("raw_preds") or {}
    for name in binary:
        y, p = labels[name], preds[name]
        table = M.reliability_table(y, p, num_bins=ECE_BINS)
        entry = {
            "ece": M.ece(y, p, num_bins=ECE_BINS),
            "predicted_observed_ratio": M.predicted_observed_ratio(y, p)
            if y.sum() > 0
            else float("nan"),
            "reliability": {k: np.asarray(v).tolist() for k, v in table.items()},
        }
        curves = [("model", table)]
        if name in raw_preds:  # the calibration stage changed this task's predictions
            raw_table = M.reliability_table(y, raw_preds[name], num_bins=ECE_BINS)
            entry["ece_raw"] = M.ece(y, raw_preds[name], num_bins=ECE_BINS)
            entry["predicted_observed_ratio_raw"] = (
                M.predicted_observed_ratio(y, raw_preds[name]) if y.sum() > 0 else float("nan")
            )
            entry["reliability_raw"] = {k: np.asarray(v).tolist() for k, v in raw_table.items()}
            curves = [("before calibration", raw_table), ("after calibration", table)]
        numbers[f"calibration/{name}"] = entry
        fig, ax = plt.subplots(figsize=(4.2, 4))
        top = max(
            max(float(np.max(t["mean_prob"])), float(np.max(t["observed_rate"]))) for _, t in curves
        )
        top = max(top, 1e-3) * 1.05
        ax.plot([0, top], [0, top], color="#999", lw=1, ls="--", label="perfect")
        for label, t in curves:
            ax.plot(t["mean_prob"], t["observed_rate"], "o-", label=label)
        ece_text = f"ECE {entry['ece']:.4f}" + (
            f" (before {entry['ece_raw']:.4f})" if "ece_raw" in entry else ""
        )
        ax.set(
            xlabel="mean predicted probability", ylabel="observed rate", title=f"{name}: {ece_text}"
        )
        ax.legend(fontsize=8)
        figures[f"reliability_{name}"] = fig
    if "position" in meta and binary:
        pos = meta["position"]
        fig, ax = plt.subplots(figsize=(5, 4))
        by_pos = {}
        for name in binary:
            keys, (obs, pred), counts = _grouped_means(pos, labels[name], preds[name])
            by_pos[name] = {
                "position": keys.tolist(),
                "observed": obs.tolist(),
                "predicted": pred.tolist(),
                "rows": counts.tolist(),
            }
            line = ax.plot(keys, obs, "o-", label=f"{name} observed")[0]
            ax.plot(keys, pred, "s--", color=line.get_color(), label=f"{name} predicted")
        ax.set(
            xlabel="display position", ylabel="rate", title="observed vs predicted rate by position"
        )
        ax.legend(fontsize=8)
        numbers["by_position"] = by_pos
        figures["rate_by_position"] = fig
    head_curves = {t: h for t, h in (heads or {}).items() if "relative_examination" in h}
    if head_curves:
        fig, ax = plt.subplots(figsize=(5, 4))
        learned_by_task = {}
        for task, h in head_curves.items():
            ax.plot(
                h["position"],
                h["relative_examination"],
                "s--",
                label=f"{task}: {h['head']} (learned)",
            )
            learned_by_task[task] = {
                "position": h["position"],
                "learned": h["relative_examination"],
            }
        if "position" in meta and "gt_examination" in meta:
            keys, (truth,), _ = _grouped_means(meta["position"], meta["gt_examination"])
            ax.plot(keys, truth / truth[0], "o-", color="k", label="true examination")
            for entry in learned_by_task.values():
                entry["true"] = [
                    float(truth[keys == p][0] / truth[0]) if (keys == p).any() else None
                    for p in entry["position"]
                ]
        ax.set(xlabel="display position", ylabel="relative to position 1", title="position effect")
        ax.legend(fontsize=8)
        numbers["position_effect"] = learned_by_task
        figures["position_effect"] = fig
    regression = [t.name for t in schema.tasks if t.kind == "regression"]
    if "duration" in meta and regression:
        dur = meta["duration"].astype(np.float64)
        edges = np.unique(np.quantile(dur, np.linspace(0, 1, 11)))
        bucket = np.clip(np.searchsorted(edges, dur, side="right") - 1, 0, len(edges) - 2)
        fig, ax = plt.subplots(figsize=(5.6, 4.4))
        by_dur = {}
        for name in regression:
            keys, (obs, pred, d), counts = _grouped_means(bucket, labels[name], preds[name], dur)
            median = np.array([np.median(labels[name][bucket == k]) for k in keys])
            serves = served_value(schema.task(name), (heads or {}).get(name))
            by_dur[name] = {
                "mean_duration": d.tolist(),
                "observed": obs.tolist(),
                "observed_median": median.tolist(),
                "predicted": pred.tolist(),
                "rows": counts.tolist(),
                "serves": serves,
            }
            line = ax.plot(d, obs, "o-", label=f"{name} observed mean")[0]
            ax.plot(d, median, "^:", color=line.get_color(), label=f"{name} observed median")
            ax.plot(d, pred, "s--", color=line.get_color(), label=f"{name} predicted: {serves}")
        ax.set(
            xscale="log",
            xlabel="duration (decile mean, s)",
            ylabel="watch time per row",
            title="observed mean and median vs prediction\nby duration decile",
        )
        ax.legend(fontsize=7)
        numbers["by_duration"] = by_dur
        figures["by_duration"] = fig
    return numbers, figures


def write_rank_report(
    out_dir: str | Path,
    *,
    title: str,
    schema: Schema,
    metrics: dict[str, float],
    details: dict[str, Any],
    context: dict[str, Any],
    results: dict[str, Any] | None = None,
    heads: dict[str, dict[str, Any]] | None = None,
    calibration: dict[str, Any] | None = None,
    group_key: str = PU.ID,
    bootstrap_samples: int = BOOTSTRAP_SAMPLES,
) -> list[Path]:
    """Write `report.md`, `report.html`, `metrics.json`, `per_user.parquet` and the PNG plots
    under `out_dir`; return their paths.

    `heads` holds each head's `summary()` by task; `calibration` the calibration stage's rates and
    calibrator kinds. Both go into `metrics.json` and the markdown. `details` (the grouped
    metrics' `GroupedMetric`s, by `metric/task`) give the per-user file, grouped by the meta
    column `group_key`, and the intervals over users (`bootstrap_samples` resamples; 0: none).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    users, weights = PU.rank_per_user(details)
    per_user_path = PU.write_per_user(users, weights, out, group_key=group_key)
    intervals = PU.intervals(users, weights, samples=bootstrap_samples)
    rows = metric_table(metrics, schema, intervals if per_user_path else None)
    left_out = {
        k: {
            "groups": d.num_groups,
            "left_out": d.num_groups_left_out,
            "rows_left_out": d.rows_left_out,
        }
        for k, d in details.items()
    }
    numbers, figures = calibration_sections(schema, results, heads) if results else ({}, {})
    pngs = {}
    for name, fig in figures.items():
        pngs[name] = out / f"{name}.png"
        fig.tight_layout()
        fig.savefig(pngs[name], dpi=110)
        plt.close(fig)

    oracle_note = (
        "The oracle scores each row with the true probability (or expectation) the synthetic world drew it "
        "from, position bias included: the best any model can do on this data."
        if schema.oracle
        else ""
    )
    left_lines = [
        f"- `{k}`: {v['left_out']} of {v['groups']} users left out ({v['rows_left_out']} rows): their labels hold one value only"
        for k, v in left_out.items()
    ] or ["- none"]
    calib_lines = [
        f"| {k.split('/')[1]} | {fmt(v.get('ece_raw'))} | {fmt(v['ece'])} "
        f"| {fmt(v.get('predicted_observed_ratio_raw'))} | {fmt(v['predicted_observed_ratio'])} |"
        for k, v in numbers.items()
        if k.startswith("calibration/")
    ]
    stage = calibration or {}
    stage_lines = [
        f"- `{t}`: negatives kept at rate w = {w:g} in training; predictions corrected by q = p / (p + (1 - p) / w)"
        for t, w in (stage.get("rates") or {}).items()
    ]
    stage_lines += [
        f"- `{t}`: {kind} calibrator fitted on the validation predictions of this checkpoint"
        for t, kind in (stage.get("calibrators") or {}).items()
    ]
    head_lines = [f"- `{t}`: {h.get('head', '?')}" for t, h in (heads or {}).items()]
    serve_lines = [
        f"- `{t}`: the prediction is {d['serves']}"
        + (
            ": trained with squared error on log1p of the label, the model serves expm1 of the "
            "conditional mean of log1p, close to the conditional median and below the mean for a "
            "skewed label (the plot shows the observed mean and median per duration decile); "
            "train with `transform: none` to serve the mean."
            if d["serves"].startswith("median-like")
            else "."
        )
        for t, d in numbers.get("by_duration", {}).items()
    ]
    md = [
        *report_header(title, context),
        oracle_note,
        "",
        to_markdown(rows),
        "",
        *([_interval_note(group_key, bootstrap_samples), ""] if per_user_path else []),
        *(["## Heads", "", *head_lines, ""] if head_lines else []),
        *(
            [
                "## Calibration",
                "",
                *stage_lines,
                *([""] if stage_lines else []),
                f"ECE over {ECE_BINS} equal-mass bins; `before` is the model's own prediction, `-` where no calibration stage applies.",
                "",
                "| task | ECE before | ECE | predicted / observed before | predicted / observed |",
                "|---|---:|---:|---:|---:|",
                *calib_lines,
                "",
            ]
            if calib_lines
            else []
        ),
        *(["## What the regression tasks serve", "", *serve_lines, ""] if serve_lines else []),
        "## Users left out of grouped metrics",
        "",
        *left_lines,
        "",
        *[f"![{name}]({p.name})" for name, p in pngs.items()],
        "",
    ]
    md_path, html_path, json_path = out / "report.md", out / "report.html", out / "metrics.json"
    md_path.write_text("\n".join(md))
    write_json(
        json_path,
        {
            "metrics": metrics,
            "left_out": left_out,
            "context": context,
            "heads": heads or {},
            "calibration_stage": calibration or {},
            "intervals_over_users": {
                k: {
                    "ci_low": lo,
                    "ci_high": hi,
                    "level": 0.95,
                    "bootstrap_samples": bootstrap_samples,
                }
                for k, (lo, hi) in intervals.items()
            },
            **numbers,
        },
    )
    note = _interval_note(group_key, bootstrap_samples) if per_user_path else ""
    html_path.write_text(
        _html(title, context, rows, oracle_note, calib_lines, left_lines, pngs, note, serve_lines)
    )
    extra = [per_user_path] if per_user_path else []
    return [md_path, html_path, json_path, *extra, *pngs.values()]


def _interval_note(group_key: str, samples: int) -> str:
    return (
        f"95% CI over users: percentile bootstrap over the `{group_key}` groups ({samples} "
        "resamples, seed 0) of the weighted mean each grouped metric is; the per-user values are in "
        "`per_user.parquet`."
    )


def _html(
    title, context, rows, oracle_note, calib_lines, left_lines, pngs, note="", serve_lines=()
) -> str:
    esc = html.escape
    with_ci = any("ci" in r for r in rows)
    table = "".join(
        f"<tr><td>{esc(r['task'])}</td><td>{esc(r['metric'])}</td><td>{fmt(r['model'])}</td><td>{fmt(r['oracle'])}</td>"
        + (f"<td>{fmt_interval(r.get('ci'))}</td>" if with_ci else "")
        + "</tr>"
        for r in rows
    )
    calib = "".join(
        "<tr>" + "".join(f"<td>{esc(c.strip())}</td>" for c in line.strip("|").split("|")) + "</tr>"
        for line in calib_lines
    )
    images = "".join(
        f"<figure><img alt='{esc(name)}' src='data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}'></figure>"
        for name, p in pngs.items()
    )
    return (
        "<!doctype html><meta charset='utf-8'><title>" + esc(title) + "</title>"
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 10px}td:nth-child(n+3){text-align:right}th{background:#f4f4f4}"
        "figure{display:inline-block;margin:0 1em 1em 0}</style>"
        f"<h1>{esc(title)}</h1><ul>"
        + "".join(f"<li>{esc(str(k))}: <code>{esc(str(v))}</code></li>" for k, v in context.items())
        + "</ul>"
        f"<h2>Test metrics</h2><p>{esc(oracle_note)}</p>"
        "<table><tr><th>task</th><th>metric</th><th>model</th><th>oracle</th>"
        + ("<th>95% CI over users</th>" if with_ci else "")
        + f"</tr>{table}</table>"
        + (f"<p>{inline_html(note)}</p>" if note else "")
        + (
            "<h2>Calibration</h2><table><tr><th>task</th><th>ECE before</th><th>ECE</th>"
            f"<th>predicted / observed before</th><th>predicted / observed</th></tr>{calib}</table>"
            if calib
            else ""
        )
        + (
            "<h2>What the regression tasks serve</h2><ul>"
            + "".join(f"<li>{inline_html(line[2:])}</li>" for line in serve_lines)
            + "</ul>"
            if serve_lines
            else ""
        )
        + "<h2>Users left out of grouped metrics</h2><ul>"
        + "".join(f"<li>{inline_html(line[2:])}</li>" for line in left_lines)
        + "</ul>"
        + f"<h2>Plots</h2>{images}"
    )
