"""A retrieval experiment on the real ml-latest-small: train a few steps, track, report, re-evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from recolab.evaluate import evaluate
from recolab.train import train
from tests.conftest import compose_train, shared_data

QUICK = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=5",
    "data.batch_size=256",
    "data.history_len=10",
    "model.dim=16",
    "model.hidden_dims=[16]",
]


def test_two_tower_logq_on_ml_latest_small(tmp_path: Path) -> None:
    ml = shared_data("ml-latest-small")
    cfg = compose_train(
        tmp_path,
        ["+exp=two_tower_logq", "data=movielens", f"data.path={ml}", "module.index=hnsw", *QUICK],
        data_dir=tmp_path / "data",
    )
    metrics = train(cfg)
    for key in (
        "test/recall_at_20",
        "test/recall_at_50",
        "test/recall_at_100",
        "test/ndcg_at_50",
        "test/hit_rate_at_50",
        "test/mrr",
        "test/retrieved_popularity_at_50",
        "test/index_recall_at_50",
    ):
        assert 0.0 <= metrics[key] < float("inf"), key
    assert (
        metrics["test/recall_at_20"]
        <= metrics["test/recall_at_50"]
        <= metrics["test/recall_at_100"]
    )
    # the parquet conversion is cached under data/imported, keyed by the source file
    assert list(
        (tmp_path / "data" / "imported" / "movielens").glob("movielens-ml-latest-small-*.parquet")
    )

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("recolab").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.data.tags["recolab.complete"] == "true"
    for key, value in metrics.items():
        assert run.data.metrics[key] == pytest.approx(value), key
    # the baselines are tracked in the same run, on the same 610 users
    assert 0.05 < run.data.metrics["baseline_popular/recall_at_50"] < 0.3
    assert run.data.metrics["baseline_random/recall_at_50"] < 0.05
    report = json.loads((tmp_path / "out" / "report" / "metrics.json").read_text())
    assert report["summary"]["users"] == 610 and report["summary"]["index"] == "hnsw"
    assert "| recall@50 |" in (tmp_path / "out" / "report" / "report.md").read_text()

    # the checkpoint carries the config and the vocabularies: `recolab evaluate` rebuilds the run
    ckpt = next((tmp_path / "out" / "checkpoints").glob("epoch*.ckpt"))
    state = torch.load(ckpt, weights_only=True)
    assert (
        "sampler.frequency.interval" in state["state_dict"]
        and "vocabs" in state["recolab"]["data_state"]
    )
    again = evaluate(
        compose_train(tmp_path, [f"ckpt_path={ckpt}"], config_name="evaluate", out="eval")
    )
    tested = {k: v for k, v in metrics.items() if not k.startswith("val/")}  # evaluate: test only
    for key, value in tested.items():
        assert again[key] == pytest.approx(value, rel=1e-5), key
