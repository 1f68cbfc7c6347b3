"""How runs look in MLflow's UI (`recolab.tracking`), against a real local store: the experiment
kind, unique run names, the data bookkeeping table, and recolab's saved view of the run list."""

from __future__ import annotations

import json

from mlflow.tracking import MlflowClient

from recolab import tracking


def _client(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    return client, client.create_experiment("recolab", artifact_location=str(tmp_path / "a"))


def test_the_saved_view_shows_the_headline_test_metrics_of_every_run(tmp_path) -> None:
    client, eid = _client(tmp_path)
    ranker = {"test/auc/click": 0.7, "test/gauc/click": 0.6, "test/logloss/click": 0.3}
    recaller = {"test/recall_at_50": 0.2, "test/ndcg_at_50": 0.1, "test/loss": 2.0}
    assert tracking.preset_view(client, eid, ranker) == ["test/gauc/click", "test/auc/click"]
    shown = tracking.preset_view(client, eid, recaller)  # widened, not replaced
    assert shown == ["test/gauc/click", "test/auc/click", "test/recall_at_50", "test/ndcg_at_50"]
    envelope = json.loads(client.get_experiment(eid).tags[tracking.VIEW_TAG])
    state = json.loads(envelope["state"])
    assert envelope["name"] == "recolab: headline metrics"
    assert state["selectedColumns"][:3] == [
        "attributes.`Models`",
        "metrics.`test/gauc/click`",
        "metrics.`test/auc/click`",
    ]
    assert "tags.`recolab.exp`" in state["selectedColumns"]
    assert state["orderByKey"] == "metrics.`test/gauc/click`" and state["orderByAsc"] is False
    assert state["chartsSearchFilter"] == "test/"
    # A user who saved over it in the UI keeps theirs.
    client.set_experiment_tag(eid, tracking.VIEW_TAG, json.dumps({**envelope, "name": "mine"}))
    assert tracking.preset_view(client, eid, ranker) == []
    assert json.loads(client.get_experiment(eid).tags[tracking.VIEW_TAG])["name"] == "mine"
    assert tracking.ui_link("sqlite:///x.db", eid).startswith(
        f"http://127.0.0.1:5000/#/experiments/{eid}/runs?workflowType=machine_learning"
    )
    assert tracking.ui_link("http://mlflow:5000/", eid).startswith("http://mlflow:5000/#/")


def test_kind_name_and_data_table(tmp_path) -> None:
    client, eid = _client(tmp_path)
    tracking.mark_model_training(client, eid)
    assert client.get_experiment(eid).tags["mlflow.experimentKind"] == "custom_model_development"
    client.set_experiment_tag(eid, "mlflow.experimentKind", "genai_development")
    tracking.mark_model_training(client, eid)  # a kind chosen in the UI stays
    assert client.get_experiment(eid).tags["mlflow.experimentKind"] == "genai_development"
    run = client.create_run(eid, run_name="mmoe-imported-seed0")
    rid = run.info.run_id
    assert tracking.name_run(client, rid, "mmoe-imported-seed0") == f"mmoe-imported-seed0-{rid[:6]}"
    tracking.name_run(client, rid, f"mmoe-imported-seed0-{rid[:6]}")  # a resumed run: unchanged
    assert client.get_run(rid).info.run_name == f"mmoe-imported-seed0-{rid[:6]}"
    tracking.log_data_quality(
        client, rid, {"data/dropped_rows": 2.0, "data/oov_rows/val/user_id": 0.0}
    )
    local = client.download_artifacts(rid, tracking.DATA_QUALITY_FILE, str(tmp_path))
    assert json.loads(open(local).read())["data"] == [
        ["dropped_rows", 2],
        ["oov_rows/val/user_id", 0],
    ]
    assert client.get_run(rid).data.tags["recolab.data_quality"] == "dropped_rows 2"
    assert client.get_run(rid).data.metrics == {}
