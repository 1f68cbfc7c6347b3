"""The retrieval run's offline report: `report.md` (the table and how it was measured) and `metrics.json`.

The table puts the model next to the most-popular and random baselines, scored on the same
users with the same exclusions (`recolab.pipelines.recall`). Beside them, `per_user.parquet`
(`recolab.reports.per_user`): each user's recall@K, NDCG@K, hit and reciprocal rank, which the
table's metrics average; the report gives each of them a 95% interval over users from it (a
percentile bootstrap over users, `bootstrap_samples` resamples, seed 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recolab.metrics.registry import METRICS, POPULARITY_K, popularity_k, retrieval_names
from recolab.reports import fmt, fmt_interval, report_header, write_json
from recolab.reports.stats import BOOTSTRAP_SAMPLES

COLUMNS = (("model", "test"), ("most popular", "baseline_popular"), ("random", "baseline_random"))


def display(name: str) -> str:
    """`recall_at_50` -> `recall@50`, for tables read by people."""
    return name.replace("_at_", "@")


def _metric_names(metrics: list[str], ks: list[int]) -> list[str]:
    """The table's rows: the run's declared metric set, each over the cut-offs."""
    return [n for m in metrics for n in retrieval_names([METRICS[m]], ks, max(ks))]


def metric_rows(metrics: dict[str, float], summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows `{metric, model, most popular, random}` from the run's test metrics and the test summary.

    `metrics` holds the run's `test/...` values (what `recolab.train` tracks); the baselines come
    from `summary["values"]` (the test epoch's logged values), which also fills in any model value
    missing from `metrics`. The rows are the run's declared metric set (`summary["metrics"]`,
    `module.metrics`).
    """
    values = {**summary.get("values", {}), **metrics}
    ks = summary.get("ks") or sorted(
        {int(k.rsplit("_", 1)[1]) for k in values if k.startswith("test/recall_at_")}
    )
    declared = summary.get("metrics") or [m.name for m in METRICS.values() if m.kind == "retrieval"]
    rows = []
    for name in _metric_names(declared, ks):
        row: dict[str, Any] = {"metric": display(name)}
        for column, prefix in COLUMNS:
            row[column] = values.get(f"{prefix}/{name}")
        if any(row[c] is not None for c, _ in COLUMNS):
            rows.append(row)
    return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
    with_ci = any("ci" in r for r in rows)
    head = "| metric | model | most popular | random |" + (
        " model: 95% CI over users |" if with_ci else ""
    )
    lines = [head, "|---|---:|---:|---:|" + ("---:|" if with_ci else "")]
    lines += [
        f"| {r['metric']} | "
        + " | ".join(fmt(r[c]) for c, _ in COLUMNS)
        + " |"
        + (f" {fmt_interval(r.get('ci'))} |" if with_ci else "")
        for r in rows
    ]
    return "\n".join(lines)


def write_recall_report(
    out_dir: str | Path,
    *,
    title: str,
    metrics: dict[str, float],
    summary: dict[str, Any],
    context: dict[str, Any],
    per_user: tuple[Any, dict[str, Any]] | None = None,
    bootstrap_samples: int = BOOTSTRAP_SAMPLES,
) -> list[Path]:
    """Write `report.md`, `metrics.json` and `per_user.parquet` under `out_dir`; return their paths.

    `per_user` is the test's `(table, weights)` (`per_user.recall_per_user`); it gives the file
    and the intervals over users (`bootstrap_samples` resamples; 0: none).
    """
    from recolab.reports import per_user as PU

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = metric_rows(metrics, summary)
    per_user_path, intervals = None, {}
    if per_user is not None:
        per_user_path = PU.write_per_user(*per_user, out)
        intervals = PU.intervals(*per_user, samples=bootstrap_samples)
        for row in rows:
            row["ci"] = intervals.get(row["metric"].replace("@", "_at_"))
    data = summary.get("data", {})
    values = summary.get("values", {})
    index_recall = {k: v for k, v in {**values, **metrics}.items() if "index_recall" in k}
    pop_k = popularity_k(max(summary.get("ks") or [POPULARITY_K]))
    protocol = [
        f"- users evaluated: {summary.get('users', '?')} (one held-out item each: the user's last interaction)",
        f"- corpus: all {data.get('items', '?')} training items, ranked in full (no sampled negatives); each user's "
        "earlier items (training items, and the validation item at test) are excluded",
        f"- test targets that are not training items (out of vocabulary, always misses): "
        f"{data.get('test_targets_out_of_vocabulary', '?')}",
        f"- users left out by the minimum-interactions filter (< {data.get('min_interactions', '?')}): "
        f"{data.get('users_filtered', '?')} of {data.get('users_read', '?')}",
        f"- retrieval: {summary.get('index', '?')} top-k"
        + (
            f" ({summary.get('num_interests')} interests, each retrieving its own top-k, merged by best score)"
            if summary.get("num_interests", 1) > 1
            else ""
        ),
        "- MRR counts the first hit within the top "
        f"{max(summary.get('ks') or [0])}; retrieved_popularity@{pop_k} is the mean log(1 + training count) of the top {pop_k}",
    ]
    sampler = summary.get("sampler", {})
    md = [
        *report_header(title, context),
        "The model next to the most-popular baseline (the most frequent training items the user has not seen) and "
        "a random baseline, on the same users with the same exclusions.",
        "",
        to_markdown(rows),
        "",
        *(
            [
                f"95% CI over users: percentile bootstrap over the test users ({bootstrap_samples} "
                "resamples, seed 0) of the model's per-user values (`per_user.parquet`), whose mean "
                "each metric is.",
                "",
            ]
            if intervals
            else []
        ),
        "## How it was measured",
        "",
        *protocol,
        "",
        *(
            [
                "## Index",
                "",
                f"faiss `{summary.get('index')}` index, options {summary.get('index_options')}:",
                "",
                *[
                    f"- `{k}` (share of the exact top-k that the index returned): {fmt(v)}"
                    for k, v in index_recall.items()
                ],
                "",
            ]
            if index_recall
            else []
        ),
        "## Training softmax",
        "",
        *[f"- {k}: `{v}`" for k, v in sampler.items()],
        "",
        "## Data",
        "",
        *[f"- {k}: `{v}`" for k, v in data.items()],
        "",
    ]
    md_path, json_path = out / "report.md", out / "metrics.json"
    md_path.write_text("\n".join(md))
    write_json(
        json_path,
        {
            "metrics": metrics,
            "table": rows,
            "summary": summary,
            "context": context,
            "bootstrap_samples": bootstrap_samples,
        },
    )
    return [md_path, json_path, *([per_user_path] if per_user_path else [])]
