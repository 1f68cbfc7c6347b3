"""The debiasing tables of issue 5, from one command (see README.md beside this file).

    python experiments/debias/run.py                        # every part, then results.md
    python experiments/debias/run.py --parts position       # one part (position, open_bandit, duration, kuairand)
    python experiments/debias/run.py --tables-only          # rebuild results.md from the MLflow runs

Parts, each a list of methods, each method one `python -m recolab train -m ... seed=...` sweep:

- position: MMoE on the synthetic world with no position head, PAL and the shallow tower;
  relevance recovered (test/truth_xauc/click: XAUC of the served score against gt_relevance)
  and the learned position curve next to the world's true examination curve (position_curve.png).
- open_bandit: shared-bottom on Open Bandit, trained on the bts log, AUC on the random log, with
  no head, PAL and the shallow tower.
- duration: MMoE on the synthetic world with D2Q, Res-D2Q and the three regression baselines on
  watch time: XAUC, XGAUC, MAE, and XAUC of the debiased score against gt_interest.
- kuairand: the same five on KuaiRand-27K (no truth there).

Runs go to the project's MLflow store (`mlflow.db`, or `MLFLOW_TRACKING_URI`), one MLflow
experiment per part, each method tagged with its key. The tables keep, per (method, seed), the
latest complete run, so a rerun replaces older runs. Torch runs one thread per process unless
OMP_NUM_THREADS says otherwise (on a small shared machine, threads that wait for each other are
much slower than one).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/_common.py
from _common import cell, latest_tagged_runs, run_sweep  # noqa: E402

HERE = Path(__file__).resolve().parent

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


@dataclass
class Method:
    key: str  # the MLflow tag that marks its runs
    label: str
    overrides: list[str]


@dataclass
class Part:
    experiment: str
    seeds: list[int]
    methods: list[Method]
    common: list[str] = field(default_factory=list)


PARTS = {
    "position": Part(
        "debias_position",
        [1, 2, 3],
        [
            Method("no_head", "no head", ["+exp=mmoe_position"]),
            Method("pal", "PAL", ["+exp=mmoe_pal"]),
            Method("shallow", "shallow tower", ["+exp=mmoe_shallow"]),
        ],
        WORLD,
    ),
    "open_bandit": Part(
        "debias_open_bandit",
        [1, 2, 3, 4, 5],
        [
            Method("no_head", "no head", ["+exp=openbandit_no_head"]),
            Method("pal", "PAL", ["+exp=openbandit_pal"]),
            Method("shallow", "shallow tower", ["+exp=openbandit_shallow"]),
        ],
    ),
    "duration": Part(
        "debias_duration",
        [1, 2, 3],
        [
            Method("wt", "regression on watch time", ["+exp=watch_time_regression"]),
            Method(
                "log_wt",
                "regression on log watch time",
                ["+exp=watch_time_regression", "head=log_watch_time_regression"],
            ),
            Method(
                "ratio",
                "regression on watch ratio",
                ["+exp=watch_time_regression", "head=watch_ratio_regression"],
            ),
            Method("d2q", "D2Q", ["+exp=d2q"]),
            Method("res_d2q", "Res-D2Q", ["+exp=res_d2q"]),
        ],
        WORLD,
    ),
    "kuairand": Part(
        "debias_kuairand",
        [1, 2, 3],
        [
            Method("wt", "regression on watch time", ["+exp=kuairand_watch_time_regression"]),
            Method(
                "log_wt",
                "regression on log watch time",
                ["+exp=kuairand_watch_time_regression", "head=log_watch_time_regression"],
            ),
            Method(
                "ratio",
                "regression on watch ratio",
                ["+exp=kuairand_watch_time_regression", "head=watch_ratio_regression"],
            ),
            Method("d2q", "D2Q", ["+exp=kuairand_d2q"]),
            Method("res_d2q", "Res-D2Q", ["+exp=kuairand_res_d2q"]),
        ],
    ),
}


def sweep(part: str, spec: Part, method: Method) -> None:
    """One `python -m recolab train -m` sweep over the part's seeds; its log goes to outputs/debias/."""
    run_sweep(
        "debias",
        f"{part}-{method.key}",
        [
            *method.overrides,
            *spec.common,
            f"seed={','.join(map(str, spec.seeds))}",
            f"experiment_name={spec.experiment}",
            f"tags=[debias,{part},{method.key}]",
        ],
    )


def latest_runs(spec: Part) -> tuple[pd.DataFrame, MlflowClient]:
    """One row per (method key, seed): the latest complete training run; metrics as columns."""
    return latest_tagged_runs(spec.experiment, [m.key for m in spec.methods], spec.seeds, "method")


def table(spec: Part, df: pd.DataFrame, columns: dict[str, str]) -> str:
    """Markdown: one row per method, one column per metric (mean +- sample std (seeds))."""
    lines = ["| method | " + " | ".join(columns.values()) + " |", "|---|" + "---:|" * len(columns)]
    for m in spec.methods:
        runs = df[df["method"] == m.key]
        lines.append(
            f"| {m.label} | "
            + " | ".join(cell(runs[c]) if c in runs else "-" for c in columns)
            + " |"
        )
    return "\n".join(lines)


def position_curves(spec: Part, df: pd.DataFrame, client: MlflowClient) -> str:
    """The learned position curves (relative to position 1) next to the true one: a table and position_curve.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, list[list[float]]] = {}
    truth = None
    with tempfile.TemporaryDirectory() as tmp:
        for row in df.itertuples():
            if row.method == "no_head":
                continue
            path = client.download_artifacts(row.run_id, "report/metrics.json", tmp)
            effect = json.loads(Path(path).read_text()).get("position_effect", {}).get("click")
            if effect:
                curves.setdefault(row.method, []).append(effect["learned"])
                truth = effect.get("true") or truth
    if not curves or truth is None:
        return "(no position curves found in the runs' reports)"
    positions = np.arange(1, len(truth) + 1)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(positions, truth, "o-", color="k", label="true examination (gt_examination)")
    labels = {m.key: m.label for m in spec.methods}
    for key, values in curves.items():
        v = np.asarray(values)
        ax.errorbar(
            positions,
            v.mean(0),
            yerr=v.std(0, ddof=1) if len(v) > 1 else None,
            fmt="s--",
            capsize=3,
            label=f"{labels[key]} (learned, {len(v)} seeds)",
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
    head = ["position", "true", *(f"{labels[k]} (learned)" for k in curves)]
    lines = ["| " + " | ".join(head) + " |", "|---:|" + "---:|" * (len(head) - 1)]
    for i, p in enumerate(positions):
        lines.append(
            f"| {p} | {truth[i]:.3f} | "
            + " | ".join(cell(np.asarray(v)[:, i]) for v in curves.values())
            + " |"
        )
    return "\n".join(lines)


def served_zeros(
    spec: Part, df: pd.DataFrame, client: MlflowClient, keys: tuple[str, ...] = ("d2q", "res_d2q")
) -> str:
    """For the D2Q runs: the share of test rows with zero watch time, and of served predictions that are 0.

    Rebuilds each run's best checkpoint as `recolab evaluate` does and predicts the test split.
    """
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from recolab.evaluate import load_checkpoint
    from recolab.train import build

    lines = [
        "| method | seed | duration groups used | test rows with watch time 0 | served predictions equal to 0 |",
        "|---|---:|---:|---:|---:|",
    ]
    labels = {m.key: m.label for m in spec.methods}
    for row in df[df["method"].isin(keys)].sort_values(["method", "seed"]).itertuples():
        out_dir = Path(client.get_run(row.run_id).data.tags["recolab.output_dir"])
        ckpt_path = next(iter(sorted((out_dir / "checkpoints").glob("epoch*.ckpt"))), None)
        if ckpt_path is None:
            continue
        ckpt = load_checkpoint(str(ckpt_path))
        cfg = OmegaConf.create(ckpt["recolab"]["config"])
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
            f"| {labels[row.method]} | {row.seed} | {used} | {float((y == 0).float().mean()):.3f} | {float((pred == 0).float().mean()):.3f} |"
        )
    return "\n".join(lines)


def section(part: str) -> str:
    spec = PARTS[part]
    df, client = latest_runs(spec)
    seeds = ",".join(map(str, spec.seeds))
    if part == "position":
        text = (
            f"## Position bias, synthetic world ({' '.join(WORLD)}; seeds {seeds})\n\n"
            "Relevance recovered: `truth_xauc` is the XAUC of the served click score against the world's\n"
            "`gt_relevance` (the share of test-row pairs with different relevance that the score orders the same\n"
            "way); `truth_xgauc` the same within each user. AUC and GAUC are against the logged clicks.\n\n"
            + table(
                spec,
                df,
                {
                    "test/truth_xauc/click": "truth XAUC (relevance)",
                    "test/truth_xgauc/click": "truth XGAUC (relevance)",
                    "test/auc/click": "click AUC",
                    "test/gauc/click": "click GAUC",
                    "test/logloss/click": "click logloss",
                },
            )
            + "\n\nThe position effect each head learned, relative to position 1 (PAL: p(seen | position);\n"
            "shallow tower: exp(bias_p - bias_1), the click-odds ratio), next to the world's examination curve\n"
            "`position ** -0.8` (`position_curve.png`):\n\n" + position_curves(spec, df, client)
        )
    elif part == "open_bandit":
        text = (
            f"## Position bias, Open Bandit (trained on the bts log, tested on the random log; seeds {seeds})\n\n"
            + table(
                spec,
                df,
                {
                    "test/auc/click": "AUC (random log)",
                    "test/logloss/click": "logloss (random log)",
                    "val/auc/click": "AUC (bts validation)",
                },
            )
        )
    elif part == "duration":
        text = (
            f"## Duration bias, synthetic world ({' '.join(WORLD)}; seeds {seeds})\n\n"
            "XAUC, XGAUC (per user) and MAE of the served watch time (seconds) against the logged watch time;\n"
            "`truth XAUC` of the method's duration-free score against `gt_interest` (the world's interest without\n"
            "duration bias): the predicted quantile for D2Q (Res-D2Q: without its duration term), the implied watch\n"
            "ratio (prediction / duration) for the regressions.\n\n"
            + table(
                spec,
                df,
                {
                    "test/xauc/watch_time": "XAUC",
                    "test/xgauc/watch_time": "XGAUC",
                    "test/mae/watch_time": "MAE (s)",
                    "test/truth_xauc/watch_time": "truth XAUC (interest)",
                    "oracle/xauc/watch_time": "oracle XAUC",
                },
            )
            + "\n\nD2Q serves a watch time through its duration group's quantile function, which is flat at 0 over\n"
            "the share of impressions never watched (the world's unexamined ones); the best checkpoints, predicting\n"
            "the test split again:\n\n" + served_zeros(spec, df, client)
        )
    else:
        text = f"## Duration bias, KuaiRand-27K liked-or-hated subset (seeds {seeds})\n\n" + table(
            spec,
            df,
            {
                "test/xauc/watch_time": "XAUC",
                "test/xgauc/watch_time": "XGAUC",
                "test/mae/watch_time": "MAE (s)",
            },
        )
    return text


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    ap.add_argument(
        "--tables-only", action="store_true", help="only rebuild the tables from MLflow"
    )
    ap.add_argument(
        "--methods", nargs="+", help="train only these method keys (e.g. pal); the tables show all"
    )
    args = ap.parse_args()
    start = time.time()
    timings = {}
    if not args.tables_only:
        for part in args.parts:
            t = time.time()
            for method in PARTS[part].methods:
                if args.methods is None or method.key in args.methods:
                    sweep(part, PARTS[part], method)
            timings[part] = time.time() - t
    out = HERE / "results.md"
    previous = out.read_text() if out.exists() else ""
    sections = {part: section(part) for part in args.parts}
    # Keep the sections of parts not run this time.
    for part in PARTS:
        marker = f"<!-- part: {part} -->"
        if part not in sections and marker in previous:
            sections[part] = previous.split(marker, 1)[1].split("<!-- end -->", 1)[0].strip()
    took = ", ".join(f"{p} {s / 60:.1f} min" for p, s in timings.items()) or "tables only"
    text = (
        "# Debiasing results\n\nWritten by `python experiments/debias/run.py"
        + (f" {' '.join(sys.argv[1:])}" if sys.argv[1:] else "")
        + f"` ({took}; {time.time() - start:.0f} s in all).\n"
        "Cells: mean +- sample standard deviation (number of seeds).\n\n"
        + "\n\n".join(
            f"<!-- part: {p} -->\n{sections[p]}\n<!-- end -->" for p in PARTS if p in sections
        )
        + "\n"
    )
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
