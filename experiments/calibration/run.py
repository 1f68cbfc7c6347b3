"""The calibration tables of issues 5 and 22, from one command (see README.md beside this file).

    python experiments/calibration/run.py                    # both parts, then results.md
    python experiments/calibration/run.py --parts census     # one part (synthetic, census)
    python experiments/calibration/run.py --tables-only      # compare again and rebuild results.md

- synthetic: MMoE on the synthetic world's click task, with and without negative downsampling
  of the training split (`data.negative_downsampling={task: click, rate: 0.1}`); calibration
  none (with downsampling: the correction alone), isotonic and Platt. ECE (15 equal-mass bins),
  logloss and AUC of the model's own test predictions (`*_raw`) and after the calibration stage.
- census: MMoE on Census-Income (income > 50K, never married): no calibrator, isotonic, Platt.

Each setting is one `python -m recolab train -m ... seed=1,2,3,4,5` sweep, its `exp_name` the
setting's name, into this experiment's own MLflow store (`--store`, default
outputs/calibration/mlflow; `MLFLOW_TRACKING_URI` wins where set). The settings are fixed, not
tuned: nothing here was chosen by looking at test. Then `python -m recolab compare` writes, per
comparison, `comparisons/<part>-<name>/comparison.{md,html,json}`: every setting's 95% t interval
over seeds and its difference from the comparison's baseline (paired t over seeds, Holm across
the settings compared, "within noise" where the interval covers 0). A calibrator's effect on the
same model (before against after, both logged by each run) is tested by
`recolab.reports.stats.paired_t` over the same seeds, with Holm across settings
(`comparisons/<part>-before_after.json`). results.md is written from those files alone.
Torch runs one thread per process unless OMP_NUM_THREADS says otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/_common.py
from _common import (  # noqa: E402
    ROOT,
    run_sweep,
    store,
)
from _common import (
    ci as _ci,
)
from _common import (
    compare_command as _compare_command,
)
from _common import (
    load_json as _load,
)
from _common import (
    num as _num,
)
from _common import (
    p_value as _p,
)
from _common import (
    run_compare as _run_compare,
)
from _common import (
    verdict as _verdict,
)

from recolab.compare import fetch_runs  # noqa: E402
from recolab.reports import stats as S  # noqa: E402
from recolab.reports.compare import SEED_KEYS, group_runs  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = HERE / "comparisons"

WORLD = [
    "data.num_users=2000",
    "data.num_items=1000",
    "data.num_impressions=200000",
    "data.batch_size=2048",
    "module.lr=0.003",
    "trainer.max_epochs=4",
    # off, as in these tables' first runs (issue 5), which predate the synthetic-world
    # experiments' input normalization
    "model.embedding.batch_norm=false",
    "data.tasks=[{name:click,kind:binary}]",
    "data.oracle={click:gt_click_prob}",
]
DOWNSAMPLE = "++data.negative_downsampling={task:click,rate:0.1}"
SEEDS = [1, 2, 3, 4, 5]
#: Neither changes a metric: no MLflow Model and no checkpoint uploads (time and disk).
LEAN = ["log_model=false", "log_checkpoints=false"]
METRICS = ["test/ece*", "test/logloss*", "test/auc*", "oracle/ece/*"]
#: The before/after pairs each run logs (the model's own predictions, then the stage's).
STAGE_METRICS = ["ece", "logloss", "auc"]


@dataclass
class Setting:
    key: str  # the runs' exp_name (MLflow tag recolab.exp)
    downsampling: str
    calibrator: str
    overrides: list[str]


@dataclass
class Comparison:
    name: str
    title: str
    settings: list[str]  # keys
    baseline: str


PARTS = {
    "synthetic": (
        "calibration_synthetic",
        ["click"],
        [
            Setting("mmoe_none", "none", "none", ["+exp=mmoe", "+calibration=none", *WORLD]),
            Setting("mmoe_iso", "none", "isotonic", ["+exp=mmoe", "+calibration=isotonic", *WORLD]),
            Setting("mmoe_platt", "none", "Platt", ["+exp=mmoe", "+calibration=platt", *WORLD]),
            Setting(
                "mmoe_ds_none",
                "negatives at w = 0.1",
                "none (correction only)",
                ["+exp=mmoe", DOWNSAMPLE, "+calibration=none", *WORLD],
            ),
            Setting(
                "mmoe_ds_iso",
                "negatives at w = 0.1",
                "correction + isotonic",
                ["+exp=mmoe", DOWNSAMPLE, "+calibration=isotonic", *WORLD],
            ),
            Setting(
                "mmoe_ds_platt",
                "negatives at w = 0.1",
                "correction + Platt",
                ["+exp=mmoe", DOWNSAMPLE, "+calibration=platt", *WORLD],
            ),
        ],
        [
            Comparison(
                "vs_none",
                "Synthetic world, click: every setting against the full-data model without a calibrator",
                [
                    "mmoe_none",
                    "mmoe_iso",
                    "mmoe_platt",
                    "mmoe_ds_none",
                    "mmoe_ds_iso",
                    "mmoe_ds_platt",
                ],
                "mmoe_none",
            ),
            Comparison(
                "ds_vs_correction",
                "Synthetic world, click, negatives downsampled: calibrators after the correction against the correction alone",
                ["mmoe_ds_none", "mmoe_ds_iso", "mmoe_ds_platt"],
                "mmoe_ds_none",
            ),
            Comparison(
                "ds_vs_full",
                "Synthetic world, click: negatives downsampled (correction + isotonic) against full data (isotonic)",
                ["mmoe_iso", "mmoe_ds_iso"],
                "mmoe_iso",
            ),
            Comparison(
                "platt_vs_iso",
                "Synthetic world, click, full data: Platt against isotonic",
                ["mmoe_iso", "mmoe_platt"],
                "mmoe_iso",
            ),
            Comparison(
                "ds_platt_vs_iso",
                "Synthetic world, click, negatives downsampled: correction + Platt against correction + isotonic",
                ["mmoe_ds_iso", "mmoe_ds_platt"],
                "mmoe_ds_iso",
            ),
        ],
    ),
    "census": (
        "calibration_census",
        ["income", "never_married"],
        [
            Setting("census_none", "none", "none", ["+exp=census_mmoe", "+calibration=none"]),
            Setting(
                "census_iso", "none", "isotonic", ["+exp=census_mmoe", "+calibration=isotonic"]
            ),
            Setting("census_platt", "none", "Platt", ["+exp=census_mmoe", "+calibration=platt"]),
        ],
        [
            Comparison(
                "vs_none",
                "Census-Income, MMoE: calibrators against none",
                ["census_none", "census_iso", "census_platt"],
                "census_none",
            ),
            Comparison(
                "platt_vs_iso",
                "Census-Income, MMoE: Platt against isotonic",
                ["census_iso", "census_platt"],
                "census_iso",
            ),
        ],
    ),
}


def sweep(part: str, experiment: str, s: Setting, uri: str, artifacts: str | None) -> None:
    run_sweep(
        "calibration",
        f"{part}-{s.key}",
        [
            *s.overrides,
            *LEAN,
            f"seed={','.join(map(str, SEEDS))}",
            f"experiment_name={experiment}",
            f"exp_name={s.key}",
            f"tags=[calibration,{part},{s.key}]",
            f"logger.mlflow.tracking_uri={uri}",
            *([f"logger.mlflow.artifact_location={artifacts}"] if artifacts else []),
        ],
    )


def compare_command(part: str, experiment: str, c: Comparison, uri: str) -> list[str]:
    return _compare_command(
        uri=uri,
        experiment=experiment,
        settings=c.settings,
        baseline=c.baseline,
        metrics=METRICS,
        out_dir=OUT / f"{part}-{c.name}",
        title=c.title,
    )


def run_compare(part: str, experiment: str, c: Comparison, uri: str) -> None:
    log_path = ROOT / "outputs" / "calibration" / f"compare-{part}-{c.name}.log"
    _run_compare(compare_command(part, experiment, c, uri), log_path)


def before_after(part: str, experiment: str, uri: str) -> Path:
    """After minus before (the stage's predictions against the model's own, in the same runs):
    `recolab.reports.stats.paired_t` over seeds, Holm across settings per metric and task. The
    runs are `recolab compare`'s (its query, its configurations, its newest run per seed)."""
    _, tasks, settings, _ = PARTS[part]
    cfg = OmegaConf.create(
        {
            "tracking_uri": uri,
            "experiment_name": experiment,
            "exps": [s.key for s in settings],
            "run_ids": [],
            "kind": "train",
            "filter": "",
            "max_runs": 1000,
            "epoch_means": [],
        }
    )
    configs = {
        c.params.get("exp_name") or c.label: c
        for c in group_runs(fetch_runs(cfg), SEED_KEYS).configs
    }
    records = []
    for task in tasks:
        for metric in STAGE_METRICS:
            group = []
            for s in settings:
                c = configs.get(s.key)
                if c is None:
                    continue
                after = c.values(f"test/{metric}/{task}")
                before = c.values(f"test/{metric}_raw/{task}")
                seeds = sorted(set(after) & set(before))
                if not seeds:  # no calibration stage: nothing to test
                    continue
                d = S.paired_t([after[k] for k in seeds], [before[k] for k in seeds])
                group.append(
                    {
                        "config": s.key,
                        "task": task,
                        "metric": metric,
                        "before": float(np.mean([before[k] for k in seeds])),
                        "after": float(np.mean([after[k] for k in seeds])),
                        "diff": d.diff,
                        "diff_ci_low": d.ci_low,
                        "diff_ci_high": d.ci_high,
                        "p_value": d.p_value,
                        "method": d.method + " (recolab.reports.stats.paired_t)",
                        "seeds": seeds,
                        "within_noise": S.within_noise(d.ci_low, d.ci_high),
                    }
                )
            for r, p in zip(group, S.holm([r["p_value"] for r in group])):
                r["p_holm"] = p
            records += group
    path = OUT / f"{part}-before_after.json"
    path.write_text(
        json.dumps(
            {"experiment": experiment, "tracking_uri": uri, "level": S.LEVEL, "records": records},
            indent=2,
        )
    )
    return path


# ---- results.md, from the files above ----


def _summary_cell(r: dict) -> str:
    return f"{_num(r['mean'])} {_ci(r['ci_low'], r['ci_high'])}"


def section(part: str, uri: str) -> str:
    experiment, tasks, settings, comparisons = PARTS[part]
    overview = _load(OUT / f"{part}-{comparisons[0].name}" / "comparison.json")
    summaries = {(r["config"], r["metric"]): r for r in overview["records"]}
    labels = [
        ("ece_raw", "ECE before"),
        ("ece", "ECE after"),
        ("logloss_raw", "logloss before"),
        ("logloss", "logloss after"),
        ("auc_raw", "AUC before"),
        ("auc", "AUC after"),
    ]
    out = []
    title = {
        "synthetic": f"## Synthetic world, click ({' '.join(w for w in WORLD if 'tasks' not in w and 'oracle' not in w)})",
        "census": "## Census-Income (KDD), MMoE (`+exp=census_mmoe`)",
    }[part]
    out.append(title)
    out.append(
        f"MLflow experiment `{experiment}`; seeds {','.join(map(str, SEEDS))}. Cells: mean over "
        "seeds [95% t interval]. Without a calibration stage (no calibrator, no downsampling) "
        "the model's predictions are the tested ones: `before` is `after`."
    )
    for task in tasks:
        head = ["setting", "training negatives", "calibration", "n", *(x for _, x in labels)]
        lines = ["| " + " | ".join(head) + " |", "|---|---|---|---:|" + "---:|" * len(labels)]
        for s in settings:
            cells = []
            n = "-"
            for m, _ in labels:
                r = summaries.get((s.key, f"test/{m}/{task}"))
                if r is None and m.endswith("_raw"):  # no stage: before = after
                    r = summaries.get((s.key, f"test/{m[: -len('_raw')]}/{task}"))
                cells.append("-" if r is None else _summary_cell(r))
                if r is not None:
                    n = str(r["n"])
            lines.append(
                f"| `{s.key}` | {s.downsampling} | {s.calibrator} | {n} | "
                + " | ".join(cells)
                + " |"
            )
        block = f"### {task}\n\n" + "\n".join(lines)
        oracle = overview.get("constant", {}).get(f"oracle/ece/{task}")
        if oracle:
            block += f"\n\nThe oracle (the world's true click probability) has ECE {oracle} on the same test rows in every run."
        out.append(block)

    # before against after, in the same runs
    ba = _load(OUT / f"{part}-before_after.json")["records"]
    lines = [
        "| setting | task | metric | before | after | after - before | 95% CI | p | p (Holm) | |",
        "|---|---|---|---:|---:|---:|---|---:|---:|---|",
    ]
    for r in ba:
        lines.append(
            f"| `{r['config']}` | {r['task']} | {r['metric']} | {_num(r['before'])} | {_num(r['after'])} | "
            f"{_num(r['diff'])} | {_ci(r['diff_ci_low'], r['diff_ci_high'])} | {_p(r['p_value'])} | "
            f"{_p(r['p_holm'])} | {_verdict(r['within_noise'], r['p_holm'])} |"
        )
    out.append(
        "### The calibration stage on the same model: after minus before\n\n"
        f"Paired t over the {len(SEEDS)} seeds (each run logs both), "
        "`recolab.reports.stats.paired_t`; Holm across the settings, per task and metric "
        f"(`comparisons/{part}-before_after.json`).\n\n" + "\n".join(lines)
    )

    # each comparison against its baseline
    for c in comparisons:
        data = _load(OUT / f"{part}-{c.name}" / "comparison.json")
        lines = [
            "| setting | metric | n | mean [95% CI] | diff | 95% CI of diff | p | p (Holm) | |",
            "|---|---|---:|---|---:|---|---:|---:|---|",
        ]
        for r in data["records"]:
            if r["diff"] is None:  # the baseline itself, or a metric the baseline lacks
                continue
            if "_raw/" in r["metric"] and r["diff"] == 0 and r["diff_ci_low"] == r["diff_ci_high"]:
                continue  # the same model in both settings (they differ in the calibrator only)
            lines.append(
                f"| `{r['config']}` | {r['metric']} | {r['n']} | {_summary_cell(r)} | {_num(r['diff'])} | "
                f"{_ci(r['diff_ci_low'], r['diff_ci_high'])} | {_p(r['p_value'])} | {_p(r['p_holm'])} | "
                f"{_verdict(r['within_noise'], r['p_holm'])} |"
            )
        method = next((r["method"] for r in data["records"] if r["test"]), "-")
        out.append(
            f"### {c.title}\n\n"
            f"Baseline `{data['baseline']}`; {method}; Holm across the {len(c.settings) - 1} "
            f"setting(s) compared, per metric. `*_raw` rows are left out where both settings "
            "train the same model (difference exactly 0) or the baseline has no calibration stage. "
            f"From `comparisons/{part}-{c.name}/comparison.json`, "
            "written by\n\n```\n"
            + " ".join(
                _shell(a) for a in ["python", *compare_command(part, experiment, c, uri)[1:]]
            ).replace(str(ROOT) + "/", "")
            + "\n```\n\n"
            + "\n".join(lines)
        )
    return "\n\n".join(out)


def _shell(arg: str) -> str:
    return f'"{arg}"' if any(ch in arg for ch in " [{'*") else arg


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    ap.add_argument(
        "--tables-only",
        action="store_true",
        help="no training: compare the tracked runs again and rebuild results.md",
    )
    ap.add_argument(
        "--settings",
        nargs="+",
        help="train only these settings (e.g. mmoe_ds_platt); the comparisons take all",
    )
    ap.add_argument(
        "--store",
        default="outputs/calibration/mlflow",
        help="folder of this experiment's MLflow store (mlflow.db, mlartifacts/), relative to "
        "the repository; MLFLOW_TRACKING_URI wins where set",
    )
    args = ap.parse_args()
    uri, artifacts = store(args.store)
    start = time.time()
    timings = {}
    for part in args.parts:  # every sweep first: a failing comparison loses no training
        experiment, _, settings, _ = PARTS[part]
        t = time.time()
        if not args.tables_only:
            for s in settings:
                if args.settings is None or s.key in args.settings:
                    sweep(part, experiment, s, uri, artifacts)
        timings[part] = [time.time() - t]
    for part in args.parts:
        experiment, _, _, comparisons = PARTS[part]
        t = time.time()
        for c in comparisons:
            run_compare(part, experiment, c, uri)
        before_after(part, experiment, uri)
        timings[part].append(time.time() - t)
    out = HERE / "results.md"
    previous = out.read_text() if out.exists() else ""
    sections = {part: section(part, uri) for part in args.parts}
    for part in PARTS:  # keep the sections of parts not run this time
        marker = f"<!-- part: {part} -->"
        if part not in sections and marker in previous:
            sections[part] = previous.split(marker, 1)[1].split("<!-- end -->", 1)[0].strip()
    took = "; ".join(
        f"{p}: training {a / 60:.1f} min, comparisons {b:.0f} s" for p, (a, b) in timings.items()
    )
    command = "python experiments/calibration/run.py" + (
        f" {' '.join(sys.argv[1:])}" if sys.argv[1:] else ""
    )
    text = (
        "# Calibration results\n\n"
        f"Written by `{command}` ({took}; {time.time() - start:.0f} s in all), from the\n"
        "comparison files under `comparisons/`. `before`: the model's own test predictions;\n"
        "`after`: the calibration stage's (the downsampling correction, then the calibrator fitted\n"
        "on the best checkpoint's validation predictions; the checkpoint is picked by val/loss).\n"
        "ECE over 15 equal-mass bins. A difference is significant where its 95% interval leaves\n"
        "out 0, within noise where it covers 0; these metrics have no per-user values, so every\n"
        "test is over seeds (training noise), none over test users.\n\n"
        + "\n\n".join(
            f"<!-- part: {p} -->\n{sections[p]}\n<!-- end -->" for p in PARTS if p in sections
        )
        + "\n"
    )
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
