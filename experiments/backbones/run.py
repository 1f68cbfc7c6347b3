"""Ranker backbones of issue 24: MMoE against MMoE on DCN-V2's cross network and MMoE with DIN's
target attention, from one command (README.md beside this file is written by it).

    python experiments/backbones/run.py                     # every part, then README.md
    python experiments/backbones/run.py --parts census      # some parts (select, synthetic, history, census)
    python experiments/backbones/run.py --tables-only       # compare again and rebuild README.md

- select: the cross network's variant chosen on validation only (`recolab select ... rerun=false`
  on val/loss, one run per candidate at seed 100, never a table seed): full rank (eq. 1) or the
  mixture of 4 low-rank experts (r = 32, ReLU; eq. 3-4), stacked under MMoE's experts, once on the
  synthetic world (used for both synthetic parts) and once on Census-Income.
- synthetic: the synthetic short-video world (`+exp=mmoe`, `+exp=mmoe_dcnv2`, `+exp=mmoe_din`).
- history: the same three on the world whose relevance depends on the history item by item
  (`++data.history_affinity=2.0`; src/recolab/data/synthetic_video.py).
- census: Census-Income (`+exp=census_mmoe`, `+exp=census_mmoe_dcnv2`); no history there, so no
  DIN.

The synthetic world is the debias experiment's (2,000 users, 1,000 items, 200,000 impressions,
batch 2048, Adam at 0.003; experiments/debias/run.py), trained for 3 epochs (the trainer's
default; debias trains 4) to fit the time; Census-Income the census_* experiments' settings.
DIN's activation unit is the paper's (one hidden layer of 36, PReLU), not tuned. Each setting is
one `python -m recolab train -m ... seed=1,2,3,4,5` sweep into this experiment's own MLflow store
(`--store`, default outputs/backbones/mlflow), under the issue-24 training lock
(/tmp/h/train.lock, when it exists); a (setting, seed) already tracked is not trained again. Then
`python -m recolab compare` per part, against MMoE: paired t over seeds, Holm across the settings
compared, per metric.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/_common.py
from _common import (  # noqa: E402
    COMPLETE_TRAIN_RUNS,
    QUIET,
    ROOT,
    ci,
    compare_command,
    load_json,
    num,
    p_value,
    run_compare,
    store,
    verdict,
)

HERE = Path(__file__).resolve().parent
OUT = HERE / "comparisons"
SELECTION = HERE / "selection"
SEEDS = [1, 2, 3, 4, 5]
SELECT_SEED = 100
LOCK = Path("/tmp/h/train.lock")
LEAN = ["log_model=false", "log_checkpoints=false"]
EXTRA: list[str] = []
WORLD = [
    "data.num_users=2000",
    "data.num_items=1000",
    "data.num_impressions=200000",
    "data.batch_size=2048",
    "module.lr=0.003",
    "trainer.max_epochs=3",
]
HISTORY = ["++data.history_affinity=2.0"]  # not in configs/data/synthetic_video.yaml: added
#: The cross network's candidates: the paper's two forms (Sec. 3), both stacked.
CANDIDATES = {
    "full": ["model.embedding.interaction.low_rank=null"],
    "mixture": [
        "model.embedding.interaction.low_rank=32",
        "model.embedding.interaction.num_experts=4",
        "model.embedding.interaction.activation=relu",
    ],
}
SYNTHETIC_METRICS = ["test/auc/*", "test/gauc/*", "test/logloss/*", "test/xauc/*"]
CENSUS_METRICS = ["test/auc/*", "test/logloss/*"]


@dataclass
class Setting:
    key: str  # exp_name of the runs
    exp: str  # the +exp= file
    extra: list[str]


@dataclass
class Part:
    experiment: str  # MLflow experiment
    base: list[str]  # overrides of every setting
    settings: list[Setting]
    baseline: str
    metrics: list[str]
    select: str  # which selection's choice the dcnv2 setting takes
    title: str


PARTS = {
    "synthetic": Part(
        "backbones_synthetic",
        WORLD,
        [
            Setting("mmoe", "mmoe", []),
            Setting("mmoe_dcnv2", "mmoe_dcnv2", []),
            Setting("mmoe_din", "mmoe_din", []),
        ],
        "mmoe",
        SYNTHETIC_METRICS,
        "synthetic",
        "Synthetic world: MMoE + DCN-V2 and MMoE + DIN against MMoE",
    ),
    "history": Part(
        "backbones_history",
        WORLD + HISTORY,
        [
            Setting("mmoe_h", "mmoe", []),
            Setting("mmoe_dcnv2_h", "mmoe_dcnv2", []),
            Setting("mmoe_din_h", "mmoe_din", []),
        ],
        "mmoe_h",
        SYNTHETIC_METRICS,
        "synthetic",
        "History-affinity world (history_affinity=2.0): MMoE + DCN-V2 and MMoE + DIN against MMoE",
    ),
    "census": Part(
        "backbones_census",
        [],
        [
            Setting("census_mmoe", "census_mmoe", []),
            Setting("census_mmoe_dcnv2", "census_mmoe_dcnv2", []),
        ],
        "census_mmoe",
        CENSUS_METRICS,
        "census",
        "Census-Income: MMoE + DCN-V2 against MMoE",
    ),
}
#: The selections: (MLflow experiment, exp file, overrides, the validation metric).
SELECTIONS = {
    "synthetic": ("backbones_select_synthetic", "mmoe_dcnv2", WORLD, "val/loss"),
    "census": ("backbones_select_census", "census_mmoe_dcnv2", [], "val/loss"),
}
TIMINGS: dict[str, float] = {}
#: The order of training: the history world first (where DIN has something to find), Census last.
ORDER = ["history", "synthetic", "census"]
SELECTED: set[str] = set()


def done_seeds(uri: str, experiment: str) -> dict[str, set[int]]:
    """{exp_name: seeds with a complete training run} in the store's `experiment`."""
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return {}
    done: dict[str, set[int]] = {}
    for r in client.search_runs([found.experiment_id], COMPLETE_TRAIN_RUNS, max_results=5000):
        key, seed = r.data.tags.get("recolab.exp"), r.data.params.get("seed")
        if key and seed is not None:
            done.setdefault(key, set()).add(int(seed))
    return done


def sweep(name: str, overrides: list[str], uri: str, artifacts: str | None) -> None:
    """`python -m recolab train -m <overrides>` under the training lock, its log in
    outputs/backbones/<name>.log; exits if it fails. One torch thread per process."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    cmd = [
        sys.executable, "-m", "recolab", "train", "-m", *overrides, *LEAN, *QUIET,
        f"logger.mlflow.tracking_uri={uri}",
        *([f"logger.mlflow.artifact_location={artifacts}"] if artifacts else []),
        f"hydra.sweep.dir=outputs/multiruns/backbones-{name}-{stamp}",
        *EXTRA,
    ]  # fmt: skip
    if LOCK.parent.exists() and shutil.which("flock"):
        cmd = ["flock", str(LOCK), "nice", "-n", "10", *cmd]
    log_path = ROOT / "outputs" / "backbones" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    print("$", " ".join(cmd), f"> {log_path.relative_to(ROOT)}", flush=True)
    start = time.time()
    with open(log_path, "w") as out:
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    TIMINGS[name] = time.time() - start
    print(f"  {TIMINGS[name]:.0f} s, exit {done.returncode}", flush=True)
    if done.returncode:
        sys.exit(f"the sweep failed: see {log_path}")


# ---- the cross network's variant, chosen on validation ----


def select(which: str, uri: str, artifacts: str | None) -> None:
    experiment, exp, base, metric = SELECTIONS[which]
    done = done_seeds(uri, experiment)
    for name, overrides in CANDIDATES.items():
        key = f"select_{name}"
        if SELECT_SEED not in done.get(key, set()):
            sweep(
                f"select-{which}-{name}",
                [f"+exp={exp}", *base, *overrides, f"seed={SELECT_SEED}",
                 f"experiment_name={experiment}", f"exp_name={key}",
                 f"tags=[backbones,select,{key}]"],
                uri,
                artifacts,
            )  # fmt: skip
    out = SELECTION / which
    cmd = [
        sys.executable, "-m", "recolab", "select", f"tracking_uri={uri}",
        f"experiment_name={experiment}", f"exps=[{','.join(f'select_{n}' for n in CANDIDATES)}]",
        f"metric={metric}", "rerun=false",
        f"title='DCN-V2 variant under MMoE ({which}), chosen on {metric}'", f"out_dir={out}",
    ]  # fmt: skip
    log_path = ROOT / "outputs" / "backbones" / f"select-{which}.log"
    print("$", " ".join(cmd), f"> {log_path.relative_to(ROOT)}", flush=True)
    with open(log_path, "w") as f:
        if subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode:
            sys.exit(f"recolab select failed: see {log_path}")


def chosen(which: str) -> tuple[str, list[str]]:
    """The selected candidate's name and its overrides, from selection/<which>/selection.json."""
    path = SELECTION / which / "selection.json"
    if not path.exists():
        sys.exit(f"{path} is missing: run the select part first")
    config = load_json(path)["chosen"]["config"]
    name = next(n for n in CANDIDATES if config.split(", ")[0] == f"select_{n}")
    return name, CANDIDATES[name]


# ---- the tables ----


def train_part(name: str, uri: str, artifacts: str | None) -> None:
    p = PARTS[name]
    done = done_seeds(uri, p.experiment)
    for s in p.settings:
        todo = [k for k in SEEDS if k not in done.get(s.key, set())]
        if not todo:
            continue
        extra = chosen(p.select)[1] if "dcnv2" in s.exp else []
        sweep(
            f"{name}-{s.key}",
            [f"+exp={s.exp}", *p.base, *extra, *s.extra, f"seed={','.join(map(str, todo))}",
             f"experiment_name={p.experiment}", f"exp_name={s.key}",
             f"tags=[backbones,{name},{s.key}]"],
            uri,
            artifacts,
        )  # fmt: skip


def compare_part(name: str, uri: str) -> list[str]:
    p = PARTS[name]
    cmd = compare_command(
        uri=uri,
        experiment=p.experiment,
        settings=[s.key for s in p.settings],
        baseline=p.baseline,
        metrics=p.metrics,
        out_dir=OUT / name,
        title=p.title,
    )
    run_compare(cmd, ROOT / "outputs" / "backbones" / f"compare-{name}.log")
    return cmd


# ---- README.md, from the comparison and selection files ----


def _key(config: str) -> str:
    return config.split(", ")[0]


def _shell(arg: str) -> str:
    return f'"{arg}"' if any(ch in arg for ch in " [{'*") else arg


def _command(cmd: list[str]) -> str:
    return " ".join(_shell(a) for a in ["python", *cmd[1:]]).replace(str(ROOT) + "/", "")


def _signed(x) -> str:
    return "-" if x is None else f"{x:+.4f}"


def part_section(name: str, cmd: list[str]) -> str:
    p = PARTS[name]
    data = load_json(OUT / name / "comparison.json")
    by = {}
    for r in data["records"]:
        by.setdefault((_key(r["config"]), r["metric"]), []).append(r)
    metrics = sorted({r["metric"] for r in data["records"]})
    head = "| setting | n | " + " | ".join(f"`{m}`" for m in metrics) + " |"
    lines = [head, "|---|---:|" + "---|" * len(metrics)]
    for s in p.settings:
        cells, n = [], "-"
        for m in metrics:
            r = by.get((s.key, m), [None])[0]
            n = str(r["n"]) if r else n
            cells.append("-" if r is None else f"{num(r['mean'])} {ci(r['ci_low'], r['ci_high'])}")
        lines.append(f"| `{s.key}` | {n} | " + " | ".join(cells) + " |")
    diffs = [
        "| setting | metric | test | diff vs baseline | 95% CI of diff | p | p (Holm) | |",
        "|---|---|---|---:|---|---:|---:|---|",
    ]
    for r in data["records"]:
        if r["diff"] is None:
            continue
        diffs.append(
            f"| `{_key(r['config'])}` | {r['metric']} | {r['method']} | {_signed(r['diff'])} | "
            f"{ci(r['diff_ci_low'], r['diff_ci_high'])} | {p_value(r['p_value'])} | "
            f"{p_value(r['p_holm'])} | {verdict(r['within_noise'], r['p_holm'])} |"
        )
    verdicts = []
    for s in p.settings:
        if s.key == p.baseline:
            continue
        words = {"beats": [], "loses to": []}
        ties = 0
        for r in data["records"]:
            if _key(r["config"]) != s.key or r["diff"] is None or r["test"] != "seeds":
                continue
            if r["within_noise"] or (r["p_holm"] is not None and r["p_holm"] >= 0.05):
                ties += 1
                continue
            better = (r["diff"] < 0) == ("logloss" in r["metric"])
            words["beats" if better else "loses to"].append(f"`{r['metric']}` {_signed(r['diff'])}")
        said = [f"{w} it on {', '.join(m)}" for w, m in words.items() if m]
        verdicts.append(
            f"- `{s.key}` against `{p.baseline}` (paired t over seeds, Holm): "
            + ("; ".join(said) + f"; ties on the other {ties}" if said else f"ties on all {ties}")
            + " metrics."
        )
    variant = ""
    if any("dcnv2" in s.exp for s in p.settings):
        variant = f" The cross network is the `{chosen(p.select)[0]}` variant chosen on validation (`selection/{p.select}/`)."
    return (
        f"## {p.title}\n\nMLflow experiment `{p.experiment}`; seeds {','.join(map(str, SEEDS))}; "
        f"overrides of every setting: `{' '.join(p.base) or '(none)'}`.{variant} Cells: mean "
        "over seeds [95% t interval].\n\n"
        + "\n".join(lines)
        + "\n\n"
        + "\n".join(verdicts)
        + "\n\nAgainst "
        f"`{p.baseline}` (`seeds`: paired t over seeds; `users`: paired bootstrap over test "
        "users, for the grouped metrics; Holm across the settings compared, per metric). From "
        f"`comparisons/{name}/comparison.json`, written by\n\n```\n{_command(cmd)}\n```\n\n"
        + "\n".join(diffs)
    )


def history_headroom() -> str:
    """How much the history term can add at most: the AUC of the true click probability on the
    history world's last 10% of impressions by time (the time split's test part), against the
    same with the history term taken out (the same rows' relevance in the world without it:
    the two worlds share every draw before the clicks, so their slates are the same)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from recolab.data.synthetic_video import WorldParams, generate

    size = {o.split("=")[0].removeprefix("data."): int(o.split("=")[1]) for o in WORLD[:3]}
    with_term = generate(WorldParams(history_affinity=2.0, **size))
    without = generate(WorldParams(**size))
    col = lambda t, c: t[c].to_numpy().astype(float)  # noqa: E731
    order = np.argsort(col(with_term, "timestamp"), kind="stable")
    test = order[int(0.9 * len(order)) :]
    click, exam = col(with_term, "click")[test], col(with_term, "gt_examination")[test]
    full = roc_auc_score(click, exam * col(with_term, "gt_relevance")[test])
    blind = roc_auc_score(click, exam * col(without, "gt_relevance")[test])
    return (
        "How much there is to find: on the history world's last 10% of impressions by time "
        f"({len(test)} rows), the true click probability has a click AUC of {full:.4f}; with "
        f"the history term taken out (relevance as in the world without it) {blind:.4f}; so a "
        f"model that knew the term exactly would gain {full - blind:+.4f} click AUC over one "
        "that knew everything else (`history_headroom` in run.py)."
    )


def selection_section(which: str) -> str:
    data = load_json(SELECTION / which / "selection.json")
    rows = [
        f"| `{_key(c['config'])}` | {' '.join(CANDIDATES[_key(c['config']).removeprefix('select_')])} "
        f"| {c['n']} | {num(c['mean'])} |"
        for c in data["candidates"]
    ]
    return (
        f"### {which}: `{data['metric']}` ({data['mode']})\n\n"
        "| candidate | overrides | n | validation mean |\n|---|---|---:|---:|\n"
        + "\n".join(rows)
        + f"\n\nChosen: `{_key(data['chosen']['config'])}`: {data['reason']}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    all_parts = ["select", *PARTS]
    ap.add_argument("--parts", nargs="+", choices=all_parts, default=all_parts)
    ap.add_argument("--tables-only", action="store_true", help="no training: compare and write")
    ap.add_argument("--store", default="outputs/backbones/mlflow")
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--extra", nargs="*", default=[], help="overrides for every sweep (smoke)")
    args = ap.parse_args()
    SEEDS[:] = [int(k) for k in args.seeds.split(",")]
    EXTRA[:] = args.extra
    uri, artifacts = store(args.store)
    start = time.time()
    if not args.tables_only:  # each selection just before the first part that needs it
        for name in ORDER:
            if "select" in args.parts and PARTS[name].select not in SELECTED:
                select(PARTS[name].select, uri, artifacts)
                SELECTED.add(PARTS[name].select)
            if name in args.parts:
                train_part(name, uri, artifacts)
    timings = OUT / "timings.json"
    OUT.mkdir(parents=True, exist_ok=True)
    if TIMINGS:
        old = json.loads(timings.read_text()) if timings.exists() else {}
        timings.write_text(
            json.dumps({**old, **{k: round(v) for k, v in TIMINGS.items()}}, indent=2)
        )
    sections = []
    for name in PARTS:
        if (OUT / name).exists() or name in args.parts:
            sections.append(part_section(name, compare_part(name, uri)))
            if name == "history":
                sections[-1] += "\n\n" + history_headroom()
    took = json.loads(timings.read_text()) if timings.exists() else {}
    command = "python experiments/backbones/run.py" + (
        f" {' '.join(sys.argv[1:])}" if sys.argv[1:] else ""
    )
    text = (
        "# Ranker backbones: DCN-V2 and DIN under MMoE\n\n"
        f"Written by `{command}` ({time.time() - start:.0f} s; {os.cpu_count()} CPU cores shared "
        "with other jobs, one torch thread per run, sweeps one after another) from the files under "
        "`comparisons/` and `selection/`; how the runs were made is in `run.py`'s docstring. "
        "Training time per sweep, in seconds (wall, under the shared training lock; "
        f"`comparisons/timings.json`): {', '.join(f'{k} {v}' for k, v in took.items()) or '-'}. "
        "A difference is significant where its 95% interval leaves out 0, within noise where "
        "it covers 0.\n\n"
        "## The cross network's variant, chosen on validation\n\n"
        "One run per candidate (seed 100, not a table seed), `recolab select ... rerun=false`; "
        "validation only.\n\n"
        + "\n\n".join(selection_section(w) for w in SELECTIONS if (SELECTION / w).exists())
        + "\n\n"
        + "\n\n".join(sections)
        + "\n"
    )
    (HERE / "README.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
