"""The calibration tables of issue 5, from one command (see README.md beside this file).

    python experiments/calibration/run.py                    # both parts, then results.md
    python experiments/calibration/run.py --parts census     # one part (synthetic, census)
    python experiments/calibration/run.py --tables-only      # rebuild results.md from the MLflow runs

- synthetic: MMoE on the synthetic world's click task, with and without negative downsampling
  of the training split (`data.negative_downsampling={task: click, rate: 0.1}`); calibration
  none (the downsampling correction alone), isotonic and Platt. ECE (15 equal-mass bins) and
  logloss of the model's own test predictions (`*_raw`) and after the calibration stage.
- census: MMoE on Census-Income (income > 50K, never married) with isotonic and Platt.

Each configuration is one `python -m recolab train -m ... seed=...` sweep into the project's
MLflow store (one MLflow experiment per part, each configuration tagged with its key); the
tables keep, per (configuration, seed), the latest complete run. Torch runs one thread per
process unless OMP_NUM_THREADS says otherwise.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from recolab.tracking import tracking_uri

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

WORLD = [
    "data.num_users=2000",
    "data.num_items=1000",
    "data.num_impressions=200000",
    "data.batch_size=2048",
    "module.lr=0.003",
    "trainer.max_epochs=4",
    "data.tasks=[{name:click,kind:binary}]",
    "data.oracle={click:gt_click_prob}",
]
DOWNSAMPLE = "++data.negative_downsampling={task:click,rate:0.1}"
QUIET = ["callbacks.progress_bar.refresh_rate=0"]
SEEDS = [1, 2, 3]


@dataclass
class Setting:
    key: str  # the MLflow tag that marks its runs
    downsampling: str
    calibrator: str
    overrides: list[str]


PARTS = {
    "synthetic": (
        "calibration_synthetic",
        ["click"],
        [
            Setting("iso", "none", "isotonic", ["+exp=mmoe", "+calibration=isotonic", *WORLD]),
            Setting("platt", "none", "Platt", ["+exp=mmoe", "+calibration=platt", *WORLD]),
            Setting(
                "ds_none",
                "negatives at w = 0.1",
                "none (correction only)",
                ["+exp=mmoe", DOWNSAMPLE, *WORLD],
            ),
            Setting(
                "ds_iso",
                "negatives at w = 0.1",
                "correction + isotonic",
                ["+exp=mmoe", DOWNSAMPLE, "+calibration=isotonic", *WORLD],
            ),
            Setting(
                "ds_platt",
                "negatives at w = 0.1",
                "correction + Platt",
                ["+exp=mmoe", DOWNSAMPLE, "+calibration=platt", *WORLD],
            ),
        ],
    ),
    "census": (
        "calibration_census",
        ["income", "never_married"],
        [
            Setting("iso", "none", "isotonic", ["+exp=census_mmoe", "+calibration=isotonic"]),
            Setting("platt", "none", "Platt", ["+exp=census_mmoe", "+calibration=platt"]),
        ],
    ),
}


def sweep(part: str, experiment: str, s: Setting) -> None:
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    cmd = [
        sys.executable,
        "-m",
        "recolab",
        "train",
        "-m",
        *s.overrides,
        *QUIET,
        f"seed={','.join(map(str, SEEDS))}",
        f"experiment_name={experiment}",
        f"tags=[calibration,{part},{s.key}]",
        # A literal sweep folder: the default interpolates ${hydra:runtime.cwd}, unresolved before jobs start.
        f"hydra.sweep.dir=outputs/multiruns/calibration-{part}-{s.key}-{stamp}",
    ]
    log_path = ROOT / "outputs" / "calibration" / f"{part}-{s.key}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    print("$", " ".join(cmd), f"> {log_path.relative_to(ROOT)}", flush=True)
    start = time.time()
    with open(log_path, "w") as out:
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    print(f"  {time.time() - start:.0f} s, exit {done.returncode}", flush=True)
    if done.returncode:
        sys.exit(f"the sweep failed: see {log_path}")


def latest_runs(experiment: str, settings: list[Setting]) -> pd.DataFrame:
    client = MlflowClient(tracking_uri=tracking_uri(str(ROOT)))
    found = client.get_experiment_by_name(experiment)
    if found is None:
        sys.exit(
            f"no MLflow experiment {experiment!r} at {tracking_uri(str(ROOT))}: run without --tables-only first"
        )
    query = "attributes.status = 'FINISHED' and tags.`recolab.complete` = 'true' and tags.`recolab.kind` = 'train'"
    rows = []
    for r in client.search_runs([found.experiment_id], query, max_results=5000):
        tags = r.data.tags.get("recolab.tags", "").split(",")
        key = next((s.key for s in settings if s.key in tags), None)
        if key is not None and int(r.data.params.get("seed", -1)) in SEEDS:
            rows.append(
                {
                    "setting": key,
                    "seed": int(r.data.params["seed"]),
                    "start": r.info.start_time,
                    **r.data.metrics,
                }
            )
    if not rows:
        sys.exit(f"no complete runs of the settings in experiment {experiment!r}")
    return pd.DataFrame(rows).sort_values("start").drop_duplicates(["setting", "seed"], keep="last")


def cell(values: pd.Series) -> str:
    values = pd.Series(values, dtype=float).dropna()
    if values.empty:
        return "-"
    if len(values) == 1:
        return f"{values.iloc[0]:.4f} (1)"
    return f"{values.mean():.4f} +- {values.std(ddof=1):.4f} ({len(values)})"


def section(part: str) -> str:
    experiment, tasks, settings = PARTS[part]
    df = latest_runs(experiment, settings)
    metrics = [
        ("ece_raw", "ECE before"),
        ("ece", "ECE after"),
        ("logloss_raw", "logloss before"),
        ("logloss", "logloss after"),
        ("auc_raw", "AUC before"),
        ("auc", "AUC after"),
    ]
    blocks = []
    for task in tasks:
        head = ["training negatives", "calibration", *(label for _, label in metrics)]
        lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * len(metrics)]
        for s in settings:
            runs = df[df["setting"] == s.key]
            cells = [
                cell(runs[f"test/{m}/{task}"]) if f"test/{m}/{task}" in runs else "-"
                for m, _ in metrics
            ]
            lines.append(f"| {s.downsampling} | {s.calibrator} | " + " | ".join(cells) + " |")
        oracle = df.drop_duplicates("seed").get(
            f"oracle/ece/{task}"
        )  # the same test rows for every setting
        note = (
            f"\n\nThe oracle (the world's true click probability) has ECE {cell(oracle)}."
            if oracle is not None
            else ""
        )
        blocks.append(f"### {task}\n\n" + "\n".join(lines) + note)
    title = {
        "synthetic": f"## Synthetic world, click ({' '.join(w for w in WORLD if 'tasks' not in w and 'oracle' not in w)}; seeds {','.join(map(str, SEEDS))})",
        "census": f"## Census-Income (KDD), MMoE (`+exp=census_mmoe`; seeds {','.join(map(str, SEEDS))})",
    }[part]
    return title + "\n\n" + "\n\n".join(blocks)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    ap.add_argument(
        "--tables-only", action="store_true", help="only rebuild the tables from MLflow"
    )
    ap.add_argument(
        "--settings",
        nargs="+",
        help="train only these setting keys (e.g. ds_platt); the tables show all",
    )
    args = ap.parse_args()
    start = time.time()
    timings = {}
    if not args.tables_only:
        for part in args.parts:
            t = time.time()
            experiment, _, settings = PARTS[part]
            for s in settings:
                if args.settings is None or s.key in args.settings:
                    sweep(part, experiment, s)
            timings[part] = time.time() - t
    out = HERE / "results.md"
    previous = out.read_text() if out.exists() else ""
    sections = {part: section(part) for part in args.parts}
    for part in PARTS:  # keep the sections of parts not run this time
        marker = f"<!-- part: {part} -->"
        if part not in sections and marker in previous:
            sections[part] = previous.split(marker, 1)[1].split("<!-- end -->", 1)[0].strip()
    took = ", ".join(f"{p} {s / 60:.1f} min" for p, s in timings.items()) or "tables only"
    text = (
        "# Calibration results\n\nWritten by `python experiments/calibration/run.py"
        + (f" {' '.join(sys.argv[1:])}" if sys.argv[1:] else "")
        + f"` ({took}; {time.time() - start:.0f} s in all).\n"
        "Cells: mean +- sample standard deviation (number of seeds). `before`: the model's own test\n"
        "predictions; `after`: the calibration stage's (downsampling correction, then the calibrator fitted\n"
        "on the best checkpoint's validation predictions). ECE over 15 equal-mass bins.\n\n"
        + "\n\n".join(
            f"<!-- part: {p} -->\n{sections[p]}\n<!-- end -->" for p in PARTS if p in sections
        )
        + "\n"
    )
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
