"""`recolab compare`'s table reads like the issue asks: headline metrics first (`test/*`, then
`val/*`), then the differing config keys, the oracle last, `exp_name` once; throughputs are each
run's mean over its epochs (from a real MLflow store's metric history); markdown renders in HTML."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from recolab.compare import fetch_runs
from recolab.reports.compare import RunRecord, comparison_table, write_comparison
from tests.conftest import compose_train


def _run(i: int, exp: str, experts: str, auc: float) -> RunRecord:
    params = {
        "seed": str(i),
        "exp_name": exp,
        "logger.mlflow.tags.recolab.exp": exp,  # the copy the MLflow tag makes
        "model.num_experts": experts,
    }
    metrics = {
        "oracle/auc/click": 0.9,
        "oracle/gauc/click": 0.8 + i / 10,
        "train/samples_per_sec": 1000.0,
        "val/auc/click": auc - 0.01,
        "test/logloss/click": 0.3,
        "test/loss": 1.0,
        "test/auc/click": auc,
        "test/gauc/click": auc - 0.1,
        "test/xauc/watch_time": 0.6,
    }
    return RunRecord(f"r{i}", f"{exp}-{i}", params, metrics)


def test_headline_metrics_come_first_then_keys_then_the_oracle(tmp_path) -> None:
    runs = [_run(0, "mmoe", "4", 0.7), _run(1, "mmoe", "8", 0.72), _run(2, "sb", "None", 0.69)]
    table = comparison_table(runs, metric_patterns=["test/*", "val/*", "oracle/*", "train/*"])
    assert list(table.columns) == [
        "configuration",
        "test/gauc/click",
        "test/auc/click",
        "test/xauc/watch_time",
        "test/logloss/click",
        "test/loss",
        "val/auc/click",
        "train/samples_per_sec",
        "runs",
        "seeds",
        "model.num_experts",
        "oracle/gauc/click",
    ]
    assert list(table["configuration"]) == [
        "mmoe, model.num_experts=4",
        "mmoe, model.num_experts=8",
        "sb",
    ]
    md, page = write_comparison(table, tmp_path, title="t", source="s")[:2]
    header = md.read_text().splitlines()[4]
    assert header.startswith("| configuration | test/gauc/click | test/auc/click |")
    assert header.count("mmoe") == 0 and "exp_name" not in header
    assert (
        "<p><code>oracle/auc/click</code> is 0.9000 in every configuration</p>" in page.read_text()
    )


def test_an_oracle_metric_equal_in_every_run_is_stated_once_whatever_the_seeds() -> None:
    runs = [_run(0, "mmoe", "4", 0.7), _run(1, "mmoe", "4", 0.72), _run(2, "sb", "None", 0.69)]
    table = comparison_table(runs, metric_patterns=["test/auc/*", "oracle/*"])
    # mmoe has two seeds, sb one: the cells differ ("0.9000 +- 0.0000 (2)", "0.9000"), the values not.
    assert table.attrs["constant"] == {"oracle/auc/click": "0.9000"}
    assert "oracle/auc/click" not in table.columns and "oracle/gauc/click" in table.columns


def test_throughput_is_the_mean_over_the_run_s_epochs(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("recolab", artifact_location=str(tmp_path / "a"))
    run = client.create_run(experiment, tags={"recolab.complete": "true", "recolab.kind": "train"})
    rid = run.info.run_id
    client.log_param(rid, "exp_name", "mmoe")
    client.log_param(rid, "seed", "0")
    for step, value in [(10, 100.0), (20, 300.0), (30, 500.0)]:  # three epochs
        client.log_metric(rid, "train/samples_per_sec", value, step=step, timestamp=step)
    client.log_metric(rid, "train/samples_per_sec", 200.0, step=20, timestamp=40)  # resumed
    client.log_metric(rid, "test/auc/click", 0.7, step=30)
    client.set_terminated(rid)
    cfg = compose_train(tmp_path, [f"tracking_uri={uri}"], config_name="compare")
    [record] = fetch_runs(cfg)
    assert record.metrics["train/samples_per_sec"] == (100.0 + 200.0 + 500.0) / 3
    assert record.metrics["test/auc/click"] == 0.7
