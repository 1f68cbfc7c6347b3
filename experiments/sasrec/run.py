"""SASRec against the two-tower recaller, on ml-latest-small and the synthetic world (issue 24
items 4 and 5), from one command; README.md beside this file is the page it writes.

    python experiments/sasrec/run.py                     # everything, then README.md
    python experiments/sasrec/run.py --parts select ml   # some parts
    python experiments/sasrec/run.py --tables-only       # compare the tracked runs again, rebuild README.md
    python experiments/sasrec/run.py --lock /tmp/train.lock   # each training run under `flock`

Parts:

- select: SASRec's own settings on ml-latest-small, chosen on validation only: one run per
  candidate (`model.num_blocks`, `model.dropout`) in CANDIDATES at candidate seed 11 (not a
  table seed), MLflow experiment `sasrec_ml_select`, then `python -m recolab select exps=[sasrec]
  metric=val/recall_at_50 rerun=false` (output: `selection/`). One head throughout (the paper's).
- ml, synthetic: `+exp=sasrec` at the chosen settings, `+exp=two_tower_logq` and `+exp=mind`
  (MIND as configs/ have it: 2 interests), seeds 1-5, on ml-latest-small and on the default
  synthetic retrieval world (not tuned on it), then `python -m recolab compare` with baseline
  two_tower_logq (the same sampler: a difference is the architecture's), over seeds and over
  test users. The training runs part by part, each part's models in the order listed.
- mixed: SASRec with the mixed sampler (`sampler=mixed`: in-batch + 512 uniform corpus
  negatives, logQ-corrected; Yang et al., WWW 2020) on the synthetic world, seeds 1-5, compared
  with SASRec's in-batch logQ rows.

The settings every recaller shares are pinned to configs/ as they stood when these runs were made
(SHARED: cosine similarity, temperature 0.1, Adam lr 0.005, batch 512, history 20, at most 8
epochs with early stopping on `val/recall_at_50`), so a later change of a config does not split
a table. Every run is a `python -m recolab train -m ...` with `log_model=false
log_checkpoints=false`, in this experiment's own MLflow store (`--store`, default
outputs/sasrec/mlflow; `MLFLOW_TRACKING_URI` wins where set). A (setting, seed) with a complete
run in the store is not trained again, so a stopped run resumes with the same command. One torch
thread per process. README.md is written from the files under `comparisons/` and `selection/`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
LOGS = ROOT / "outputs" / "sasrec"
ML_PATH = ROOT.parent / "shared" / "data" / "ml-latest-small"
ML = ["data=movielens", f"data.path={ML_PATH}"]
SEEDS = [1, 2, 3, 4, 5]
CANDIDATE_SEED = 11
#: (model.num_blocks, model.dropout): the paper's 2 blocks and dropout 0.2 (its MovieLens-1M
#: setting) and its sparse-data dropout 0.5, against one block.
CANDIDATES = [(1, 0.2), (1, 0.5), (2, 0.2), (2, 0.5)]
#: SASRec's settings as configs/model/sasrec.yaml has them (the paper's).
TODAY = {"model.num_blocks": "2", "model.dropout": "0.2"}
#: The settings every recaller shares, as configs/ had them when these runs were made.
SHARED = [
    "module.sampler.similarity=cosine",
    "module.sampler.temperature=0.1",
    "module.lr=0.005",
    "data.batch_size=512",
    "data.history_len=20",
    "trainer.max_epochs=8",
]
LEAN = ["log_model=false", "log_checkpoints=false"]
BASELINE = "two_tower_logq"
#: (label, metric suffix): each run logs test/<m>, baseline_popular/<m>, baseline_random/<m>.
METRICS = [
    ("recall@20", "recall_at_20"),
    ("recall@50", "recall_at_50"),
    ("recall@100", "recall_at_100"),
    ("NDCG@50", "ndcg_at_50"),
    ("MRR", "mrr"),
    ("retrieved pop.@50", "retrieved_popularity_at_50"),
]
COMPARE_METRICS = [
    *(f"test/{m}" for _, m in METRICS),
    *(f"baseline_popular/{m}" for _, m in METRICS),
    "val/recall_at_50",
]


@dataclass
class Part:
    experiment: str  # the MLflow experiment
    data: list[str]  # data overrides
    settings: dict[str, list[str]]  # exp_name -> overrides
    baseline: str
    title: str


def parts(choice: dict[str, str]) -> dict[str, Part]:
    """The table parts, SASRec at `choice` (model.* -> value)."""
    sasrec = ["+exp=sasrec", *(f"{k}={v}" for k, v in choice.items())]
    return {
        "ml": Part(
            "sasrec_ml",
            ML,
            {"two_tower_logq": ["+exp=two_tower_logq"], "sasrec": sasrec, "mind": ["+exp=mind"]},
            BASELINE,
            "ml-latest-small: SASRec and MIND against two_tower_logq (in-batch softmax + logQ)",
        ),
        "synthetic": Part(
            "sasrec_synthetic",
            [],
            {"two_tower_logq": ["+exp=two_tower_logq"], "sasrec": sasrec, "mind": ["+exp=mind"]},
            BASELINE,
            "synthetic world: SASRec and MIND against two_tower_logq (in-batch softmax + logQ)",
        ),
        "mixed": Part(
            "sasrec_synthetic",
            [],
            {"sasrec": sasrec, "sasrec_mns": [*sasrec, "sampler=mixed"]},
            "sasrec",
            "synthetic world: SASRec, mixed negatives against in-batch + logQ",
        ),
    }


# ---- training ----

#: `--lock`: each training command runs as `flock <lock> nice -n 10 ...` (a machine shared by
#: several experiments); None: directly.
LOCK: str | None = None


def done_seeds(uri: str, experiment: str, exp_name: str) -> set[int]:
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return set()
    runs = client.search_runs(
        [found.experiment_id],
        f"{COMPLETE_TRAIN_RUNS} and tags.`recolab.exp` = '{exp_name}'",
        max_results=5000,
    )
    return {int(r.data.params["seed"]) for r in runs if "seed" in r.data.params}


def tracking(uri: str, artifacts: str | None, experiment: str) -> list[str]:
    return [
        f"experiment_name={experiment}",
        f"logger.mlflow.tracking_uri={uri}",
        *([f"logger.mlflow.artifact_location={artifacts}"] if artifacts else []),
    ]


def train(name: str, overrides: list[str]) -> float:
    """One `python -m recolab train -m` sweep (under `LOCK` where given); its output in
    outputs/sasrec/<name>.log; exits if it fails. Returns its wall time in seconds."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    cmd = [
        sys.executable,
        "-m",
        "recolab",
        "train",
        "-m",
        *overrides,
        *LEAN,
        *QUIET,
        f"hydra.sweep.dir=outputs/multiruns/sasrec-{name}-{stamp}",
    ]
    if LOCK:
        cmd = ["flock", LOCK, "nice", "-n", "10", *cmd]
    log_path = LOGS / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    print("$", " ".join(cmd), f"> {log_path.relative_to(ROOT)}", flush=True)
    start = time.time()
    with open(log_path, "w") as out:
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    took = time.time() - start
    print(f"  {took:.0f} s (waiting for the lock included), exit {done.returncode}", flush=True)
    if done.returncode:
        sys.exit(f"the sweep failed: see {log_path}")
    return took


def train_setting(
    part: str, p: Part, exp_name: str, uri: str, artifacts: str | None, seeds: list[int]
) -> None:
    """Each missing seed as its own run (so that a shared lock is released between runs)."""
    for seed in seeds:
        if seed in done_seeds(uri, p.experiment, exp_name):
            continue
        train(
            f"{part}-{exp_name}-seed{seed}",
            [
                *p.settings[exp_name],
                *p.data,
                *SHARED,
                f"seed={seed}",
                f"exp_name={exp_name}",
                f"tags=[sasrec_experiment,{part},{exp_name}]",
                *tracking(uri, artifacts, p.experiment),
            ],
        )


# ---- selection ----

SELECT_EXPERIMENT = "sasrec_ml_select"


def candidate_name(blocks: int, dropout: float) -> str:
    return f"select-blocks{blocks}-dropout{dropout:g}"


def run_select(uri: str, artifacts: str | None) -> dict[str, str]:
    """Train the candidates, `recolab select` on val/recall_at_50; returns the chosen settings."""
    client = MlflowClient(tracking_uri=uri)
    for blocks, dropout in CANDIDATES:
        found = client.get_experiment_by_name(SELECT_EXPERIMENT)
        if found is not None and client.search_runs(
            [found.experiment_id],
            f"{COMPLETE_TRAIN_RUNS} and params.`model.num_blocks` = '{blocks}' "
            f"and params.`model.dropout` = '{dropout}' and params.seed = '{CANDIDATE_SEED}'",
        ):
            continue
        train(
            candidate_name(blocks, dropout),
            [
                "+exp=sasrec",
                *ML,
                *SHARED,
                f"model.num_blocks={blocks}",
                f"model.dropout={dropout}",
                f"seed={CANDIDATE_SEED}",
                "exp_name=sasrec",
                "tags=[sasrec_experiment,select,sasrec]",
                *tracking(uri, artifacts, SELECT_EXPERIMENT),
            ],
        )
    return select(uri)


def select_command(uri: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "recolab",
        "select",
        f"tracking_uri={uri}",
        f"experiment_name={SELECT_EXPERIMENT}",
        "exps=[sasrec]",
        f"filter=\"params.seed = '{CANDIDATE_SEED}'\"",
        "metric=val/recall_at_50",
        "rerun=false",
        "title='SASRec on ml-latest-small: blocks and dropout on val/recall_at_50'",
        f"out_dir={SELECTION}",
    ]


def select(uri: str) -> dict[str, str]:
    cmd = select_command(uri)
    log_path = LOGS / "select.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print("$", " ".join(cmd[1:]), f"> {log_path.relative_to(ROOT)}", flush=True)
    with open(log_path, "w") as f:
        done = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"recolab select failed: see {log_path}")
    (SELECTION / "command.txt").write_text(shell(cmd) + "\n")
    return chosen()


def chosen() -> dict[str, str]:
    """The chosen model.* settings, from selection/selection.json."""
    path = SELECTION / "selection.json"
    if not path.exists():
        sys.exit(f"{path} is missing: run the select part first")
    params = load_json(path)["chosen"]["params"]
    return {k: params.get(k, TODAY[k]) for k in TODAY}


# ---- comparisons ----


def compare(name: str, p: Part, uri: str) -> None:
    cmd = compare_command(
        uri=uri,
        experiment=p.experiment,
        settings=list(p.settings),
        baseline=p.baseline,
        metrics=COMPARE_METRICS,
        out_dir=OUT / name,
        title=p.title,
    )
    run_compare(cmd, LOGS / f"compare-{name}.log")
    (OUT / name / "command.txt").write_text(shell(cmd) + "\n")


def shell(cmd: list[str]) -> str:
    def quote(a: str) -> str:
        return f'"{a}"' if any(ch in a for ch in " [{'*") and not a.startswith("filter=") else a

    return " ".join(quote(a) for a in ["python", *cmd[1:]]).replace(str(ROOT) + "/", "")


# ---- README.md, from the files under comparisons/ and selection/ ----


def _records(name: str) -> list[dict]:
    path = OUT / name / "comparison.json"
    return load_json(path)["records"] if path.exists() else []


def _summary(records: list[dict], config: str, metric: str) -> dict | None:
    return next(
        (r for r in records if r["config"].split(", ")[0] == config and r["metric"] == metric),
        None,
    )


def _cell(r: dict | None) -> str:
    return "-" if r is None else f"{num(r['mean'])} {ci(r['ci_low'], r['ci_high'])}"


def table(name: str, p: Part) -> str:
    records = _records(name)
    if not records:
        return f"(not run: `comparisons/{name}/` is missing)"
    lines = [
        "| model | n | " + " | ".join(label for label, _ in METRICS) + " |",
        "|---|---:|" + "---:|" * len(METRICS),
    ]
    for key in p.settings:
        first = _summary(records, key, f"test/{METRICS[1][1]}")
        n = "-" if first is None else str(first["n"])
        cells = [_cell(_summary(records, key, f"test/{m}")) for _, m in METRICS]
        lines.append(f"| `{key}` | {n} | " + " | ".join(cells) + " |")
    popular = [_summary(records, p.baseline, f"baseline_popular/{m}") for _, m in METRICS]
    lines.append(
        "| most popular | - | "
        + " | ".join("-" if r is None else num(r["mean"]) for r in popular)
        + " |"
    )
    lines += [
        "",
        f"Differences from `{p.baseline}` (paired t over seeds; paired bootstrap over test users, "
        "B = 2000), 95% intervals, Holm across the settings compared (per metric and test):",
        "",
        "| model | metric | test | diff | 95% CI | p | p (Holm) | |",
        "|---|---|---|---:|---|---:|---:|---|",
    ]
    for r in records:
        if r["diff"] is None or not r["metric"].startswith("test/"):
            continue
        lines.append(
            f"| `{r['config'].split(', ')[0]}` | {r['metric']} | {r['test']} | "
            f"{r['diff']:+.4f} | {ci(r['diff_ci_low'], r['diff_ci_high'])} | "
            f"{p_value(r['p_value'])} | {p_value(r['p_holm'])} | "
            f"{verdict(r['within_noise'], r['p_holm'])} |"
        )
    return "\n".join(lines)


def findings(name: str, p: Part, where: str) -> list[str]:
    out = []
    for key in p.settings:
        if key == p.baseline:
            continue
        for label, m in METRICS:
            for test in ("seeds", "users"):
                r = next(
                    (
                        r
                        for r in _records(name)
                        if r["config"].split(", ")[0] == key
                        and r["metric"] == f"test/{m}"
                        and r["test"] == test
                    ),
                    None,
                )
                if r is None or r["diff"] is None or m == "retrieved_popularity_at_50":
                    continue
                v = verdict(r["within_noise"], r["p_holm"])
                side = (
                    "ties with"
                    if v != "**significant**"
                    else ("beats" if r["diff"] > 0 else "loses to")
                )
                out.append(
                    f"- {where}, {label}, over {test}: `{key}` {side} `{p.baseline}`: "
                    f"{r['diff']:+.4f} {ci(r['diff_ci_low'], r['diff_ci_high'])}, "
                    f"p (Holm) {p_value(r['p_holm'])}: {v}."
                )
    return out


def selection_section() -> str:
    path = SELECTION / "selection.json"
    if not path.exists():
        return "(not run: `selection/selection.json` is missing)"
    s = load_json(path)
    lines = [
        "| model.num_blocks | model.dropout | val/recall@50 (seed 11) |",
        "|---:|---:|---:|",
    ]
    for c in sorted(s["candidates"], key=lambda c: -c["mean"]):
        lines.append(
            f"| {c['params'].get('model.num_blocks', TODAY['model.num_blocks'])} | "
            f"{c['params'].get('model.dropout', TODAY['model.dropout'])} | {num(c['mean'])} |"
        )
    choice = chosen()
    diff = (s.get("runner_up") or {}).get("diff")
    margin = "-" if diff is None else f"{diff:+.4f} (about {round(abs(diff) * 610)} users)"
    same = all(choice[k] == v for k, v in TODAY.items())
    lines += [
        "",
        f"Chosen: {', '.join(f'{k}={v}' for k, v in choice.items())} "
        f"({'the same as' if same else 'not'} configs/model/sasrec.yaml's "
        f"{', '.join(f'{k}={v}' for k, v in TODAY.items())}). Why (`recolab select`): {s['reason']}. "
        f"One candidate seed: a margin of {margin} on 610 validation users is a few users, not a "
        "tested difference.",
        "",
        f"Command: `{(SELECTION / 'command.txt').read_text().strip()}`",
    ]
    return "\n".join(lines)


def shared_agreement() -> str:
    """Whether the shared settings used here agree with those experiments/retrieval chose on
    validation (its selection/shared/<step>/selection.json, where present)."""
    base = ROOT / "experiments" / "retrieval" / "selection" / "shared"
    used = dict(s.split("=", 1) for s in SHARED)
    lines = []
    for step in ("grid", "history"):
        path = base / step / "selection.json"
        if not path.exists():
            lines.append(f"- `{path.relative_to(ROOT)}`: absent.")
            continue
        found = load_json(path)
        params = found["chosen"]["params"]
        differ = {k: v for k, v in params.items() if k in used and used[k] != str(v)}
        agree = "agrees" if not differ else "differs"
        lines.append(
            f"- `{path.relative_to(ROOT)}` chose "
            f"{', '.join(f'{k}={v}' for k, v in params.items())}: this page {agree}"
            + (f" (here {', '.join(f'{k}={used[k]}' for k in differ)})" if differ else "")
            + f". Its reason: {found['reason']}."
        )
    return "\n".join(lines)


def run_times(uri: str) -> str:
    """Each (MLflow experiment, exp_name)'s complete runs and their summed wall time (MLflow start
    to end), also written to comparisons/run_times.json."""
    client = MlflowClient(tracking_uri=uri)
    rows = {}
    for name in (SELECT_EXPERIMENT, "sasrec_ml", "sasrec_synthetic"):
        found = client.get_experiment_by_name(name)
        if found is None:
            continue
        for r in client.search_runs([found.experiment_id], COMPLETE_TRAIN_RUNS, max_results=5000):
            key = f"{name} {r.data.tags.get('recolab.exp')}"
            runs, minutes = rows.get(key, (0, 0.0))
            rows[key] = (runs + 1, minutes + (r.info.end_time - r.info.start_time) / 60000)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "run_times.json").write_text(
        json.dumps({k: {"runs": n, "minutes": round(m, 2)} for k, (n, m) in rows.items()}, indent=2)
    )
    return "; ".join(f"{k}: {n} runs, {m:.1f} min" for k, (n, m) in sorted(rows.items()))


def readme(all_parts: dict[str, Part], uri: str, notes: list[str]) -> None:
    where = {"ml": "ml-latest-small", "synthetic": "synthetic world", "mixed": "synthetic world"}
    found = []
    for name, p in all_parts.items():
        found += findings(name, p, where[name])
    text = f"""# SASRec as a sequential recaller: against two-tower and MIND, ml-latest-small and the synthetic world

Issue 24 items 4 and 5. SASRec (Kang and McAuley, ICDM 2018; `src/recolab/models/recall/sasrec.py`,
`+exp=sasrec`) against `two_tower_logq` and MIND (`+exp=mind`), all trained with the in-batch
softmax and the streaming logQ correction, so a difference is the user encoder's: causal
self-attention over the last 20 items, against the two-tower user MLP over the user id, features
and the mean of those items, and against MIND's capsule-routed interests over them.
Written by `python experiments/sasrec/run.py --tables-only` from the files under `comparisons/`
and `selection/` alone (machine: {platform.platform()}, {os.cpu_count()} cores shared with other
experiments, one torch thread per process; {time.strftime("%Y-%m-%d")}). Runs: MLflow store
`{uri.replace(str(ROOT) + "/", "")}` (experiments `sasrec_ml_select`, `sasrec_ml`,
`sasrec_synthetic`). Every number below comes from `python -m recolab compare` or `python -m
recolab select` (the commands are in `comparisons/<part>/command.txt` and `selection/command.txt`).

Protocol (`recolab.pipelines.recall`): leave-last-out by time per user (last interaction = test,
the one before = validation, the rest = training), every training item ranked for every user
with the user's earlier items excluded, exact top-k; the best validation epoch (val/recall@50) is
tested. Shared settings (pinned, `SHARED` in run.py): {", ".join(f"`{s}`" for s in SHARED)}.
SASRec's own settings (blocks, dropout) were chosen on ml-latest-small validation only (below);
one attention head (the paper's); the synthetic rows use the same settings, not tuned on that
world. 5 seeds (1-5) per row.

## Findings

{chr(10).join(found) if found else "(no comparisons yet)"}

## ml-latest-small

{table("ml", all_parts["ml"])}

## Synthetic world (default retrieval world: 5,000 users, 2,000 items)

{table("synthetic", all_parts["synthetic"])}

## Samplers: SASRec with mixed negatives, synthetic world

{table("mixed", all_parts["mixed"])}

## SASRec's settings, chosen on ml-latest-small validation

{selection_section()}

## The shared settings against experiments/retrieval's validation choice

{shared_agreement()}

## Notes

- Most popular's values are shown beside the models (each run scores it on the same users), not
  tested against them here (experiments/retrieval tests the recallers against it).
- Training time (each run's MLflow start to end, summed; `comparisons/run_times.json`): {run_times(uri)}.
{chr(10).join(f"- {n}" for n in notes)}
"""
    (HERE / "README.md").write_text(text)
    print(f"wrote {HERE / 'README.md'}")


ALL_PARTS = ["select", "ml", "synthetic", "mixed"]


def main() -> None:
    global LOCK
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", nargs="+", choices=ALL_PARTS, default=ALL_PARTS)
    ap.add_argument("--tables-only", action="store_true")
    ap.add_argument("--store", default="outputs/sasrec/mlflow")
    ap.add_argument("--lock", default=None, help="run each training under `flock LOCK`")
    ap.add_argument("--note", action="append", default=[], help="a line for README's notes")
    args = ap.parse_args()
    LOCK = args.lock
    uri, artifacts = store(args.store)
    if not args.tables_only and "select" in args.parts:
        run_select(uri, artifacts)
    all_parts = parts(chosen() if (SELECTION / "selection.json").exists() else TODAY)
    for name in ("ml", "synthetic", "mixed"):
        if name not in args.parts:
            continue
        p = all_parts[name]
        if not args.tables_only:
            for exp_name in p.settings:
                train_setting(name, p, exp_name, uri, artifacts, SEEDS)
        if all(done_seeds(uri, p.experiment, k) for k in p.settings):
            compare(name, p, uri)
    readme(all_parts, uri, args.note)


if __name__ == "__main__":
    main()
