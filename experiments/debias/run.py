"""The debiasing tables of issues 5 and 22, from one command (see README.md beside this file).

    python experiments/debias/run.py                        # every part, then results.md
    python experiments/debias/run.py --parts position       # some parts (position, kuairand, open_bandit, duration)
    python experiments/debias/run.py --tables-only          # compare again and rebuild results.md

Parts, each a list of methods, each method one `python -m recolab train -m ... seed=1,2,3,4,5`
sweep, its `exp_name` the method's key, into this experiment's own MLflow store (`--store`,
default outputs/debias/mlflow; `MLFLOW_TRACKING_URI` wins where set):

- position: MMoE on the synthetic world with no position head, PAL and the shallow tower;
  relevance recovered (test/truth_xauc/click: XAUC of the served score against gt_relevance)
  and the learned position curve next to the world's true examination curve (position_curve.png).
- kuairand: MMoE on KuaiRand-27K (liked-or-hated subset) with D2Q, Res-D2Q and the three
  regression baselines on watch time: XAUC, XGAUC, MAE.
- open_bandit: shared-bottom on Open Bandit, trained on the bts log, AUC on the random log, with
  no head, PAL and the shallow tower.
- duration: the five watch-time methods of kuairand on the synthetic world, with the XAUC of
  each method's duration-free score against gt_interest.

The parts run in that order (the ones issue 22 questions first); per part, its sweeps and then
its comparisons, so an interrupted run leaves the finished parts compared. A (method, seed) with
a complete run in the store is not trained again. The settings are fixed (today's data sizes and
epochs), not tuned: nothing here was chosen by looking at test. `python -m recolab compare`
writes, per comparison, `comparisons/<part>-<name>/comparison.{md,html,json}`: every method's 95%
t interval over seeds and its difference from the comparison's baseline (paired t over seeds,
and where the metric has per-user values the paired bootstrap over test users; Holm across the
methods compared; "within noise" where the interval covers 0). results.md is written from those
files alone, except the position curves and D2Q's served zeros, read from the runs themselves.
Torch runs one thread per process unless OMP_NUM_THREADS says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/_common.py
from _common import (  # noqa: E402
    COMPLETE_TRAIN_RUNS,
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

from recolab.reports import stats as S  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = HERE / "comparisons"
#: The shared data beside the repository, named explicitly: the configs' default (null) finds it
#: beside the installed package, which need not be this checkout.
SHARED = ROOT.parent / "shared" / "data"

#: The synthetic world of the position and duration parts: small enough for 2 CPU cores, with
#: enough impressions per user (100) and item (200) for MMoE to learn relevance.
WORLD = [
    "data.num_users=2000",
    "data.num_items=1000",
    "data.num_impressions=200000",
    "data.batch_size=2048",
    "module.lr=0.003",
    "trainer.max_epochs=4",
]
SEEDS = [1, 2, 3, 4, 5]
#: Neither changes a metric: no MLflow Model and no checkpoint uploads (time and disk). The
#: checkpoints stay in each run's folder (D2Q's served zeros are predicted from them).
LEAN = ["log_model=false", "log_checkpoints=false"]


@dataclass
class Method:
    key: str  # the runs' exp_name (MLflow tag recolab.exp)
    label: str
    overrides: list[str]


@dataclass
class Comparison:
    name: str
    title: str
    methods: list[str]  # keys
    baseline: str


@dataclass
class Part:
    experiment: str
    methods: list[Method]
    metrics: dict[str, str]  # metric -> column label
    comparisons: list[Comparison]
    common: list[str] = field(default_factory=list)


def _watch_time_methods(prefix: str, regression: str, d2q: str, res_d2q: str) -> list[Method]:
    return [
        Method(f"{prefix}_wt", "regression on watch time", [f"+exp={regression}"]),
        Method(
            f"{prefix}_log_wt",
            "regression on log watch time",
            [f"+exp={regression}", "head=log_watch_time_regression"],
        ),
        Method(
            f"{prefix}_ratio",
            "regression on watch ratio",
            [f"+exp={regression}", "head=watch_ratio_regression"],
        ),
        Method(f"{prefix}_d2q", "D2Q", [f"+exp={d2q}"]),
        Method(f"{prefix}_res_d2q", "Res-D2Q", [f"+exp={res_d2q}"]),
    ]


def _watch_time_comparisons(prefix: str, where: str) -> list[Comparison]:
    keys = [f"{prefix}_{k}" for k in ("wt", "log_wt", "ratio", "d2q", "res_d2q")]
    return [
        Comparison(
            "vs_wt",
            f"{where}: every method against regression on watch time",
            keys,
            f"{prefix}_wt",
        ),
        Comparison(
            "vs_ratio",
            f"{where}: D2Q and Res-D2Q against regression on watch ratio",
            [f"{prefix}_ratio", f"{prefix}_d2q", f"{prefix}_res_d2q"],
            f"{prefix}_ratio",
        ),
        Comparison(
            "res_vs_d2q",
            f"{where}: Res-D2Q against D2Q",
            [f"{prefix}_d2q", f"{prefix}_res_d2q"],
            f"{prefix}_d2q",
        ),
    ]


PARTS = {
    "position": Part(
        "debias_position",
        [
            Method("pos_no_head", "no head", ["+exp=mmoe_position"]),
            Method("pos_pal", "PAL", ["+exp=mmoe_pal"]),
            Method("pos_shallow", "shallow tower", ["+exp=mmoe_shallow"]),
        ],
        {
            "test/truth_xauc/click": "truth XAUC (relevance)",
            "test/truth_xgauc/click": "truth XGAUC (relevance)",
            "test/auc/click": "click AUC",
            "test/gauc/click": "click GAUC",
            "test/logloss/click": "click logloss",
        },
        [
            Comparison(
                "vs_no_head",
                "Position bias, synthetic world: PAL and the shallow tower against no position head",
                ["pos_no_head", "pos_pal", "pos_shallow"],
                "pos_no_head",
            ),
            Comparison(
                "shallow_vs_pal",
                "Position bias, synthetic world: the shallow tower against PAL",
                ["pos_pal", "pos_shallow"],
                "pos_pal",
            ),
        ],
        WORLD,
    ),
    "kuairand": Part(
        "debias_kuairand",
        _watch_time_methods(
            "kr", "kuairand_watch_time_regression", "kuairand_d2q", "kuairand_res_d2q"
        ),
        {
            "test/xauc/watch_time": "XAUC",
            "test/xgauc/watch_time": "XGAUC",
            "test/mae/watch_time": "MAE (s)",
            "test/rmse/watch_time": "RMSE (s)",
        },
        _watch_time_comparisons("kr", "Duration bias, KuaiRand"),
        [f"data.path={SHARED / 'kuairand-27k-likehate-subset'}"],
    ),
    "open_bandit": Part(
        "debias_open_bandit",
        [
            Method("ob_no_head", "no head", ["+exp=openbandit_no_head"]),
            Method("ob_pal", "PAL", ["+exp=openbandit_pal"]),
            Method("ob_shallow", "shallow tower", ["+exp=openbandit_shallow"]),
        ],
        {
            "test/auc/click": "AUC (random log)",
            "test/logloss/click": "logloss (random log)",
            "val/auc/click": "AUC (bts validation)",
        },
        [
            Comparison(
                "vs_no_head",
                "Position bias, Open Bandit: PAL and the shallow tower against no position head",
                ["ob_no_head", "ob_pal", "ob_shallow"],
                "ob_no_head",
            )
        ],
        [f"data.path={SHARED / 'open-bandit-dataset-small'}"],
    ),
    "duration": Part(
        "debias_duration",
        _watch_time_methods("dur", "watch_time_regression", "d2q", "res_d2q"),
        {
            "test/xauc/watch_time": "XAUC",
            "test/xgauc/watch_time": "XGAUC",
            "test/mae/watch_time": "MAE (s)",
            "test/rmse/watch_time": "RMSE (s)",
            "test/truth_xauc/watch_time": "truth XAUC (interest)",
            "oracle/xauc/watch_time": "oracle XAUC",
        },
        _watch_time_comparisons("dur", "Duration bias, synthetic world"),
        WORLD,
    ),
}


def latest_runs(uri: str, experiment: str, key: str, seeds: list[int]) -> dict[int, str]:
    """seed -> run id of the newest complete training run of `key` (its exp_name) in the store."""
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return {}
    runs = client.search_runs(
        [found.experiment_id],
        f"{COMPLETE_TRAIN_RUNS} and tags.`recolab.exp` = '{key}'",
        max_results=5000,
        order_by=["attributes.start_time ASC"],
    )
    out = {}
    for r in runs:
        seed = int(r.data.params.get("seed", -1))
        if seed in seeds:
            out[seed] = r.info.run_id
    return out


def sweep(part: str, m: Method, seeds: list[int], uri: str, artifacts: str | None, extra) -> None:
    spec = PARTS[part]
    run_sweep(
        "debias",
        f"{part}-{m.key}",
        [
            *m.overrides,
            *spec.common,
            *LEAN,
            *extra,
            f"seed={','.join(map(str, seeds))}",
            f"experiment_name={spec.experiment}",
            f"exp_name={m.key}",
            f"tags=[debias,{part},{m.key}]",
            f"logger.mlflow.tracking_uri={uri}",
            *([f"logger.mlflow.artifact_location={artifacts}"] if artifacts else []),
        ],
    )


def compare_command(part: str, c: Comparison, uri: str) -> list[str]:
    spec = PARTS[part]
    return _compare_command(
        uri=uri,
        experiment=spec.experiment,
        settings=c.methods,
        baseline=c.baseline,
        metrics=spec.metrics,
        out_dir=OUT / f"{part}-{c.name}",
        title=c.title,
    )


def run_compare(part: str, c: Comparison, uri: str) -> None:
    log_path = ROOT / "outputs" / "debias" / f"compare-{part}-{c.name}.log"
    _run_compare(compare_command(part, c, uri), log_path)


# ---- results.md, from the comparison files (and, for two tables, the runs) ----


def _shell(arg: str) -> str:
    return f'"{arg}"' if any(ch in arg for ch in " [{'*") else arg


def summary_table(part: str) -> str:
    """One row per method, one column per metric: mean over seeds [95% t interval] (n)."""
    spec = PARTS[part]
    data = _load(OUT / f"{part}-{spec.comparisons[0].name}" / "comparison.json")
    rows = {(r["config"], r["metric"]): r for r in data["records"]}
    shown = {m: label for m, label in spec.metrics.items() if m not in data.get("constant", {})}
    lines = [
        "| method | `exp_name` | n | " + " | ".join(shown.values()) + " |",
        "|---|---|---:|" + "---:|" * len(shown),
    ]
    for m in spec.methods:
        cells, n = [], "-"
        for metric in shown:
            r = rows.get((m.key, metric))
            cells.append(
                "-"
                if r is None
                else f"{_num(r['mean'])} [{_num(r['ci_low'])}, {_num(r['ci_high'])}]"
            )
            if r is not None:
                n = str(r["n"])
        lines.append(f"| {m.label} | `{m.key}` | {n} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    for metric, value in data.get("constant", {}).items():
        text += f"\n\n`{metric}` is {value} in every run (the same test rows)."
    return text


def comparison_table(part: str, c: Comparison, uri: str) -> str:
    spec = PARTS[part]
    data = _load(OUT / f"{part}-{c.name}" / "comparison.json")
    labels = {m.key: m.label for m in spec.methods}
    lines = [
        "| method | metric | test | n | mean [95% CI] | diff | 95% CI of diff | p | p (Holm) | |",
        "|---|---|---|---:|---|---:|---|---:|---:|---|",
    ]
    metric_order = {m: i for i, m in enumerate(spec.metrics)}
    method_order = {m.key: i for i, m in enumerate(spec.methods)}
    records = sorted(
        (r for r in data["records"] if r["diff"] is not None),
        key=lambda r: (
            metric_order.get(r["metric"], 99),
            method_order.get(r["config"], 99),
            r["test"] or "",
        ),
    )
    for r in records:
        lines.append(
            f"| {labels.get(r['config'], r['config'])} | {r['metric']} | {r['test']} | {r['n']} | "
            f"{_num(r['mean'])} {_ci(r['ci_low'], r['ci_high'])} | {_num(r['diff'])} | "
            f"{_ci(r['diff_ci_low'], r['diff_ci_high'])} | {_p(r['p_value'])} | {_p(r['p_holm'])} | "
            f"{_verdict(r['within_noise'], r['p_holm'])} |"
        )
    methods = sorted({r["method"] for r in data["records"] if r["test"]})
    command = " ".join(_shell(a) for a in ["python", *compare_command(part, c, uri)[1:]])
    return (
        f"### {c.title}\n\n"
        f"Baseline `{data['baseline']}` ({labels.get(data['baseline'], '')}); tests: "
        + "; ".join(methods)
        + f". Holm across the {len(c.methods) - 1} method(s) compared, per metric and test. "
        f"From `comparisons/{part}-{c.name}/comparison.json`, written by\n\n```\n"
        + command.replace(str(ROOT) + "/", "")
        + "\n```\n\n"
        + "\n".join(lines)
    )


def position_curves(uri: str) -> str:
    """The learned position curves (relative to position 1) next to the true one, from each
    run's report/metrics.json: a table and position_curve.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = PARTS["position"]
    client = MlflowClient(tracking_uri=uri)
    curves: dict[str, list[list[float]]] = {}
    truth = None
    with tempfile.TemporaryDirectory() as tmp:
        for m in spec.methods:
            if m.key == "pos_no_head":
                continue
            for _, run_id in sorted(latest_runs(uri, spec.experiment, m.key, SEEDS).items()):
                dst = Path(tmp) / run_id
                dst.mkdir()
                path = client.download_artifacts(run_id, "report/metrics.json", str(dst))
                effect = json.loads(Path(path).read_text()).get("position_effect", {}).get("click")
                if effect:
                    curves.setdefault(m.key, []).append(effect["learned"])
                    truth = effect.get("true") or truth
    if not curves or truth is None:
        return "(no position curves found in the runs' reports)"
    positions = np.arange(1, len(truth) + 1)
    labels = {m.key: m.label for m in spec.methods}
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(positions, truth, "o-", color="k", label="true examination (gt_examination)")
    for key, values in curves.items():
        v = np.asarray(values)
        ax.errorbar(
            positions,
            v.mean(0),
            yerr=v.std(0, ddof=1) if len(v) > 1 else None,
            fmt="s--",
            capsize=3,
            label=f"{labels[key]} (learned, mean +- std over {len(v)} seeds)",
        )
    ax.set(
        xlabel="display position",
        ylabel="relative to position 1",
        title="position effect: learned vs true",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "position_curve.png", dpi=110)
    plt.close(fig)
    (OUT / "position-curves.json").write_text(
        json.dumps(
            {
                "true": truth,
                "learned": curves,
                "runs_per_method": {k: len(v) for k, v in curves.items()},
            },
            indent=2,
        )
        + "\n"
    )
    head = ["position", "true", *(f"{labels[k]} (learned)" for k in curves)]
    lines = ["| " + " | ".join(head) + " |", "|---:|" + "---:|" * (len(head) - 1)]
    for i, p in enumerate(positions):
        cells = []
        for values in curves.values():
            t = S.t_summary(np.asarray(values)[:, i])
            outside = i > 0 and not (t.ci_low <= truth[i] <= t.ci_high)
            cells.append(f"{t.mean:.3f} [{t.ci_low:.3f}, {t.ci_high:.3f}]{' †' if outside else ''}")
        lines.append(f"| {p} | {truth[i]:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def served_zeros(uri: str, part: str = "duration") -> str:
    """For the D2Q runs: the share of test rows with zero watch time, and of served predictions
    that are 0. Rebuilds each run's best checkpoint (in its run folder) as `recolab evaluate`
    does and predicts the test split."""
    import torch
    from hydra.utils import instantiate

    from recolab.checkpoint_config import check_stored_config
    from recolab.compose import build
    from recolab.evaluate import load_checkpoint

    spec = PARTS[part]
    client = MlflowClient(tracking_uri=uri)
    lines = [
        "| method | seed | duration groups used | test rows with watch time 0 | served predictions equal to 0 |",
        "|---|---:|---:|---:|---:|",
    ]
    for m in spec.methods:
        if not m.key.endswith("d2q"):
            continue
        for seed, run_id in sorted(latest_runs(uri, spec.experiment, m.key, SEEDS).items()):
            out_dir = Path(client.get_run(run_id).data.tags["recolab.output_dir"])
            ckpt_path = next(iter(sorted((out_dir / "checkpoints").glob("epoch*.ckpt"))), None)
            if ckpt_path is None:
                continue
            ckpt = load_checkpoint(str(ckpt_path))
            # as `recolab evaluate` reads it: checked, and an older recolab's keys translated
            cfg = check_stored_config(ckpt["recolab"]["config"], ckpt_path)
            dm = instantiate(cfg.data)
            dm.load_state_dict(ckpt["recolab"]["data_state"])
            dm.setup("test")
            _, module = build(cfg, dm)
            module.load_state_dict(ckpt["state_dict"])
            module.eval()
            test = dm.data["test"]
            with torch.no_grad():
                pred = module.heads["watch_time"].predict(
                    module(test["features"])["watch_time"], test["meta"]
                )
            y = test["labels"]["watch_time"]
            used = int(module.heads["watch_time"].groups_used)
            lines.append(
                f"| {m.label} | {seed} | {used} | {float((y == 0).float().mean()):.3f} | "
                f"{float((pred == 0).float().mean()):.3f} |"
            )
    return "\n".join(lines)


INTRO = {
    "position": (
        f"## Position bias, synthetic world ({' '.join(WORLD)})\n\n"
        "Relevance recovered: `truth_xauc` is the XAUC of the served click score against the world's\n"
        "`gt_relevance` (the share of test-row pairs with different relevance that the score orders the\n"
        "same way); `truth_xgauc` the same within each user. AUC and GAUC are against the logged clicks."
    ),
    "kuairand": (
        "## Duration bias, KuaiRand-27K liked-or-hated subset\n\n"
        "XAUC, XGAUC (per user) and MAE of the served watch time (seconds) against the logged watch time."
    ),
    "open_bandit": (
        "## Position bias, Open Bandit (trained on the bts log, tested on the random log)"
    ),
    "duration": (
        f"## Duration bias, synthetic world ({' '.join(WORLD)})\n\n"
        "XAUC, XGAUC (per user) and MAE of the served watch time (seconds) against the logged watch\n"
        "time; `truth XAUC` of the method's duration-free score against `gt_interest` (the world's\n"
        "interest without duration bias): the predicted quantile for D2Q (Res-D2Q: without its\n"
        "duration term), the implied watch ratio (prediction / duration) for the regressions."
    ),
}


def section(part: str, uri: str) -> str:
    spec = PARTS[part]
    out = [
        INTRO[part],
        f"MLflow experiment `{spec.experiment}`; seeds {','.join(map(str, SEEDS))}. Cells: mean over "
        f"seeds [95% t interval], from `comparisons/{part}-{spec.comparisons[0].name}/comparison.json`.\n\n"
        + summary_table(part),
    ]
    if part == "position":
        out.append(
            "The position effect each head learned, relative to position 1 (PAL: p(seen | position);\n"
            "shallow tower: exp(bias_p - bias_1), the click-odds ratio), next to the world's examination\n"
            "curve `position ** -0.8` (`position_curve.png`; from each run's `report/metrics.json`,\n"
            "kept in `comparisons/position-curves.json`). Cells: mean over the seeds [95% t interval];\n"
            "† where the true value lies outside the interval:\n\n" + position_curves(uri)
        )
    if part == "duration":
        out.append(
            "D2Q serves a watch time through its duration group's quantile function, which is flat at\n"
            "0 over the share of impressions never watched (the world's unexamined ones); the best\n"
            "checkpoints, predicting the test split again:\n\n" + served_zeros(uri)
        )
    out += [comparison_table(part, c, uri) for c in spec.comparisons]
    return "\n\n".join(out)


TIMINGS = OUT / "timings.json"


def machine() -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line),
        platform.processor() or "unknown CPU",
    )
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), shared with other jobs; one torch thread per process"
    )


def record_timing(part: str, key: str, seeds: list[int], seconds: float, command: str) -> None:
    """A sweep's training time, kept beside the comparisons so --tables-only can state it; a
    resumed sweep (fewer seeds) adds to the method's earlier time."""
    data = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}
    entry = data.setdefault(part, {}).get(key)
    if entry is None or len(seeds) == len(SEEDS):
        entry = {"training_s": 0, "seeds": []}
    entry["training_s"] += round(seconds)
    entry["seeds"] = sorted(set(entry["seeds"]) | set(seeds))
    entry["command"] = command
    entry["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    entry["machine"] = machine()
    data[part][key] = entry
    TIMINGS.parent.mkdir(parents=True, exist_ok=True)
    TIMINGS.write_text(json.dumps(data, indent=2) + "\n")


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
        "--methods",
        nargs="+",
        help="train only these method keys (e.g. pos_pal); compare takes all",
    )
    ap.add_argument(
        "--store",
        default="outputs/debias/mlflow",
        help="folder of this experiment's MLflow store (mlflow.db, mlartifacts/), relative to "
        "the repository; MLFLOW_TRACKING_URI wins where set",
    )
    ap.add_argument(
        "--extra", nargs="*", default=[], help="more train overrides (a smoke test; not the tables)"
    )
    ap.add_argument(
        "--seeds", nargs="+", type=int, default=SEEDS, help="a smoke test's seeds (not the tables)"
    )
    args = ap.parse_args()
    SEEDS[:] = args.seeds
    uri, artifacts = store(args.store)
    start = time.time()
    command = "python experiments/debias/run.py" + (
        f" {' '.join(sys.argv[1:])}" if sys.argv[1:] else ""
    )
    timings: dict[str, list[float]] = {}
    order = [p for p in PARTS if p in args.parts]
    for part in order:
        spec = PARTS[part]
        t = time.time()
        if not args.tables_only:
            for m in spec.methods:
                if args.methods is not None and m.key not in args.methods:
                    continue
                todo = [
                    s for s in SEEDS if s not in latest_runs(uri, spec.experiment, m.key, SEEDS)
                ]
                if todo:
                    began = time.time()
                    sweep(part, m, todo, uri, artifacts, args.extra)
                    if not args.extra:
                        record_timing(part, m.key, todo, time.time() - began, command)
                else:
                    print(f"{part}/{m.key}: seeds {SEEDS} done, not trained again", flush=True)
        timings[part] = [time.time() - t]
        t = time.time()
        for c in spec.comparisons:
            run_compare(part, c, uri)
        timings[part].append(time.time() - t)
        print(
            f"{part}: training {timings[part][0] / 60:.1f} min, comparisons {timings[part][1]:.0f} s",
            flush=True,
        )
    out = HERE / "results.md"
    previous = out.read_text() if out.exists() else ""
    sections = {part: section(part, uri) for part in order}
    for part in PARTS:  # keep the sections of parts not run this time
        marker = f"<!-- part: {part} -->"
        if part not in sections and marker in previous:
            sections[part] = previous.split(marker, 1)[1].split("<!-- end -->", 1)[0].strip()
    took = "; ".join(
        f"{p}: "
        + ("" if args.tables_only else f"training {a / 60:.1f} min (seeds not yet in the store), ")
        + f"comparisons {b:.0f} s"
        for p, (a, b) in timings.items()
    )
    trained = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}
    per_part = {p: sum(t["training_s"] for t in trained[p].values()) for p in PARTS if p in trained}
    training = "\n".join(
        f"- {p}: {s / 60:.1f} min of training, finished "
        + max(t["finished"] for t in trained[p].values())
        for p, s in per_part.items()
    )
    total = sum(per_part.values()) / 60
    text = (
        "# Debiasing results\n\n"
        f"Written by `{command}` ({took}; {time.time() - start:.0f} s in all), from the\n"
        "comparison files under `comparisons/`. The training behind them, by "
        "`python experiments/debias/run.py`\n"
        f"({machine()}; per sweep in `comparisons/timings.json`):\n\n{training}\n\n"
        f"Training in all: {total:.0f} min. A difference is significant where its 95% interval\n"
        "leaves out 0, within noise where it covers 0; `seeds`: paired t over the seeds (training\n"
        "noise); `users`: paired bootstrap over test users pooled over the seed-matched runs (test-set\n"
        "noise, for metrics with per-user values: GAUC, XGAUC). Holm across the methods compared\n"
        'with the same baseline, per metric and test; "significant, not after Holm" where the interval\n'
        "leaves out 0 but Holm's p is 0.05 or more.\n\n"
        + "\n\n".join(
            f"<!-- part: {p} -->\n{sections[p]}\n<!-- end -->" for p in PARTS if p in sections
        )
        + "\n"
    )
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
