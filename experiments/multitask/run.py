"""The multi-task tables of issue 5, from one command (see README.md beside this file).

    python experiments/multitask/run.py                # train everything, then write results.md
    python experiments/multitask/run.py --tables-only  # rebuild results.md from the MLflow runs

1. Census-Income: `python -m recolab train -m +exp=census_single_task,...,census_ple
   seed=1,2,3,4,5 experiment_name=multitask_census`, AUC per task, mean +- std over the seeds.
2. The MMoE paper's synthetic experiment (Ma et al., KDD 2018, Sec. 4.2), on its own data
   (`data=mmoe_synthetic`, `recolab.data.mmoe_synthetic`): `+exp=correlation_shared_bottom` and
   `+exp=correlation_mmoe` at several `data.correlation`, three seeds each, into
   `experiment_name=multitask_mmoe_synthetic`; the gap shared-bottom MSE - MMoE MSE is the mean
   +- std over seeds of the paired difference (same seed, same world).

Runs go to the project's MLflow store (`mlflow.db`, or `MLFLOW_TRACKING_URI`), named
`<exp>-seed<seed>-mt<batch>` after this invocation's batch; the tables read back one batch's
complete runs. `--batch ID` resumes a batch: only its missing (experiment, setting, seed) runs
are trained. Lanes run side by side: the census sweep, and each synthetic model's sweep. Torch runs on one thread per process unless OMP_NUM_THREADS says otherwise: on a small shared
machine, two threads that wait for each other are much slower than one.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from recolab.data.mmoe_synthetic import make_tables
from recolab.tracking import tracking_uri

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "results.md"

CENSUS_EXPERIMENT = "multitask_census"
CENSUS_EXPS = [
    "census_single_task",
    "census_shared_bottom",
    "census_mmoe",
    "census_cgc",
    "census_ple",
]
CENSUS_SEEDS = [1, 2, 3, 4, 5]
CENSUS_TASKS = {"income": "income > 50K", "never_married": "never married"}

SYNTHETIC_EXPERIMENT = "multitask_mmoe_synthetic"
#: The paper's Figure 4 trains at 1.0, 0.9 and 0.5; 0.99 and 0.95 show where the labels start to
#: part (the sine terms decorrelate them quickly), 0.0 adds unrelated tasks.
CORRELATIONS = [1.0, 0.99, 0.95, 0.9, 0.5, 0.0]
SYNTHETIC_SEEDS = [1, 2, 3]
#: Experiment configs (configs/exp/): both on `data=mmoe_synthetic`, about 15k weights each.
SYNTHETIC_MODELS = {"shared_bottom": "correlation_shared_bottom", "mmoe": "correlation_mmoe"}
SYNTHETIC_TASKS = ("y1", "y2")
QUIET = ["callbacks.progress_bar.refresh_rate=0"]


def start(args: list[str], log_name: str) -> tuple[subprocess.Popen, Path]:
    """Start one `python -m recolab train -m ...` sweep; its output goes to outputs/multitask/<log_name>.log."""
    # A literal sweep folder: the project's default, ${paths.log_dir}/multiruns/..., interpolates
    # ${hydra:runtime.cwd}, which Hydra cannot resolve before a multirun's jobs start.
    sweep_dir = f"hydra.sweep.dir=outputs/multiruns/multitask-{log_name}-{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    cmd = [sys.executable, "-m", "recolab", "train", "-m", *args, *QUIET, sweep_dir]
    log_path = ROOT / "outputs" / "multitask" / f"{log_name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    print("$", " ".join(cmd), f"> {log_path.relative_to(ROOT)}", flush=True)
    with open(log_path, "w") as log:
        return subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        ), log_path


def batch_run_name(batch: str) -> str:
    """The override naming a run after its batch (the project's default name, plus `-mt<batch>`)."""
    return "run_name=${exp_name}-seed${seed}-mt" + batch


def group_seeds(missing: dict[str, list[int]]) -> list[tuple[list[str], list[int]]]:
    """{key: missing seeds} -> [(keys, seeds)], keys with the same missing seeds in one sweep."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for key, seeds in missing.items():
        if seeds:
            groups.setdefault(tuple(seeds), []).append(key)
    return [(keys, list(seeds)) for seeds, keys in groups.items()]


def census_sweeps(seeds: list[int], batch: str, done: set[tuple]) -> list[tuple[list[str], str]]:
    missing = {exp: [s for s in seeds if (exp, str(s)) not in done] for exp in CENSUS_EXPS}
    return [
        (
            [
                f"+exp={','.join(exps)}",
                f"seed={','.join(map(str, todo))}",
                f"experiment_name={CENSUS_EXPERIMENT}",
                batch_run_name(batch),
            ],
            f"census-{n}",
        )
        for n, (exps, todo) in enumerate(group_seeds(missing))
    ]


def synthetic_sweeps(
    seeds: list[int], correlations: list[float], batch: str, done: set[tuple]
) -> list[tuple[list[str], str]]:
    """One sweep per model over the correlations and seeds not yet done."""
    sweeps = []
    for exp in SYNTHETIC_MODELS.values():
        missing = {
            f"{c:g}": [s for s in seeds if (exp, f"{c:g}", str(s)) not in done]
            for c in correlations
        }
        for n, (corrs, todo) in enumerate(group_seeds(missing)):
            args = [
                f"+exp={exp}",
                f"data.correlation={','.join(corrs)}",
                f"seed={','.join(map(str, todo))}",
                f"experiment_name={SYNTHETIC_EXPERIMENT}",
                batch_run_name(batch),
            ]
            sweeps.append((args, f"synthetic-{exp}-{n}"))
    return sweeps


def complete_runs(experiment: str, batch: str | None = None) -> pd.DataFrame:
    """Complete training runs of `experiment` (of one batch, if given): params, metrics and the
    `exp` tag as columns; empty if there are none."""
    client = MlflowClient(tracking_uri=tracking_uri(str(ROOT)))
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return pd.DataFrame(columns=["exp", "seed", "start", "batch"])
    query = "attributes.status = 'FINISHED' and tags.`recolab.complete` = 'true' and tags.`recolab.kind` = 'train'"
    query += f" and attributes.run_name LIKE '%-mt{batch if batch is not None else ''}%'"
    runs = client.search_runs([found.experiment_id], query, max_results=5000)
    rows = [
        {
            "exp": r.data.tags.get("recolab.exp"),
            "start": r.info.start_time,
            "batch": r.info.run_name.rsplit("-mt", 1)[-1],
            **r.data.params,
            **r.data.metrics,
        }
        for r in runs
    ]
    df = pd.DataFrame(rows, columns=None if rows else ["exp", "seed", "start", "batch"])
    return df if batch is None else df[df["batch"] == batch]


def latest_batch() -> str:
    """The batch of the latest complete multi-task run."""
    runs = pd.concat([complete_runs(e) for e in (CENSUS_EXPERIMENT, SYNTHETIC_EXPERIMENT)])
    if runs.empty:
        sys.exit(
            f"no multi-task runs at {tracking_uri(str(ROOT))}: run without --tables-only first"
        )
    return str(runs.sort_values("start")["batch"].iloc[-1])


def done_runs(batch: str) -> tuple[set[tuple], set[tuple]]:
    """The batch's complete (exp, seed) census runs and (model, correlation, seed) synthetic runs."""
    census = complete_runs(CENSUS_EXPERIMENT, batch)
    synthetic = complete_runs(SYNTHETIC_EXPERIMENT, batch)
    corr = [f"{float(c):g}" for c in synthetic.get("data.correlation", [])]
    return set(zip(census["exp"], census["seed"])), set(
        zip(synthetic["exp"], corr, synthetic["seed"])
    )


def one_per_seed(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The latest run per (exp, *keys, seed): a run retried within a batch counts once."""
    return df.sort_values("start").drop_duplicates(["exp", *keys, "seed"], keep="last")


def cell(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "-"
    if len(values) == 1:
        return f"{values.iloc[0]:.4f} (1)"
    return f"{values.mean():.4f} +- {values.std(ddof=1):.4f} ({len(values)})"


def census_table(seeds: list[int], batch: str) -> str:
    df = one_per_seed(complete_runs(CENSUS_EXPERIMENT, batch), [])
    df = df[df["exp"].isin(CENSUS_EXPS) & df["seed"].isin([str(s) for s in seeds])]
    head = [
        "model",
        *(f"AUC {name}" for name in CENSUS_TASKS.values()),
        *(f"logloss {name}" for name in CENSUS_TASKS.values()),
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for exp in CENSUS_EXPS:
        runs = df[df["exp"] == exp]
        cells = [
            cell(metric(runs, f"test/{m}/{t}")) for m in ("auc", "logloss") for t in CENSUS_TASKS
        ]
        lines.append("| " + " | ".join([exp.removeprefix("census_"), *cells]) + " |")
    return "\n".join(lines)


def metric(frame: pd.DataFrame, name: str) -> pd.Series:
    return frame[name].astype(float) if name in frame else pd.Series(dtype=float)


def gap(a: pd.DataFrame, b: pd.DataFrame, name: str) -> str:
    """Mean +- std over seeds of a - b, paired on the seed (both frames indexed by seed)."""
    paired = (metric(a, name) - metric(b, name)).dropna()
    if paired.empty:
        return "-"
    sd = paired.std(ddof=1) if len(paired) > 1 else math.nan
    return f"{paired.mean():+.4f} +- {sd:.4f} ({len(paired)})"


def label_correlation(correlation: float) -> float:
    """Pearson's correlation of the labels y1 and y2 over the whole world (all splits)."""
    cfg = OmegaConf.load(ROOT / "configs" / "data" / "mmoe_synthetic.yaml")
    world = {
        k: cfg[k]
        for k in ("num_rows", "dim", "scale", "num_sines", "noise_std", "world_seed", "row_seed")
    }
    columns = make_tables(**world, correlation=correlation)
    return float(np.corrcoef(columns["y1"], columns["y2"])[0, 1])


def mean_mse(frame: pd.DataFrame, prefix: str = "test") -> pd.Series:
    """Per run: the MSE averaged over the two tasks (the paper's loss), from the RMSEs."""
    return sum(metric(frame, f"{prefix}/rmse/{t}") ** 2 for t in SYNTHETIC_TASKS) / len(
        SYNTHETIC_TASKS
    )


def synthetic_table(seeds: list[int], correlations: list[float], batch: str) -> str:
    df = one_per_seed(complete_runs(SYNTHETIC_EXPERIMENT, batch), ["data.correlation"])
    df = df[df["seed"].isin([str(s) for s in seeds])]
    corr = df["data.correlation"].astype(float)
    head = [
        "task correlation p",
        "label correlation",
        "shared-bottom RMSE y1",
        "MMoE RMSE y1",
        "shared-bottom RMSE y2",
        "MMoE RMSE y2",
        "shared-bottom MSE (mean of tasks)",
        "MMoE MSE (mean of tasks)",
        "gap: SB MSE - MMoE MSE",
        "noise floor MSE",
    ]
    lines = ["| " + " | ".join(head) + " |", "|---:|" + "---:|" * (len(head) - 1)]
    for c in correlations:
        at = df[np.isclose(corr, c)]
        sb, mm = (at[at["exp"] == m].set_index("seed") for m in SYNTHETIC_MODELS.values())
        sb_mse, mm_mse = mean_mse(sb), mean_mse(mm)
        paired = (sb_mse - mm_mse).dropna()
        floor = mean_mse(at, "oracle")  # the noise-free values: the label noise's MSE
        row = [
            f"{c:g}",
            f"{label_correlation(c):.3f}",
            *(cell(metric(frame, f"test/rmse/{t}")) for t in SYNTHETIC_TASKS for frame in (sb, mm)),
            cell(sb_mse),
            cell(mm_mse),
            f"{paired.mean():+.4f} +- {paired.std(ddof=1):.4f} ({len(paired)})"
            if len(paired) > 1
            else "-",
            f"{floor.iloc[0]:.4f}" if len(floor) else "-",
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def run_lanes(lanes: list[list[tuple[list[str], str]]]) -> None:
    """Each lane's sweeps one after the other; the lanes side by side (one core each)."""
    since = time.time()
    failures: list[str] = []

    def lane(sweeps: list[tuple[list[str], str]]) -> None:
        for args, name in sweeps:
            process, log_path = start(args, name)
            code = process.wait()
            print(f"  {name}: exit {code} after {time.time() - since:.0f} s", flush=True)
            if code:
                failures.append(str(log_path))
                return

    threads = [threading.Thread(target=lane, args=(sweeps,)) for sweeps in lanes if sweeps]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        sys.exit(f"a sweep failed: see {', '.join(failures)}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--batch", help="resume (or, with --tables-only, tabulate) this batch; default: a new one"
    )
    ap.add_argument(
        "--tables-only",
        action="store_true",
        help="only rebuild the tables (default: the latest batch)",
    )
    ap.add_argument(
        "--only", choices=["census", "synthetic"], help="train (and tabulate) one part only"
    )
    ap.add_argument("--census-seeds", default=",".join(map(str, CENSUS_SEEDS)))
    ap.add_argument("--synthetic-seeds", default=",".join(map(str, SYNTHETIC_SEEDS)))
    ap.add_argument("--correlations", default=",".join(map(str, CORRELATIONS)))
    args = ap.parse_args()
    census_seeds = [int(s) for s in args.census_seeds.split(",")]
    synthetic_seeds = [int(s) for s in args.synthetic_seeds.split(",")]
    correlations = [float(c) for c in args.correlations.split(",")]
    parts = [args.only] if args.only else ["census", "synthetic"]
    start_time = time.time()
    if args.tables_only:
        batch = args.batch or latest_batch()
    else:
        batch = args.batch or time.strftime("%Y%m%d-%H%M%S")
        census_done, synthetic_done = done_runs(batch)
        print(
            f"batch {batch}: {len(census_done)} census and {len(synthetic_done)} synthetic runs already complete",
            flush=True,
        )
        synthetic = (
            synthetic_sweeps(synthetic_seeds, correlations, batch, synthetic_done)
            if "synthetic" in parts
            else []
        )
        # the census sweep in one lane, each synthetic model's sweep in its own
        run_lanes(
            [
                census_sweeps(census_seeds, batch, census_done) if "census" in parts else [],
                *([sweep] for sweep in synthetic),
            ]
        )
    sections = []
    if "census" in parts:
        sections.append(
            "## Census-Income (KDD): test AUC and logloss, mean +- std (seeds)\n\n"
            + census_table(census_seeds, batch)
        )
    if "synthetic" in parts:
        sections.append(
            "## The MMoE paper's synthetic data (`data=mmoe_synthetic`): test RMSE and MSE, "
            "mean +- std (seeds)\n\n" + synthetic_table(synthetic_seeds, correlations, batch)
        )
    took = f"{time.time() - start_time:.0f} s" + (", tables only" if args.tables_only else "")
    text = "# Multi-task results\n\nWritten by `python experiments/multitask/run.py"
    text += (
        " " + " ".join(sys.argv[1:]) if sys.argv[1:] else ""
    ) + f"` (batch {batch}; {took}).\n\n"
    text += "\n\n".join(sections) + "\n"
    OUT.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
