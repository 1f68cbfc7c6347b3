"""The command line as a user runs it: real subprocesses."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recolab.stacks import DUMP_SIGNAL
from tests.conftest import ROOT, TINY_WORLD


def communicate_or_dump(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """`proc.communicate(timeout=...)` for a process started with `start_new_session=True`.

    If it runs past `timeout`, every process of its session (DDP ranks, loader workers) is asked
    for its threads' stacks (SIGUSR2, `recolab.stacks`), then the session is killed, so no rank
    or worker outlives the test holding its pipes, and the test fails with those stacks.
    """
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, DUMP_SIGNAL)
        time.sleep(1)  # faulthandler writes from the signal handler, at once
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(
            f"{' '.join(map(str, proc.args))} ran past {timeout} s; its processes' stacks "
            f"then (stderr's end):\n{err[-30000:]}"
        )


def run_cli(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(
        [sys.executable, "-m", "recolab", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RECOLAB_CONFIG_DIR": str(ROOT / "configs"), **(env or {})},
        start_new_session=True,
    )
    out, err = communicate_or_dump(proc, timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


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


def _train_reading_its_data(tmp_path: Path, *args: str) -> subprocess.Popen:
    """A tiny training run in its own session, returned once train() has written its data
    (the stack handler is registered before Hydra starts)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "recolab", "train", "+exp=mmoe", *TINY_WORLD, *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RECOLAB_CONFIG_DIR": str(ROOT / "configs")},
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "data").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no data folder: the run ended or took 120 s: {proc.communicate()}")
        time.sleep(0.1)
    return proc


@pytest.mark.skipif(DUMP_SIGNAL is None, reason="no SIGUSR2 on this platform")
def test_sigusr2_prints_a_running_tasks_stacks_and_a_run_past_its_limit_is_killed_with_them(
    tmp_path: Path,
) -> None:
    # Still running when the test kills it: no epoch limit it could reach, and no early stopping
    # (which ended the tiny world's run within 2 s of its data on a faster CPU, before the kill).
    proc = _train_reading_its_data(
        tmp_path, "trainer.max_epochs=100000", "~callbacks.early_stopping"
    )
    os.kill(proc.pid, DUMP_SIGNAL)
    time.sleep(2)
    assert proc.poll() is None, "the dump does not stop the run"
    with pytest.raises(pytest.fail.Exception, match=r"ran past 0.5 s") as failed:
        communicate_or_dump(proc, timeout=0.5)
    assert proc.returncode == -signal.SIGKILL
    stacks = str(failed.value)
    # One dump on the signal, one at the time limit. Counted by the main thread's outermost frame,
    # which each dump prints once: the "Current thread" header marks the thread that took the
    # signal, and the kernel may hand it to a torch or gloo thread that runs no Python.
    dumps = stacks.count("in _run_module_as_main")
    assert dumps == 2, f"{dumps} dumps, expected one on the signal and one at the time limit"
    assert re.search(r'File ".*recolab[/\\]train\.py", line \d+ in main', stacks), stacks[-3000:]
