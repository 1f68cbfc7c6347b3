"""A training run's best and last checkpoints are MLflow artifacts: `evaluate run_id=...` and a
resume (`ckpt_path=<run id>`) work from a copy of the project that has the tracking store only,
never the run's `outputs/`."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from mlflow.tracking import MlflowClient

from recolab.evaluate import evaluate
from recolab.resume import ResumeError, prepare
from recolab.tracking import keep_tracking_env
from recolab.train import train
from tests.conftest import TINY_WORLD, compose_train
from tests.integration.probe import one_torch_thread  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAIL_AT = "RECOLAB_TEST_FAIL_AT_EPOCH"
RUN = [
    "+exp=mmoe",
    *TINY_WORLD,
    "trainer.max_epochs=2",
    "+trainer.limit_train_batches=4",
    "callbacks.progress_bar.refresh_rate=0",
    "log_model=false",
    "+callbacks.fail._target_=tests.integration.test_artifact_checkpoints.FailAtEpoch",
]


class FailAtEpoch(pl.Callback):
    """Fails the run as the epoch in `$RECOLAB_TEST_FAIL_AT_EPOCH` starts (from the environment, so
    the failed run and its resumption share one config)."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if os.environ.get(FAIL_AT) == str(trainer.current_epoch):
            raise RuntimeError(f"failing on purpose at epoch {trainer.current_epoch}")


def only_the_store(first: Path) -> str:
    """The run's folders gone: what is left of `first` is its tracking store (`mlflow.db`, and
    `mlartifacts/`, which the store names by absolute path)."""
    shutil.rmtree(first / "out")
    shutil.rmtree(first / "data")
    assert sorted(p.name for p in first.iterdir()) == ["mlartifacts", "mlflow.db", "mlflow.db-lock"]
    return f"sqlite:///{first}/mlflow.db"


def the_run(uri: str):
    client = MlflowClient(uri)
    [run] = client.search_runs(
        [client.get_experiment_by_name("recolab").experiment_id], "tags.`recolab.kind` = 'train'"
    )
    return client, run


def epoch_of(path: Path) -> int:
    return int(torch.load(path, weights_only=True, map_location="cpu")["epoch"])


def test_a_run_is_evaluated_by_its_id_from_the_store_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    cfg = compose_train(first, RUN, data_dir=first / "data")
    with keep_tracking_env():
        metrics = train(cfg)
    folder = first / "out" / "checkpoints"
    [best] = folder.glob("epoch*.ckpt")
    client, run = the_run(f"sqlite:///{first}/mlflow.db")
    run_id = run.info.run_id
    logged = {a.path for a in client.list_artifacts(run_id, "checkpoints")}
    assert logged == {"checkpoints/best.ckpt", "checkpoints/last.ckpt"}
    assert run.data.tags["recolab.best_checkpoint"] == best.name
    sent = Path(client.download_artifacts(run_id, "checkpoints", str(tmp_path / "sent")))
    assert (sent / "best.ckpt").read_bytes() == best.read_bytes()
    assert (sent / "last.ckpt").read_bytes() == (folder / "last.ckpt").read_bytes()

    uri = only_the_store(first)
    second.mkdir()
    monkeypatch.chdir(second)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with keep_tracking_env():
        got = evaluate(
            compose_train(second, [f"run_id={run_id}"], config_name="evaluate", out="eval")
        )
    for key, value in metrics.items():
        if not key.startswith(("test/", "oracle/")):
            continue
        assert got[key] == pytest.approx(value, rel=1e-5, nan_ok=True), key
    assert (second / "eval" / "checkpoints" / "best.ckpt").is_file()  # downloaded, then checked
    assert (second / "data").is_dir()  # the data generated again in this copy of the project
    evaluations = client.search_runs([run.info.experiment_id], "tags.`recolab.kind` = 'evaluate'")
    assert [e.data.tags["mlflow.parentRunId"] for e in evaluations] == [run_id]
    assert evaluations[0].data.params["ckpt_path"] == f"runs:/{run_id}/checkpoints/best.ckpt"

    # A named checkpoint of the run, the last epoch's: it scores as that epoch's weights do.
    with keep_tracking_env():
        last = evaluate(
            compose_train(
                second,
                [f"ckpt_path=runs:/{run_id}/checkpoints/last.ckpt"],
                config_name="evaluate",
                out="eval_last",
            )
        )
    assert epoch_of(second / "eval_last" / "checkpoints" / "last.ckpt") == 1
    assert set(last) == set(got)


def test_a_failed_run_resumes_from_its_id_in_a_copy_of_the_project_that_has_only_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    run = RUN
    monkeypatch.setenv(FAIL_AT, "1")  # epoch 0 is trained, checkpointed and uploaded
    with keep_tracking_env(), pytest.raises(RuntimeError, match="failing on purpose at epoch 1"):
        train(compose_train(first, run, data_dir=first / "data"))
    assert [p.name for p in (first / "out" / "checkpoints").glob("epoch*.ckpt")] == ["epoch00.ckpt"]
    client, mlflow_run = the_run(f"sqlite:///{first}/mlflow.db")
    run_id = mlflow_run.info.run_id
    assert mlflow_run.info.status == "FAILED"
    epoch0 = client.get_metric_history(run_id, "val/loss")[0].value
    uri = only_the_store(first)

    monkeypatch.delenv(FAIL_AT)
    second.mkdir()
    monkeypatch.chdir(second)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # What the resume starts from (`prepare` reads no data): last.ckpt and the best beside it,
    # their ModelCheckpoint state pointing at this folder, so Lightning restores the best score.
    look = compose_train(second, [*run, f"ckpt_path={run_id}"], out="outputs/runs/mmoe/look")
    path = prepare(look)
    here = Path(os.path.realpath(path.parent))
    assert sorted(p.name for p in here.iterdir()) == ["epoch00.ckpt", "last.ckpt"]
    [state] = [
        s
        for s in torch.load(path, weights_only=True)["callbacks"].values()
        if "best_model_score" in s
    ]
    assert state["dirpath"] == str(here)
    assert state["best_model_path"] == str(here / "epoch00.ckpt")
    assert float(state["best_model_score"]) == pytest.approx(epoch0)
    assert look.paths.output_dir == str(path.parent.parent)

    resumed = compose_train(second, [*run, f"ckpt_path={run_id}"], out="outputs/runs/mmoe/again")
    with keep_tracking_env():
        metrics = train(resumed)
    assert metrics
    folder = second / "outputs" / "runs" / "mmoe" / "again" / "checkpoints"
    assert epoch_of(folder / "last.ckpt") == 1  # epoch 1 trained here, after epoch 0 there
    mlflow_run = client.get_run(run_id)  # the same MLflow run, finished now
    assert mlflow_run.info.status == "FINISHED"
    assert mlflow_run.data.tags["recolab.complete"] == "true"
    assert mlflow_run.data.tags["recolab.resumed_from"] == str(folder / "last.ckpt")
    # The run tested the better of epoch 0 (there) and epoch 1 (here).
    by_step = {h.step: h.value for h in client.get_metric_history(run_id, "val/loss")}
    scores = [by_step[s] for s in sorted(by_step)][:2]  # then the tested one's, logged again
    best = f"epoch{scores.index(min(scores)):02d}.ckpt"
    report = json.loads((folder.parent / "report" / "metrics.json").read_text())
    assert Path(report["context"]["checkpoint"]).name == best
    assert mlflow_run.data.tags["recolab.best_checkpoint"] == best

    # Finished now: resuming it again is refused, naming the evaluation to run instead.
    again = compose_train(second, [*run, f"ckpt_path={run_id}"], out="outputs/runs/mmoe/third")
    with pytest.raises(ResumeError, match=rf"evaluate run_id={run_id}"):
        train(again)


def test_a_run_without_logged_checkpoints_is_named_with_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = tmp_path / "first"
    cfg = compose_train(
        first, [*RUN[:-1], "trainer.max_epochs=1", "log_checkpoints=false"], data_dir=first / "data"
    )
    with keep_tracking_env():
        train(cfg)
    _, run = the_run(f"sqlite:///{first}/mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{first}/mlflow.db")
    cfg = compose_train(tmp_path, [f"run_id={run.info.run_id}"], config_name="evaluate", out="eval")
    with pytest.raises(FileNotFoundError, match=r"has no artifact checkpoints/best.ckpt .*none"):
        evaluate(cfg)
    cfg = compose_train(
        tmp_path, ["run_id=0123456789abcdef0123456789abcdef"], config_name="evaluate"
    )
    with pytest.raises(
        FileNotFoundError, match=r"MLflow run 0123456789abcdef0123456789abcdef is not in"
    ):
        evaluate(cfg)
