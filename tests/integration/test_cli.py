"""The command line as a user runs it: real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT, TINY_WORLD


def run_cli(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "recolab", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "RECOLAB_CONFIG_DIR": str(ROOT / "configs"), **(env or {})},
    )


def test_train_prints_metrics_and_where_the_run_went(tmp_path: Path) -> None:
    r = run_cli(["train", "+exp=mmoe", *TINY_WORLD, "trainer.max_epochs=1", "seed=3"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| click | auc |" in r.stdout and "oracle" in r.stdout
    assert "mlflow: run" in r.stdout and (tmp_path / "mlflow.db").exists()
    assert list((tmp_path / "outputs" / "runs" / "mmoe").glob("*/checkpoints/last.ckpt"))


def test_unknown_experiment_lists_the_valid_ones(tmp_path: Path) -> None:
    r = run_cli(["train", "+exp=mmeo"], tmp_path)
    assert r.returncode != 0
    assert (
        "Could not find 'exp/mmeo'" in r.stderr
        and "mmoe" in r.stderr
        and "shared_bottom" in r.stderr
    )


def test_unreachable_tracking_server_fails_fast(tmp_path: Path) -> None:
    start = time.monotonic()
    r = run_cli(
        ["train", "+exp=mmoe", *TINY_WORLD],
        tmp_path,
        env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"},
    )
    assert r.returncode != 0
    assert "not reachable" in r.stderr and "127.0.0.1:9" in r.stderr
    assert not (tmp_path / "data").exists(), "data was read before the tracking check"
    assert time.monotonic() - start < 60


def test_unknown_task_prints_usage(tmp_path: Path) -> None:
    r = run_cli(["trian"], tmp_path)
    assert r.returncode != 0 and "usage: python -m recolab" in r.stderr
