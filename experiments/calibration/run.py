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
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/_common.py
from _common import cell, latest_tagged_runs, run_sweep  # noqa: E402

HERE = Path(__file__).resolve().parent

WORLD = [
    "data.num_users=2000",
    "data.num_items=1000",
    "data.num_impressions=200000",
    "data.batch_size=2048",
    "module.lr=0.003",
    "trainer.max_epochs=4",
    # results.md's runs predate the synthetic-world experiments' input normalization
    "model.input_batch_norm=false",
    "data.tasks=[{name:click,kind:binary}]",
    "data.oracle={click:gt_click_prob}",
]
DOWNSAMPLE = "++data.negative_downsampling={task:click,rate:0.1}"
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
    run_sweep(
        "calibration",
        f"{part}-{s.key}",
        [
            *s.overrides,
            f"seed={','.join(map(str, SEEDS))}",
            f"experiment_name={experiment}",
            f"tags=[calibration,{part},{s.key}]",
        ],
    )


def latest_runs(experiment: str, settings: list[Setting]) -> pd.DataFrame:
    return latest_tagged_runs(experiment, [s.key for s in settings], SEEDS, "setting")[0]


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
