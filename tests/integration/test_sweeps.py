"""Sweeps as a user runs them: a Hydra multirun over experiments and seeds, and an Optuna search that
maximizes a named metric; every job is its own MLflow run, all tagged with one sweep id."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, TINY_WORLD
from tests.integration.probe import ONE_THREAD_ENV

QUICK = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=2",
    "callbacks.progress_bar.refresh_rate=0",
]


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RECOLAB_CONFIG_DIR": str(ROOT / "configs"), **ONE_THREAD_ENV}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", "recolab", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def runs(root: Path) -> list:
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    return client.search_runs([client.get_experiment_by_name("recolab").experiment_id])


def test_multirun_over_experiments_and_seeds_gives_one_run_each(tmp_path: Path) -> None:
    r = run_cli(
        ["train", "-m", "+exp=mmoe,shared_bottom", "seed=1,2", *TINY_WORLD, *QUICK], tmp_path
    )
    assert r.returncode == 0, r.stderr[-3000:]
    found = runs(tmp_path)
    assert sorted((run.data.tags["recolab.exp"], run.data.params["seed"]) for run in found) == [
        ("mmoe", "1"),
        ("mmoe", "2"),
        ("shared_bottom", "1"),
        ("shared_bottom", "2"),
    ]
    assert all(
        run.info.status == "FINISHED" and run.data.tags["recolab.complete"] == "true"
        for run in found
    )
    [sweep] = {run.data.tags["recolab.sweep"] for run in found}  # one sweep id, on every job
    [sweep_dir] = (tmp_path / "outputs" / "multiruns").iterdir()
    assert sweep == sweep_dir.name and len(list(sweep_dir.glob("*/checkpoints/last.ckpt"))) == 4
    assert (
        len({run.data.metrics["test/auc/click"] for run in found}) == 4
    )  # four different runs, really


@pytest.mark.slow
def test_optuna_search_maximizes_the_named_metric(tmp_path: Path) -> None:
    r = run_cli(
        [
            "train",
            "-m",
            "+exp=mmoe",
            "+hparams_search=mmoe_optuna",
            "hydra.sweeper.n_trials=3",
            *TINY_WORLD,
            *QUICK,
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    found = runs(tmp_path)
    assert len(found) == 3 and len({run.data.tags["recolab.sweep"] for run in found}) == 1
    [sweep_dir] = (tmp_path / "outputs" / "multiruns").iterdir()
    result = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    # Optuna's best value is the best trial's val/auc/click, read on the checkpoint each trial tested.
    best = max(found, key=lambda run: run.data.metrics["val/auc/click"])
    assert result["best_value"] == pytest.approx(best.data.metrics["val/auc/click"], abs=1e-6)
    assert str(result["best_params"]["model.num_experts"]) == best.data.params["model.num_experts"]
