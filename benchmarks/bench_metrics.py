"""Benchmark recolab's exact rank metrics against one np.argsort and the usual alternatives.

Measures, on synthetic data of `--rows` rows in `--groups` groups:

- one `np.argsort` of the float64 predictions (the baseline every ratio is taken against);
- exact `xauc`, `gauc`, `xgauc` (and `auc`), as seconds and as multiples of that argsort;
- GAUC by a per-group loop of scikit-learn's `roc_auc_score` (after one stable sort by group),
  timed on a subset of groups and extrapolated linearly in the number of groups when the whole
  loop would exceed `--loop-budget` seconds;
- XAUC by in-batch pairs (the torchrec approach: all pairs inside each batch of 4,096 rows,
  vectorised with numpy broadcasting), timed on `--batches` batches and extrapolated to all;
- the absolute error against exact XAUC of the sampled-pair variant (1e5 and 1e6 pairs) and of
  the in-batch estimate;
- exact `xauc` on float32 and on float64 targets and predictions (models predict float32), at
  `--dtype-rows` rows (1M and 10M), each against one `np.argsort` of the same predictions.

Writes a markdown report with the machine and the exact command line to `--out`.

    python benchmarks/bench_metrics.py --rows 10000000 --groups 100000 \
        --out experiments/bench/metrics.md
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from recolab.metrics import auc, gauc_details, xauc, xgauc_details

log = logging.getLogger("bench_metrics")


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    """Best wall time and best CPU time (this process) of `repeats` calls, and the last result."""
    wall = cpu = float("inf")
    out = None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = fn()
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return wall, cpu, out


def make_data(rows: int, groups: int, seed: int) -> dict[str, np.ndarray]:
    """Clicks and watch times driven by one latent score, users drawn uniformly."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=rows)
    return {
        "groups": rng.integers(0, groups, rows),
        "labels": (rng.random(rows) < 1 / (1 + np.exp(1.0 - z))).astype(np.int8),
        "scores": z + rng.normal(size=rows),
        "targets": rng.exponential(scale=np.exp(z / 2)),
        "preds": z / 2 + rng.normal(scale=0.8, size=rows),
    }


def sklearn_gauc_loop(
    labels: np.ndarray, scores: np.ndarray, groups: np.ndarray, budget: float
) -> dict[str, float]:
    """GAUC (impressions) by a loop of roc_auc_score over groups, within a time budget."""
    start = time.perf_counter()
    order = np.argsort(groups, kind="stable")
    bounds = np.flatnonzero(np.diff(groups[order])) + 1
    parts = np.split(order, bounds)
    setup = time.perf_counter() - start
    num = den = 0.0
    done = 0
    start = time.perf_counter()
    for idx in parts:
        y = labels[idx]
        if 0 < y.sum() < len(y):
            num += len(idx) * roc_auc_score(y, scores[idx])
            den += len(idx)
        done += 1
        if time.perf_counter() - start > budget:
            break
    loop = time.perf_counter() - start
    rows_done = int(sum(len(p) for p in parts[:done]))
    return {
        "setup_s": setup,
        "loop_s": loop,
        "groups_done": done,
        "groups_total": len(parts),
        "rows_done": rows_done,
        "total_s": setup + loop * len(parts) / done,
        "value": num / den if den else float("nan"),
        "subset_rows": np.concatenate(parts[:done]),
    }


def inbatch_xauc(
    targets: np.ndarray, preds: np.ndarray, batch: int, num_batches: int
) -> dict[str, float]:
    """XAUC over the pairs inside each batch (pooled over batches), on the first batches."""
    agree = tied = pairs = 0
    start = time.perf_counter()
    for b in range(num_batches):
        t = targets[b * batch : (b + 1) * batch]
        p = preds[b * batch : (b + 1) * batch]
        before = t[:, None] < t[None, :]  # (b, b) ordered pairs with t_i < t_j
        agree += int(np.count_nonzero(before & (p[:, None] < p[None, :])))
        tied += int(np.count_nonzero(before & (p[:, None] == p[None, :])))
        pairs += int(np.count_nonzero(before))
    elapsed = time.perf_counter() - start
    total_batches = -(-targets.shape[0] // batch)
    return {
        "measured_s": elapsed,
        "batches_done": num_batches,
        "batches_total": total_batches,
        "total_s": elapsed * total_batches / num_batches,
        "value": (agree + 0.5 * tied) / pairs,
    }


def xauc_by_dtype(
    targets: np.ndarray, preds: np.ndarray, sizes: list[int], repeats: int
) -> list[dict[str, Any]]:
    """Exact `xauc` against one `np.argsort` of the same predictions, per dtype and size.

    Both inputs are cast to the dtype (float32 predictions of 10M rows hold many ties, which
    float64 ones do not). Each size and dtype times the argsort and `xauc` one after the other,
    `repeats` times, and keeps the best of each: on a shared machine the minimum is the time
    least disturbed by the neighbours.
    """
    out = []
    for n in sizes:
        for dtype in (np.float32, np.float64):
            t, p = targets[:n].astype(dtype), preds[:n].astype(dtype)
            base = base_cpu = sec = cpu = float("inf")
            for _ in range(repeats):  # interleaved: both see the same neighbours
                b, b_cpu, _ = timed(lambda p=p: np.argsort(p), 1)
                x, x_cpu, value = timed(lambda t=t, p=p: xauc(t, p), 1)
                base, base_cpu = min(base, b), min(base_cpu, b_cpu)
                sec, cpu = min(sec, x), min(cpu, x_cpu)
            tied = n - np.unique(p).shape[0]
            out.append(
                {
                    "rows": n,
                    "dtype": np.dtype(dtype).name,
                    "tied": tied,
                    "argsort_s": base,
                    "xauc_s": sec,
                    "ratio": sec / base,
                    "ratio_cpu": cpu / base_cpu,
                    "value": value,
                }
            )
            log.info("  %s, %d rows: %.2fx argsort", np.dtype(dtype).name, n, sec / base)
    return out


def load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def machine() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "load average (1, 5, 15 min) at start": load_average(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--groups", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=Path("experiments/bench/metrics.md"))
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument("--batch", type=int, default=4096, help="in-batch XAUC batch size")
    parser.add_argument("--batches", type=int, default=200, help="in-batch batches to time")
    parser.add_argument("--loop-budget", type=float, default=20.0, help="seconds of sklearn loop")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dtype-rows",
        default="1000000,10000000",
        help="comma-separated sizes of the float32/float64 XAUC table (at most --rows)",
    )
    parser.add_argument(
        "--dtype-repeats", type=int, default=5, help="best of this many, float32/float64 table"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    info = machine()
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))

    log.info("generating %d rows in %d groups", args.rows, args.groups)
    d = make_data(args.rows, args.groups, args.seed)
    y, s, g, t, p = d["labels"], d["scores"], d["groups"], d["targets"], d["preds"]

    times: dict[str, float] = {}
    cpu_times: dict[str, float] = {}
    values: dict[str, Any] = {}
    for name, fn in [
        ("np.argsort (float64, baseline)", lambda: np.argsort(p)),
        ("xauc (exact)", lambda: xauc(t, p)),
        ("gauc (impressions)", lambda: gauc_details(y, s, g)),
        ("xgauc (exact)", lambda: xgauc_details(t, p, g)),
        ("auc", lambda: auc(y, s)),
    ]:
        log.info("timing %s", name)
        times[name], cpu_times[name], values[name] = timed(fn, args.repeats)
        log.info("  %.3f s wall, %.3f s CPU", times[name], cpu_times[name])
    base = times["np.argsort (float64, baseline)"]
    base_cpu = cpu_times["np.argsort (float64, baseline)"]
    exact_xauc = values["xauc (exact)"]
    gd = values["gauc (impressions)"]

    log.info("timing the sklearn GAUC loop (budget %.0f s)", args.loop_budget)
    loop = sklearn_gauc_loop(y, s, g, args.loop_budget)
    rows = loop.pop("subset_rows")
    subset_value = gauc_details(y[rows], s[rows], g[rows]).value

    log.info("timing sampled XAUC")
    sampled = {}
    for pairs in (100_000, 1_000_000):
        sec, _, val = timed(lambda pairs=pairs: xauc(t, p, num_pairs=pairs, seed=args.seed), 1)
        sampled[pairs] = (sec, val)
    log.info("timing xauc on float32 and float64")
    sizes = [min(int(x), args.rows) for x in args.dtype_rows.split(",") if x.strip()]
    by_dtype = xauc_by_dtype(t, p, sorted(set(sizes)), args.dtype_repeats)
    num_batches = min(args.batches, -(-args.rows // args.batch))
    log.info("timing in-batch XAUC on %d batches of %d", num_batches, args.batch)
    inb = inbatch_xauc(t, p, args.batch, num_batches)

    n = args.rows
    lines = [
        "# Metric benchmark",
        "",
        f"Command: `{command}`",
        "",
        "| machine | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in info.items()],
        "",
        f"Data: {n:,} rows, {args.groups:,} groups (uniform), float64 scores, predictions and "
        f"continuous targets, 0/1 labels; seed {args.seed}. Times are the best of "
        f"{args.repeats} runs, in seconds; the ratio is to one `np.argsort` of {n:,} float64s. "
        "Wall and CPU time (of this process) are both shown: on a shared machine the CPU-time "
        "ratio is the steadier one.",
        "",
        "## Exact metrics against one argsort",
        "",
        "| what | wall s | x argsort (wall) | CPU s | x argsort (CPU) | value |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, sec in times.items():
        v, cpu = values[name], cpu_times[name]
        shown = "" if name.startswith("np.") else f"{getattr(v, 'value', v):.6f}"
        lines.append(
            f"| {name} | {sec:.3f} | {sec / base:.2f} | {cpu:.3f} | {cpu / base_cpu:.2f} "
            f"| {shown} |"
        )
    xd = values["xgauc (exact)"]
    lines += [
        "",
        f"GAUC groups used {gd.num_groups_used:,} of {gd.num_groups:,} "
        f"({gd.rows_left_out:,} rows left out); XGAUC groups used {xd.num_groups_used:,} of "
        f"{xd.num_groups:,}.",
        "",
        "## GAUC: recolab against a per-group loop of sklearn's roc_auc_score",
        "",
        "| what | seconds |",
        "|---|---:|",
        f"| recolab `gauc` (all {gd.num_groups:,} groups) | {times['gauc (impressions)']:.3f} |",
        f"| sklearn loop: one stable argsort by group + split | {loop['setup_s']:.3f} |",
        f"| sklearn loop: roc_auc_score on {loop['groups_done']:,} of {loop['groups_total']:,} "
        f"groups ({loop['rows_done']:,} rows), measured | {loop['loop_s']:.3f} |",
        f"| sklearn loop, all groups (loop part extrapolated linearly in groups"
        f"{'' if loop['groups_done'] < loop['groups_total'] else ', here measured in full'}) "
        f"| {loop['total_s']:.1f} |",
        "",
        f"recolab is {loop['total_s'] / times['gauc (impressions)']:.0f}x faster. On the measured "
        f"subset of groups the two GAUC values differ by "
        f"{abs(loop['value'] - subset_value):.1e} (sklearn {loop['value']:.6f}, "
        f"recolab {subset_value:.6f}).",
        "",
        "## XAUC: exact against sampled pairs and in-batch pairs",
        "",
        "| what | seconds | value | abs. error vs exact |",
        "|---|---:|---:|---:|",
        f"| exact `xauc` (all {n * (n - 1) // 2:.3e} pairs) | {times['xauc (exact)']:.3f} "
        f"| {exact_xauc:.6f} | 0 |",
    ]
    for pairs, (sec, val) in sampled.items():
        lines.append(
            f"| sampled `xauc(num_pairs={pairs:.0e})` | {sec:.3f} | {val:.6f} "
            f"| {abs(val - exact_xauc):.1e} |"
        )
    lines += [
        f"| in-batch pairs, batches of {args.batch:,}: {inb['batches_done']} of "
        f"{inb['batches_total']} batches measured, time extrapolated to all "
        f"| {inb['total_s']:.1f} | {inb['value']:.6f} | {abs(inb['value'] - exact_xauc):.1e} |",
        "",
        f"In-batch time measured: {inb['measured_s']:.2f} s for {inb['batches_done']} batches; "
        "its value pools the pairs of the measured batches (rows are in random order, so each "
        "batch is a random sample of rows).",
        "",
        "## XAUC on float32 and float64 predictions",
        "",
        "Targets and predictions cast to the dtype (models predict float32); each ratio is to one "
        "`np.argsort` of the same predictions, both the best of "
        f"{args.dtype_repeats} runs, the two timed alternately. Float32 predictions of many rows "
        "tie (tied preds: rows less distinct values); XAUC re-sorts only the tied runs.",
        "",
        "| rows | dtype | tied preds | np.argsort s | xauc s | x argsort (wall) "
        "| x argsort (CPU) | value |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
        *[
            f"| {r['rows']:,} | {r['dtype']} | {r['tied']:,} | {r['argsort_s']:.3f} "
            f"| {r['xauc_s']:.3f} | {r['ratio']:.2f} | {r['ratio_cpu']:.2f} | {r['value']:.6f} |"
            for r in by_dtype
        ],
        "",
        f"Load average (1, 5, 15 min) at the end: {load_average()}.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
