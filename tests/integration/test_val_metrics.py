"""Validation metrics every epoch: the test epoch's per-task set (GAUC and XGAUC included), logged
as `val/...` into a real MLflow store, and a checkpoint chosen on one of them (`val/gauc/click`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient

from recolab.train import build, train
from tests.conftest import TINY_WORLD, compose_train

EPOCHS = 5


def test_every_epoch_logs_the_test_metric_set_and_the_checkpoint_is_the_best_val_gauc(
    tmp_path: Path, data_cache: Path
) -> None:
    cfg = compose_train(
        tmp_path,
        [
            "+exp=mmoe",
            *TINY_WORLD,
            f"trainer.max_epochs={EPOCHS}",
            "callbacks.progress_bar.refresh_rate=0",
            "callbacks.early_stopping=null",
            "callbacks.model_checkpoint.monitor=val/gauc/click",
            "callbacks.model_checkpoint.mode=max",
            "module.lr=0.1",  # a rate at which the tiny world's val GAUC goes up and down
        ],
        data_dir=data_cache,
    )
    train(cfg)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    run_id = run.info.run_id

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    module = build(cfg, datamodule)[1]
    val = set(module.logged_metric_names("val"))
    # The test epoch's per-task metrics, split for split: GAUC and XGAUC included.
    per_task = {
        "val/" + m.removeprefix("test/")
        for m in module.logged_metric_names("test")
        if m.startswith("test/") and "_raw/" not in m and "/truth_" not in m
    }
    assert {"val/gauc/click", "val/gauc/like", "val/xgauc/watch_time", "val/xauc/watch_time"} <= val
    assert per_task == val
    assert {k for k in run.data.metrics if k.startswith("val/")} == val

    history = {k: client.get_metric_history(run_id, k) for k in sorted(val)}
    for name, points in history.items():
        # one value per epoch, then the tested checkpoint's once more at the last step
        assert len(points) == EPOCHS + 1, (name, [(p.step, p.value) for p in points])
    gauc = [p.value for p in sorted(history["val/gauc/click"], key=lambda p: p.step)[:EPOCHS]]
    best_epoch = max(range(EPOCHS), key=gauc.__getitem__)

    # The best checkpoint is the epoch of the highest val GAUC, and it is the one tested.
    tested = Path(
        json.loads((tmp_path / "out" / "report" / "metrics.json").read_text())["context"][
            "checkpoint"
        ]
    )
    assert tested.name == f"epoch{best_epoch:02d}.ckpt"
    stored = torch.load(tested, weights_only=True, mmap=True)
    assert stored["epoch"] == best_epoch
    assert stored["recolab"]["val_metrics"]["val/gauc/click"] == pytest.approx(max(gauc))
    # The run's latest val/ values are the tested checkpoint's: what a sweep chooses on.
    for name in val:
        assert run.data.metrics[name] == pytest.approx(
            stored["recolab"]["val_metrics"][name], nan_ok=True
        )
