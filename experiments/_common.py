"""What the experiment scripts share: launching a tracked `python -m recolab train -m` sweep, and
reading back the latest complete run per (setting, seed) from MLflow.

The scripts (`experiments/<name>/run.py`) import it after putting this folder on `sys.path`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from recolab.tracking import tracking_uri

ROOT = Path(__file__).resolve().parents[1]
#: No progress bar in the sweeps' logs.
QUIET = ["callbacks.progress_bar.refresh_rate=0"]
#: MLflow's filter for a training run that finished and wrote everything.
COMPLETE_TRAIN_RUNS = (
    "attributes.status = 'FINISHED' and tags.`recolab.complete` = 'true' "
    "and tags.`recolab.kind` = 'train'"
)


def run_sweep(group: str, name: str, overrides: list[str]) -> None:
    """`python -m recolab train -m <overrides>`, its output in outputs/<group>/<name>.log; exits
    the script if the sweep fails. One torch thread per process unless OMP_NUM_THREADS says
    otherwise (on a small shared machine, two threads that wait for each other are slower)."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    cmd = [
        sys.executable,
        "-m",
        "recolab",
        "train",
        "-m",
        *overrides,
        *QUIET,
        # A literal sweep folder: the default interpolates ${hydra:runtime.cwd}, unresolved before jobs start.
        f"hydra.sweep.dir=outputs/multiruns/{group}-{name}-{stamp}",
    ]
    log_path = ROOT / "outputs" / group / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    print("$", " ".join(cmd), f"> {log_path.relative_to(ROOT)}", flush=True)
    start = time.time()
    with open(log_path, "w") as out:
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    print(f"  {time.time() - start:.0f} s, exit {done.returncode}", flush=True)
    if done.returncode:
        sys.exit(f"the sweep failed: see {log_path}")


def latest_tagged_runs(
    experiment: str, keys: list[str], seeds: list[int], column: str
) -> tuple[pd.DataFrame, MlflowClient]:
    """One row per (key, seed): the latest complete training run whose `recolab.tags` hold the
    key, with `column` = the key, `seed`, `start`, `run_id` and the run's metrics as columns."""
    client = MlflowClient(tracking_uri=tracking_uri(str(ROOT)))
    found = client.get_experiment_by_name(experiment)
    if found is None:
        sys.exit(
            f"no MLflow experiment {experiment!r} at {tracking_uri(str(ROOT))}: run without --tables-only first"
        )
    rows = []
    for r in client.search_runs([found.experiment_id], COMPLETE_TRAIN_RUNS, max_results=5000):
        tags = r.data.tags.get("recolab.tags", "").split(",")
        key = next((k for k in keys if k in tags), None)
        if key is not None and int(r.data.params.get("seed", -1)) in seeds:
            rows.append(
                {
                    column: key,
                    "seed": int(r.data.params["seed"]),
                    "start": r.info.start_time,
                    "run_id": r.info.run_id,
                    **r.data.metrics,
                }
            )
    if not rows:
        sys.exit(f"no complete runs of {keys} in experiment {experiment!r}")
    df = pd.DataFrame(rows).sort_values("start").drop_duplicates([column, "seed"], keep="last")
    return df, client


def cell(values) -> str:
    """`mean +- sample std (n)` of the finite values, `v (1)` for one, `-` for none."""
    values = pd.Series(values, dtype=float).dropna()
    if values.empty:
        return "-"
    if len(values) == 1:
        return f"{values.iloc[0]:.4f} (1)"
    return f"{values.mean():.4f} +- {values.std(ddof=1):.4f} ({len(values)})"


# -- each experiment's own MLflow store, and `recolab compare` per comparison --


def store(folder: str) -> tuple[str, str | None]:
    """(tracking URI, artifact location): MLFLOW_TRACKING_URI where set, else a sqlite store in
    `folder` (relative to the repository) with its artifacts beside it."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"], None
    where = (ROOT / folder).resolve()
    where.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{where}/mlflow.db", str(where / "mlartifacts")


def compare_command(
    *,
    uri: str,
    experiment: str,
    settings: list[str],
    baseline: str,
    metrics: list[str],
    out_dir: Path,
    title: str,
) -> list[str]:
    """`python -m recolab compare` of `settings` (exp_name) against `baseline`, into `out_dir`."""
    return [
        sys.executable,
        "-m",
        "recolab",
        "compare",
        f"tracking_uri={uri}",
        f"experiment_name={experiment}",
        f"exps=[{','.join(settings)}]",
        f"baseline={baseline}",
        f"metrics=[{','.join(metrics)}]",
        "epoch_means=[]",
        f"out_dir={out_dir}",
        f"title='{title}'",
    ]


def run_compare(cmd: list[str], log_path: Path) -> None:
    """Run a `compare_command`, its output in `log_path`; exits the script if it fails."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print("$", " ".join(cmd), f"> {log_path.relative_to(ROOT)}", flush=True)
    with open(log_path, "w") as out:
        done = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"recolab compare failed: see {log_path}")


# -- the results pages, from comparison.json --


def load_json(path: Path) -> dict:
    return json.loads(path.read_text())


def num(x, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def p_value(x) -> str:
    return "-" if x is None else f"{x:.2g}"


def ci(low, high, digits: int = 4) -> str:
    return "-" if low is None else f"[{num(low, digits)}, {num(high, digits)}]"


def verdict(within, p_holm=None) -> str:
    """compare's verdict (the 95% interval covers 0 or not), and where Holm's p is 0.05 or more
    across the settings compared, that the difference does not survive the correction."""
    if within is None:
        return "-"
    if within:
        return "within noise"
    if p_holm is not None and p_holm >= 0.05:
        return "significant, not after Holm"
    return "**significant**"
