"""A tiny `make train`-like run, as a user runs it (`python -m recolab train +exp=mmoe` in a fresh
folder): the console shows a line per epoch with the validation metrics and none of the known
noise; MLflow's UI opens the experiment in its model-training view, the run has a name of its own
and its data bookkeeping as a table, not as metrics; the report has training curves, says what
the watch-time prediction serves and renders its markdown in HTML."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.conftest import TINY_WORLD

NOISE = (
    "litlogger",
    "litmodels",
    "isinstance(treespec, LeafSpec)",
    "Total FLOPs",
    "FLOPs",
    "setup plugin alembic",
    "transfer_batch_to_device",
)


def test_a_tiny_run_prints_epochs_without_noise_and_looks_right_in_mlflow(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "recolab",
            "train",
            "+exp=mmoe",
            *TINY_WORLD,
            "trainer.max_epochs=2",
            "trainer.log_every_n_steps=5",
            "callbacks.early_stopping=null",
            "log_model=false",  # tested elsewhere (recolab.serving); here: the console and the UI
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    for noise in NOISE:
        assert noise not in output, f"{noise!r} printed:\n{output[-3000:]}"
    epochs = re.findall(
        r"epoch (\d)/2 step \d+ \| train loss \d+\.\d{4} \| val loss \d+\.\d{4} \| "
        r"click: auc \d\.\d{4} gauc \d\.\d{4} \| like: auc \d\.\d{4} gauc \d\.\d{4} \| "
        r"watch_time: xauc \d\.\d{4} xgauc \d\.\d{4}",
        done.stdout,
    )
    assert epochs == ["1", "2"], done.stdout[-3000:]

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("recolab")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    [run] = client.search_runs([experiment.experiment_id])
    view = json.loads(
        json.loads(experiment.tags["mlflow.sharedViewState.recolab-headline"])["state"]
    )
    assert "metrics.`test/gauc/click`" in view["selectedColumns"]
    eid = experiment.experiment_id
    assert (
        f"then http://127.0.0.1:5000/#/experiments/{eid}/runs?workflowType=machine_learning"
        "&viewStateShareKey=recolab-headline" in done.stdout
    )
    assert run.info.run_name == f"mmoe-synthetic_video-seed0-{run.info.run_id[:6]}"
    assert not [m for m in run.data.metrics if m.startswith("data/")]
    assert "test/gauc/click" in run.data.metrics
    local = client.download_artifacts(run.info.run_id, "data/quality.json", str(tmp_path / "dl"))
    table = json.loads(Path(local).read_text())
    assert table["columns"] == ["count", "rows"]
    assert ["dropped_rows", 0] in table["data"]
    assert any(name.startswith("oov_rows/test/") for name, _ in table["data"])
    assert run.data.tags["recolab.data_quality"].startswith(("oov_rows/", "dropped_rows"))

    report = Path(run.data.tags["recolab.output_dir"]) / "report"
    curves = json.loads((report / "training_curves.json").read_text())
    assert [h["epoch"] for h in curves["history"]] == [0, 1]
    assert "val/gauc/click" in curves["history"][1]["metrics"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/training_curves.png", "report/by_duration.png"} <= artifacts
    md = (report / "report.md").read_text()
    assert "## Training curves" in md and "![training curves](training_curves.png)" in md
    assert "- `watch_time`: the prediction is median-like (log-scale regression)" in md
    page = (report / "report.html").read_text()
    left_out = page[page.index("<h2>Users left out") : page.index("<h2>Plots")]
    assert "`" not in left_out and "<code>gauc/click</code>" in left_out
    assert "<h2>Training curves</h2>" in page and "What the regression tasks serve" in page
    numbers = json.loads((report / "metrics.json").read_text())["by_duration"]["watch_time"]
    assert numbers["serves"] == "median-like (log-scale regression)"
    assert len(numbers["observed_median"]) == len(numbers["observed"])
