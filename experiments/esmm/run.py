"""Sample-selection bias: ESMM against a CVR model trained on the clicked impressions alone, on
the synthetic world's truth (issue 24, items 3 and 5). One command writes README.md beside this
file:

    python experiments/esmm/run.py                        # train what is missing, compare, README.md
    python experiments/esmm/run.py --parts default small  # some parts only
    python experiments/esmm/run.py --tables-only          # compare again and rebuild README.md

Two settings, each one `python -m recolab train -m ... seed=1,2,3,4,5` sweep per part into this
experiment's own MLflow store (`--store`, default outputs/esmm/mlflow; `MLFLOW_TRACKING_URI`
wins where set), on the synthetic world with purchases (`data=synthetic_video_purchase`):

- `esmm` (`+exp=esmm`): pCTR and pCTCVR = pCTR x pCVR trained over every impression; pCVR is
  scored under the weight-0 task `purchase_if_clicked`.
- `esmm_cvr_on_clicks` (`+exp=esmm_cvr_on_clicks`): a single-task network with the architecture
  of ESMM's CVR tower, trained and validated on the clicked impressions only
  (`data.select_rows`), where `purchase_if_clicked` is the observed purchase.

The parts (`PARTS`) are worlds: the default one, a smaller one, a control without selection
(conversion independent of what drives the click) and one where the selection is reversed. Both settings are tested over every test impression: pCVR against
`purchase_if_clicked`, the world's counterfactual conversion (AUC, GAUC, logloss, ECE), and
against `gt_purchase_given_click`, its true probability (`test/truth_xauc`, `test/truth_xgauc`:
`module.truth`). The settings are the ranker experiments' (lr 1e-3, batch 2048, embedding 16
with batch normalization), not tuned; the number of epochs is chosen on each run's own
validation split by early stopping on `val/loss` (at most `MAX_EPOCHS`): ESMM's over every
impression (click and click-and-purchase losses), the baseline's over the clicked validation
impressions, as a CVR model is validated in practice. Nothing reads test to choose. A (setting,
seed) with a complete run in the store is not trained again (`--retrain` trains everything).
Then `python -m recolab compare` writes `comparisons/<part>/comparison.{md,html,json}`, and
README.md is written from those and from the worlds' own counts (`world_facts`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/_common.py
from _common import (  # noqa: E402
    COMPLETE_TRAIN_RUNS,
    ROOT,
    ci,
    compare_command,
    load_json,
    num,
    p_value,
    run_compare,
    run_sweep,
    store,
    verdict,
)

from recolab.data.synthetic_video import WorldParams, generate  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = HERE / "comparisons"
SEEDS = [1, 2, 3, 4, 5]
MAX_EPOCHS = 30


@dataclass
class Part:
    name: str
    experiment: str  # the MLflow experiment of its runs
    world: dict  # WorldParams fields that differ from data=synthetic_video_purchase's
    title: str
    about: str


#: data=synthetic_video_purchase's world, as `WorldParams` fields (read from its config).
PURCHASE_WORLD = {
    k: v
    for k, v in OmegaConf.to_container(
        OmegaConf.load(ROOT / "configs" / "data" / "synthetic_video_purchase.yaml")
    ).items()
    if k in WorldParams.__dataclass_fields__
}
PARTS = {
    p.name: p
    for p in [
        Part(
            "default",
            "esmm_default_world",
            {},
            "The default world (data=synthetic_video_purchase as configured)",
            "20,000 users, 5,000 items, 1,000,000 impressions: the world of every synthetic "
            "ranker experiment, with purchases",
        ),
        Part(
            "small",
            "esmm_selection_bias",
            {"num_users": 2000, "num_items": 1000, "num_impressions": 200_000},
            "A smaller world (the debias experiment's position-part size)",
            "2,000 users, 1,000 items, 200,000 impressions (experiments/debias/README.md)",
        ),
        Part(
            "no_selection",
            "esmm_no_selection",
            {"purchase_relevance": 0.0, "purchase_price": 0.0, "purchase_bias": -1.5},
            "Control: no selection (conversion from the user's buying propensity alone)",
            "The default world, but the purchase logit without the relevance and the price "
            "terms (the bias lowered to keep about one purchase in five clicks): conversion is "
            "independent of all that drives the click, so the clicked impressions convert as the "
            "rest would (the table below); what separates the two models here is not the "
            "selection",
        ),
        Part(
            "no_relevance",
            "esmm_no_relevance",
            {"purchase_relevance": 0.0},
            "Reversed selection: conversion without the relevance term",
            "The default world, but the purchase logit without the relevance term: conversion "
            "then falls with the item's latent price, which rises with the quality that raises "
            "the click, so the clicked impressions convert less than the rest (the table below): "
            "a selection of the opposite sign, where CVR runs against CTR",
        ),
    ]
}
COMMON = [
    f"trainer.max_epochs={MAX_EPOCHS}",
    "+module.truth.purchase_if_clicked=gt_purchase_given_click",
    # Neither changes a metric: no MLflow Model and no checkpoint uploads (time and disk).
    "log_model=false",
    "log_checkpoints=false",
]
SETTINGS = {
    "esmm_cvr_on_clicks": "CVR on clicked impressions only (single-task, `+exp=esmm_cvr_on_clicks`)",
    "esmm": "ESMM, pCVR from the CVR tower (`+exp=esmm`)",
}
BASELINE = "esmm_cvr_on_clicks"
TASK = "purchase_if_clicked"
METRICS = [
    f"test/auc/{TASK}",
    f"test/gauc/{TASK}",
    f"test/logloss/{TASK}",
    f"test/ece/{TASK}",
    f"test/truth_xauc/{TASK}",
    f"test/truth_xgauc/{TASK}",
    f"oracle/auc/{TASK}",
    f"oracle/logloss/{TASK}",
    f"oracle/ece/{TASK}",
]
LABELS = {
    f"test/auc/{TASK}": "AUC vs counterfactual purchase (higher better)",
    f"test/gauc/{TASK}": "GAUC vs counterfactual purchase (higher better)",
    f"test/logloss/{TASK}": "logloss vs counterfactual purchase (lower better)",
    f"test/ece/{TASK}": "ECE vs counterfactual purchase (lower better)",
    f"test/truth_xauc/{TASK}": "XAUC vs gt_purchase_given_click (higher better)",
    f"test/truth_xgauc/{TASK}": "XGAUC vs gt_purchase_given_click (higher better)",
}

#: `--extra` overrides for every sweep (smoke tests); none in the tables.
EXTRA: list[str] = []


def done_seeds(uri: str, experiment: str) -> dict[str, set[int]]:
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


def train(part: Part, uri: str, artifacts: str | None, retrain: bool) -> dict[str, float]:
    """The part's sweeps (seeds not yet done); {setting: seconds} of those that ran."""
    done = {} if retrain else done_seeds(uri, part.experiment)
    timings = {}
    for key in SETTINGS:
        seeds = [s for s in SEEDS if s not in done.get(key, set())]
        if not seeds:
            print(f"{part.name} {key}: seeds {SEEDS} done", flush=True)
            continue
        start = time.time()
        run_sweep(
            "esmm",
            f"{part.name}-{key}",
            [
                f"+exp={key}",
                *(f"data.{k}={v}" for k, v in part.world.items()),
                *COMMON,
                f"seed={','.join(map(str, seeds))}",
                f"experiment_name={part.experiment}",
                f"exp_name={key}",
                f"tags=[esmm,{part.name},{key}]",
                f"logger.mlflow.tracking_uri={uri}",
                *([f"logger.mlflow.artifact_location={artifacts}"] if artifacts else []),
                *EXTRA,
            ],
        )
        timings[key] = time.time() - start
    return timings


def epochs_trained(uri: str, experiment: str) -> dict[str, list[int]]:
    """{setting: epochs each seed's run trained before early stopping (or the limit)}, from the
    runs' `epoch` metric: Lightning's epoch counter, which ends at the number of epochs run."""
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], COMPLETE_TRAIN_RUNS, max_results=5000)
    latest: dict[tuple[str, int], tuple[int, int]] = {}
    for r in runs:
        key, seed = r.data.tags.get("recolab.exp"), int(r.data.params.get("seed", -1))
        if key in SETTINGS and seed in SEEDS and "epoch" in r.data.metrics:
            if (key, seed) not in latest or latest[key, seed][0] < r.info.start_time:
                latest[key, seed] = (r.info.start_time, int(r.data.metrics["epoch"]))
    return {k: [latest[k, s][1] for s in SEEDS if (k, s) in latest] for k in SETTINGS}


def compare(part: Part, uri: str) -> list[str]:
    return compare_command(
        uri=uri,
        experiment=part.experiment,
        settings=list(SETTINGS),
        baseline=BASELINE,
        metrics=METRICS,
        out_dir=OUT / part.name,
        title=f"ESMM against CVR on clicked impressions, part {part.name}",
    )


def world_facts(part: Part) -> dict[str, float]:
    """Counts of the part's world (all splits): how selected the clicked impressions are."""
    t = generate(WorldParams(**(PURCHASE_WORLD | part.world)))
    col = lambda c: t.column(c).to_numpy().astype(np.float64)  # noqa: E731
    click, purchase, gt = col("click"), col("purchase"), col("gt_purchase_given_click")
    clicked = click == 1
    return {
        "rows": float(t.num_rows),
        "click_rate": click.mean(),
        "purchase_rate": purchase.mean(),
        "cvr_on_clicks": purchase[clicked].mean(),
        "gt_cvr_clicked": gt[clicked].mean(),
        "gt_cvr_not_clicked": gt[~clicked].mean(),
        "gt_cvr_all": gt.mean(),
        "corr_gt_cvr_relevance": float(np.corrcoef(gt, col("gt_relevance"))[0, 1]),
    }


# ---- README.md, from comparison.json and the worlds' counts ----

FACTS = {
    "click_rate": "click rate",
    "purchase_rate": "purchase rate (click and purchase)",
    "cvr_on_clicks": "purchases per click",
    "gt_cvr_clicked": "mean gt_purchase_given_click, clicked impressions",
    "gt_cvr_not_clicked": "mean gt_purchase_given_click, impressions not clicked",
    "gt_cvr_all": "mean gt_purchase_given_click, every impression",
    "corr_gt_cvr_relevance": "corr(gt_purchase_given_click, gt_relevance)",
}


def _key(config: str) -> str:
    return config.split(", ")[0]


def _shell(arg: str) -> str:
    return f'"{arg}"' if any(ch in arg for ch in " [{'*") else arg


def _diff(d: dict | None) -> str:
    if d is None or d["diff"] is None:
        return "-"
    return f"{d['diff']:+.4f} {ci(d['diff_ci_low'], d['diff_ci_high'])}"


def _side(metric: str, d: dict | None) -> str:
    """ "ESMM better" / "ESMM worse" where the paired interval leaves out 0, else "within noise"."""
    if d is None or d["diff"] is None:
        return "-"
    if d["within_noise"]:
        return "within noise"
    lower_better = metric.split("/")[1] in ("logloss", "ece")
    return "**ESMM better**" if (d["diff"] < 0) == lower_better else "**ESMM worse**"


def section(part: Part, uri: str, timings: dict) -> tuple[str, dict]:
    """The part's README section, and {metric: ESMM's paired-t record} for the summary."""
    data = load_json(OUT / part.name / "comparison.json")
    recs = data["records"]
    summary = {(_key(r["config"]), r["metric"]): r for r in recs}
    n = {_key(r["config"]): r["n"] for r in recs}
    diffs = {
        r["metric"]: r for r in recs if r.get("test") == "seeds" and _key(r["config"]) == "esmm"
    }
    lines = [
        "| pCVR over every test impression | "
        + " | ".join(f"`{k}` (n={n.get(k, 0)})" for k in SETTINGS)
        + " | ESMM - baseline [95% CI] | p | |",
        "|---|" + "---|" * len(SETTINGS) + "---|---:|---|",
    ]
    for metric, label in LABELS.items():
        d = diffs.get(metric)
        cells = [
            "-"
            if (r := summary.get((k, metric))) is None
            else f"{num(r['mean'])} {ci(r['ci_low'], r['ci_high'])}"
            for k in SETTINGS
        ]
        lines.append(
            f"| {label} | " + " | ".join(cells) + f" | {_diff(d)} | "
            f"{p_value(d and d['p_value'])} | {verdict(d and d['within_noise'])} |"
        )
    oracle = ", ".join(
        f"{m.split('/')[1]} {data['constant'][m]}" for m in METRICS if m in data.get("constant", {})
    )
    f = world_facts(part)
    facts = "\n".join(f"| {label} | {f[k]:.4f} |" for k, label in FACTS.items())
    shown = " ".join(_shell(a) for a in ["python", *compare(part, uri)[1:]]).replace(
        str(ROOT) + "/", ""
    )
    world = " ".join(f"data.{k}={v}" for k, v in part.world.items()) or "(none)"
    timing = "; ".join(f"`{k}` {v / 60:.1f} min" for k, v in timings.get(part.name, {}).items())
    epochs = "; ".join(
        f"`{k}` {', '.join(map(str, v))}" for k, v in epochs_trained(uri, part.experiment).items()
    )
    text = f"""## {part.title}

{part.about}. World overrides: `{world}`; {int(f["rows"])} impressions in all splits. MLflow
experiment `{part.experiment}`.

| the world | value |
|---|---:|
{facts}

{chr(10).join(lines)}

The oracle (the true probability as the score) reaches {oracle or "-"}. From
`comparisons/{part.name}/comparison.json`, written by

```
{shown}
```

Epochs trained per seed (seeds {",".join(map(str, SEEDS))}; the tested checkpoint is the best
on validation, 2 epochs before the last where early stopping ended the run): {epochs}.
Training time of the 5-seed sweeps: {timing or "not recorded"}.
"""
    return text, diffs


def readme(parts: list[Part], uri: str, timings: dict) -> str:
    sections, gains = [], {}
    for part in parts:
        text, gains[part.name] = section(part, uri, timings)
        sections.append(text)
    xauc = f"test/truth_xauc/{TASK}"
    summary = [
        f"- {p.title}: ESMM - baseline in XAUC against the truth {_diff(gains[p.name].get(xauc))}, "
        f"{_side(xauc, gains[p.name].get(xauc))}; in "
        + ", ".join(
            f"{m.split('/')[1]} {_side(m, gains[p.name].get(m))}" for m in LABELS if m != xauc
        )
        + "."
        for p in parts
    ]
    if "default" in gains and "no_selection" in gains:
        a, b = gains["default"].get(xauc), gains["no_selection"].get(xauc)
        if a and b and a["diff"] is not None and b["diff"] is not None:
            apart = a["diff_ci_low"] > b["diff_ci_high"] or b["diff_ci_low"] > a["diff_ci_high"]
            summary.append(
                f"- Selection or shared data? ESMM's XAUC gain is {a['diff']:+.4f} in the default "
                f"world and {b['diff']:+.4f} in the control without selection; the two "
                "95% intervals "
                + ("do not overlap." if apart else "overlap (no difference shown at 5 seeds).")
            )
    sides = {n: _side(xauc, g.get(xauc)) for n, g in gains.items()}
    if sides.get("default") == "**ESMM better**" and "better" not in sides.get(
        "no_selection", "better"
    ):
        summary.append(
            "- Reading: in this world ESMM's pCVR beats the clicks-only model where clicking "
            "selects the conversions (conversion rising with the relevance that drives the "
            "click), and not where it does not (the control: "
            + sides["no_selection"].strip("*")
            + (
                f"; reversed selection: {sides['no_relevance'].strip('*')}"
                if "no_relevance" in sides
                else ""
            )
            + "). ESMM's CVR tower learns only through pCTR x pCVR, whose derivative in the CVR "
            "logit b is pCTR x s(b)(1 - s(b)): it learns least about conversion where clicks are "
            "rare."
        )
    return f"""# ESMM and the sample-selection bias of a CVR model trained on clicks

Written by `python experiments/esmm/run.py` from the comparison files under `comparisons/` and
the worlds' own counts: nothing here is typed in by hand. ESMM (Ma et al., "Entire Space
Multi-Task Model: An Effective Approach for Estimating Post-Click Conversion Rate", SIGIR 2018;
`recolab.models.rank.esmm`) against the model it was made to replace: a conversion-rate model
trained on the clicked impressions alone, then served over every impression.

## Summary

{chr(10).join(summary)}

## The world and the two settings

`data=synthetic_video_purchase`: the synthetic short-video world with its opt-in purchase
(`recolab.data.synthetic_video._purchases`). A purchase follows a click: purchase = click AND
purchase_if_clicked, purchase_if_clicked ~ Bernoulli(gt_purchase_given_click), whose logit is
`purchase_relevance` x the click's relevance logit, minus `purchase_price` x the item's latent
log price (correlated with quality), plus a per-user buying propensity. The world draws
purchase_if_clicked for every impression, clicked or not: the counterfactual conversion that no
real log has, which lets a pCVR be scored over the entire space. Where conversion depends on
relevance, the clicked impressions are a selected sample: they convert more than the rest would
(the tables of each part give the means).

- `esmm` (`+exp=esmm`): a CTR and a CVR tower (MLP 128-64-32 each) over one shared embedding;
  loss BCE(pCTR, click) + BCE(pCTR x pCVR, purchase) over every training impression. pCVR is the
  CVR tower's output, returned under the weight-0 task `{TASK}`, which nothing trains on
  (tests/unit/models/rank/test_esmm.py checks that its label moves no gradient).
- `esmm_cvr_on_clicks` (`+exp=esmm_cvr_on_clicks`): a single-task network of the same shape (its
  own embedding, MLP 128-64-32) trained on `{TASK}` with `data.select_rows={{where: click,
  splits: [train, val]}}`: the training and validation splits keep only their clicked
  impressions, where `{TASK}` is the observed purchase; the test split keeps every impression.

Both: lr 1e-3, batch 2048, embedding 16 with batch normalization (the settings of the
synthetic-world ranker experiments, reused, not tuned here), seeds {",".join(map(str, SEEDS))},
epochs chosen per run by early stopping on its validation `val/loss` (patience 2, at most
{MAX_EPOCHS}): ESMM's over every validation impression, the baseline's over the clicked ones, as
a CVR model is validated in practice. Test is read once per run.

Each table: over every test impression, pCVR against the counterfactual purchase (`{TASK}`) and
against its true probability (`gt_purchase_given_click`; XAUC: the share of impression pairs
with different truth that the score orders as the truth does, XGAUC: the same within each
user). Cells: mean over the seeds [95% t interval]; the difference is ESMM minus the baseline,
paired t over the seeds (one comparison per metric, so no multiplicity correction);
"significant" where its 95% interval leaves out 0. A "-" is a metric without a value: XGAUC
needs users whose impressions differ in truth, and in the control without selection the truth
is constant within each user. `comparison.md` in each folder adds the paired bootstrap over test
users for the grouped metrics.

{chr(10).join(sections)}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="*", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--tables-only", action="store_true")
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--store", default="outputs/esmm/mlflow")
    parser.add_argument("--extra", nargs="*", default=[], help="overrides for every sweep")
    args = parser.parse_args()
    EXTRA.extend(args.extra)
    uri, artifacts = store(args.store)
    timing_file = OUT / "timings.json"
    timings = json.loads(timing_file.read_text()) if timing_file.exists() else {}
    for name in args.parts:
        part = PARTS[name]
        if not args.tables_only:
            ran = train(part, uri, artifacts, args.retrain)
            if ran:
                timings[name] = ran
                OUT.mkdir(parents=True, exist_ok=True)
                timing_file.write_text(json.dumps(timings, indent=2))
        run_compare(compare(part, uri), ROOT / "outputs" / "esmm" / f"compare-{name}.log")
    done = [PARTS[n] for n in PARTS if (OUT / n / "comparison.json").exists()]
    (HERE / "README.md").write_text(readme(done, uri, timings))
    print(f"wrote {HERE / 'README.md'}")


if __name__ == "__main__":
    main()
