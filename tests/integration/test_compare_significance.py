"""Per-user results and `recolab compare`'s intervals on real tiny runs in a real MLflow store.

Two configurations x two seeds of MMoE on the tiny synthetic world: trained (3 epochs) and
barely trained (one batch). Each run logs `report/per_user.parquet`; `compare` reads them back
through MLflow's artifact API for the paired bootstrap over users.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from recolab.compare import compare
from recolab.evaluate import evaluate
from recolab.reports.per_user import mean_of, read_per_user
from recolab.tracking import keep_tracking_env
from recolab.train import train
from tests.conftest import TINY_WORLD, compose_train

CONFIGS = {
    "trained": ["trainer.max_epochs=3"],
    "barely": ["trainer.max_epochs=1", "+trainer.limit_train_batches=1"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, data_cache: Path) -> Path:
    root = tmp_path_factory.mktemp("runs")
    for name, extra in CONFIGS.items():
        for seed in (1, 2):
            cfg = compose_train(
                root,
                ["+exp=mmoe", *TINY_WORLD, *extra, f"seed={seed}"],
                data_dir=data_cache,
                out=f"{name}{seed}",
            )
            with keep_tracking_env():
                train(cfg)
    return root


def _client(root: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")


def _per_user(client: MlflowClient, run_id: str, dst: Path):
    local = client.download_artifacts(run_id, "report/per_user.parquet", str(dst))
    return read_per_user(local)


def test_per_user_values_average_to_the_logged_metrics(runs: Path, tmp_path: Path) -> None:
    client = _client(runs)
    found = client.search_runs(
        [client.get_experiment_by_name("recolab").experiment_id], "tags.`recolab.kind` = 'train'"
    )
    assert len(found) >= 4
    for run in found:
        table, weights = _per_user(client, run.info.run_id, tmp_path / run.info.run_id)
        assert set(weights) == {"gauc/click", "gauc/like", "xgauc/watch_time"}
        assert (table["id_kind"] == "raw").all() and table["user_id"].is_unique
        for column in weights:
            # Lightning logs a metric as a float32 tensor: the same value once rounded so.
            logged = run.data.metrics[f"test/{column}"]
            assert np.float32(mean_of(table, weights, column)) == np.float32(logged), column
        left = table["gauc/click"].isna()
        assert (table.loc[left, "left_out/gauc/click"].notna()).all()
        assert set(table.loc[left, "left_out/gauc/click"]) <= {
            "single row",
            "no positive",
            "no negative",
        }
        assert table.loc[~left, "left_out/gauc/click"].isna().all()


def test_evaluate_logs_per_user_values_too(runs: Path, tmp_path: Path) -> None:
    ckpt = next((runs / "trained1" / "checkpoints").glob("epoch*.ckpt"))
    cfg = compose_train(runs, [f"ckpt_path={ckpt}"], config_name="evaluate", out="eval")
    metrics = evaluate(cfg)
    client = _client(runs)
    evaluated = client.search_runs(
        [client.get_experiment_by_name("recolab").experiment_id], "tags.`recolab.kind` = 'evaluate'"
    )[0]
    table, weights = _per_user(client, evaluated.info.run_id, tmp_path)
    assert np.float32(mean_of(table, weights, "gauc/click")) == np.float32(
        metrics["test/gauc/click"]
    )


def test_compare_finds_the_barely_trained_model_worse(runs: Path) -> None:
    # baseline=<key>:<value>, Hydra's unquoted form of key=value: the one-batch configuration.
    out = runs / "table"
    cfg = compose_train(
        runs,
        ["baseline=trainer.limit_train_batches:1", f"out_dir={out}", "bootstrap_samples=1000"],
        config_name="compare",
    )
    paths = compare(cfg)
    assert [p.name for p in paths] == ["comparison.md", "comparison.html", "comparison.json"]
    report = json.loads((out / "comparison.json").read_text())
    records = report["records"]
    fields = {"config", "metric", "n", "mean", "std", "ci_low", "ci_high", "diff", "diff_ci_low"}
    fields |= {"diff_ci_high", "p_value", "method", "p_holm", "within_noise"}
    assert all(fields <= r.keys() for r in records)
    by = {(r["metric"], r["test"]): r for r in records if r["test"]}
    users = by[("test/gauc/click", "users")]
    assert users["method"].startswith("paired bootstrap over users") and users["seed_pairs"] == 2
    # The test users with a GAUC in both runs, joined on user_id (the same users at every seed).
    client = _client(runs)
    run = client.search_runs(
        [client.get_experiment_by_name("recolab").experiment_id],
        "params.seed = '1' and params.`trainer.max_epochs` = '3'",
    )[0]
    table, _ = _per_user(client, run.info.run_id, runs / "downloaded")
    assert users["units"] == table["gauc/click"].notna().sum() > 10
    assert users["diff"] > 0 and users["diff_ci_low"] > 0 and users["within_noise"] is False
    assert users["p_holm"] < 0.05
    seeds = by[("test/gauc/click", "seeds")]
    assert seeds["method"] == "paired t over 2 seeds" and seeds["n"] == 2
    # The configurations' own intervals: mean +- t over the two seeds.
    trained = next(r for r in records if r["metric"] == "test/gauc/click" and r["test"] == "users")
    assert trained["ci_low"] < trained["mean"] < trained["ci_high"]
    assert ("test/auc/click", "users") not in by  # AUC has no per-user values
    # The barely trained baseline: its own row, no difference.
    base = [r for r in records if r["metric"] == "test/gauc/click" and r["method"] == "baseline"]
    assert len(base) == 1 and base[0]["diff"] is None
    md = (out / "comparison.md").read_text()
    assert "significant" in md and "paired bootstrap over users (B=1000, 2 seed pairs)" in md
    assert np.isfinite(report["records"][0]["mean"])


def test_compare_counts_a_seed_run_twice_once(runs: Path, data_cache: Path) -> None:
    cfg = compose_train(
        runs,
        ["+exp=mmoe", *TINY_WORLD, *CONFIGS["barely"], "seed=1"],
        data_dir=data_cache,
        out="barely1_again",
    )
    with keep_tracking_env():
        again = train(cfg)
    out = runs / "table_again"
    cfg = compose_train(
        runs, ["baseline=limit_train_batches:1", f"out_dir={out}"], config_name="compare"
    )
    compare(cfg)
    report = json.loads((out / "comparison.json").read_text())
    base = next(
        r
        for r in report["records"]
        if r["metric"] == "test/gauc/click" and r["method"] == "baseline"
    )
    assert base["n"] == 2  # seeds 1 and 2, not three runs
    client = _client(runs)
    older, newest = client.search_runs(
        [client.get_experiment_by_name("recolab").experiment_id],
        "params.seed = '1' and params.`trainer.limit_train_batches` = '1' "
        "and tags.`recolab.kind` = 'train'",
        order_by=["attributes.start_time ASC"],
    )
    assert [n for n in report["notes"] if "ran again later" in n] == [
        f"run {older.info.run_id} ({older.info.run_name}) left out: seed 1 ran again later"
    ]
    assert newest.data.metrics["test/gauc/click"] == pytest.approx(again["test/gauc/click"])


def test_retrieval_run_writes_per_user_values_with_raw_ids(
    tmp_path: Path, data_cache: Path
) -> None:
    cfg = compose_train(
        tmp_path,
        ["+exp=two_tower", *TINY_WORLD, "trainer.max_epochs=1", "+trainer.limit_train_batches=2"],
        data_dir=data_cache,
    )
    with keep_tracking_env():
        metrics = train(cfg)
    table, weights = read_per_user(tmp_path / "out" / "report" / "per_user.parquet")
    assert (table["id_kind"] == "raw").all() and table["user_id"].is_unique
    assert {"recall_at_20", "ndcg_at_50", "mrr", "baseline_popular/recall_at_50"} <= set(weights)
    for column in ("recall_at_20", "ndcg_at_50", "hit_rate_at_100", "mrr"):
        assert np.float32(mean_of(table, weights, column)) == np.float32(metrics[f"test/{column}"])
    report = (tmp_path / "out" / "report" / "report.md").read_text()
    assert "model: 95% CI over users" in report and "2000 resamples, seed 0" in report
