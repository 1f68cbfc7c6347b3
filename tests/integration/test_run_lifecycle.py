"""A run's lifecycle with real parts (`recolab.lifecycle`): runs started together keep their own
folders and MLflow runs; a forced shared folder is refused; a fresh local store opened by several
processes at once; SIGTERM and SIGKILL; a tracking server killed mid-run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
from mlflow.tracking import MlflowClient

from recolab.lifecycle import MARKER, RunDirError, claim_run_dir, training_process
from recolab.run_logger import UNLOGGED, TrackingIncomplete, replay_unlogged
from recolab.train import train
from tests.conftest import ROOT, TINY_WORLD, compose_train
from tests.integration.probe import ONE_THREAD_ENV, one_torch_thread  # noqa: F401 (a fixture)
from tests.integration.test_cli import communicate_or_dump
from tests.integration.test_mlflow_server import start_mlflow_server, stop_mlflow_server

QUICK = [
    "trainer.max_epochs=2",
    "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=2",
    "callbacks.progress_bar.refresh_rate=0",
    "~callbacks.early_stopping",
]
ENV = {
    "RECOLAB_CONFIG_DIR": str(ROOT / "configs"),
    "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    **ONE_THREAD_ENV,
}


def start_cli(args: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    """`python -m recolab <args>` in its own session, with the repository on PYTHONPATH (for the
    callbacks below)."""
    full = {**os.environ, **ENV, **env}
    if "MLFLOW_TRACKING_URI" not in env:
        full.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(
        [sys.executable, "-m", "recolab", *args],
        cwd=cwd,
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def local_runs(root: Path) -> list[Any]:
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    return client.search_runs([client.get_experiment_by_name("recolab").experiment_id])


# -- callbacks the runs below load by path (`+callbacks.x._target_=tests.integration...`) --------


class StatusAtTestStart(pl.Callback):
    """Records the MLflow run's status as testing starts, after `fit` has ended."""

    seen: list[str] = []

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        mlf = trainer.logger
        run = MlflowClient(tracking_uri=mlf._tracking_uri).get_run(mlf.run_id)
        StatusAtTestStart.seen.append(run.info.status)


class WaitForSigterm(pl.Callback):
    """After global step `step`: write `<path>` and wait (outside any sleep Python would resume
    after a handler) until Lightning has seen a SIGTERM, so the loop stops at this batch's end."""

    def __init__(self, step: int, path: str) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            Path(self.path).write_text(str(trainer.global_step))
            deadline = time.monotonic() + 120
            while not trainer.received_sigterm and time.monotonic() < deadline:
                time.sleep(0.05)


class KillServer(pl.Callback):
    """After global step `step`: SIGKILL the tracking server's process group and note when."""

    def __init__(self, step: int, pgid: int, path: str) -> None:
        self.step, self.pgid, self.path = step, pgid, path

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.killpg(self.pgid, signal.SIGKILL)
            Path(self.path).write_text(str(time.time()))


# -- the run's folder -----------------------------------------------------------------------


def test_runs_started_together_keep_their_own_folders_and_mlflow_runs(tmp_path: Path) -> None:
    """Two seeds launched at once against a fresh store (they used to share a folder and report
    one model's metrics twice, or fail creating the store's tables); a third run forced into the
    first one's folder is refused and leaves its files alone."""
    seeds = (1, 2)
    procs = {
        s: start_cli(["train", "+exp=mmoe", *TINY_WORLD, *QUICK, f"seed={s}"], tmp_path)
        for s in seeds
    }
    outs = {s: communicate_or_dump(p, 300) for s, p in procs.items()}
    for s, p in procs.items():
        assert p.returncode == 0, outs[s][1][-3000:]
    folders = {s: Path(re.search(r"^outputs: (.+)$", outs[s][0], re.M)[1]) for s in seeds}
    assert folders[1] != folders[2]

    runs = {r.info.run_id: r for r in local_runs(tmp_path)}
    assert len(runs) == 2
    tested = {}
    for s in seeds:
        folder = folders[s]
        run = runs[re.search(r"^mlflow: run (\w+)", outs[s][0], re.M)[1]]
        assert run.info.status == "FINISHED" and run.data.tags["recolab.seed"] == str(s)
        assert run.data.tags["recolab.output_dir"] == str(folder)
        assert f"seed: {s}\n" in (folder / "config.yaml").read_text()
        report = json.loads((folder / "report" / "metrics.json").read_text())
        tested[s] = {k: v for k, v in run.data.metrics.items() if k.startswith("test/")}
        assert tested[s] and all(
            report["metrics"][k] == pytest.approx(v) for k, v in tested[s].items()
        ), (report, tested[s])
    assert tested[1] != tested[2], "two seeds gave the same test metrics"

    # A folder given explicitly that already holds a run: refused before anything is written.
    first = folders[1]
    before = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}
    p = start_cli(["train", "+exp=mmoe", *TINY_WORLD, f"hydra.run.dir={first}"], tmp_path)
    _, err = communicate_or_dump(p, 120)
    assert p.returncode != 0
    assert f"run folder {first} already holds another run" in err, err[-3000:]
    assert {p: p.read_bytes() for p in first.rglob("*") if p.is_file()} == before
    assert len(local_runs(tmp_path)) == 2


def test_two_sweeps_started_together_get_their_own_folders(tmp_path: Path) -> None:
    """The sweep folder each of two launches resolves (a sweep's jobs are its subfolders)."""
    args = ["train", "+exp=mmoe", "--cfg", "hydra", "--package", "hydra.sweep", "--resolve"]
    procs = [start_cli(args, tmp_path) for _ in range(2)]
    dirs = []
    for p in procs:
        out, err = communicate_or_dump(p, 120)
        assert p.returncode == 0, err[-3000:]
        dirs.append(re.search(r"^dir: (outputs/multiruns/.+)$", out, re.M)[1])
    assert dirs[0] != dirs[1], dirs


def test_a_folder_another_process_holds_is_refused_and_resumable_once_it_is_gone(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from recolab.lifecycle import claim_run_dir as c; "
            f"c({str(folder)!r}, resuming=False); print('held', flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirError, match=rf"run folder {folder} already holds another run"):
            claim_run_dir(folder, resuming=False)
        with pytest.raises(
            RunDirError, match=rf"run folder {folder} is in use by a running process"
        ):
            claim_run_dir(folder, resuming=True)
    finally:
        holder.kill()
        holder.wait()
    with pytest.raises(RunDirError, match="already holds another run"):
        claim_run_dir(folder, resuming=False)  # the run is gone; its folder is still its own
    claim_run_dir(folder, resuming=True)  # a resumed run continues there
    assert (folder / MARKER).exists()


# -- the local store --------------------------------------------------------------------------


def test_a_fresh_local_store_opened_by_several_processes_at_once(tmp_path: Path) -> None:
    """What `train`, `evaluate` and `compare` do first, in four processes released together."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    go = tmp_path / "go"
    script = (
        "import os, sys, time\n"
        "from mlflow.tracking import MlflowClient\n"
        "from recolab.tracking import check_reachable\n"
        "print('ready', flush=True)\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.001)\n"
        f"check_reachable({uri!r})\n"
        f"MlflowClient(tracking_uri={uri!r}).search_experiments()\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.communicate()[1][-3000:]
    go.touch()
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(e[-1500:] for e in errors)


# -- how a run ends ---------------------------------------------------------------------------


@pytest.mark.usefixtures("one_torch_thread")
def test_the_run_is_not_finished_before_its_report(tmp_path: Path, data_cache: Path) -> None:
    """Lightning's logger ended the MLflow run at the end of `fit`: a SIGKILL during testing left
    it FINISHED without test metrics or report."""
    StatusAtTestStart.seen.clear()
    cfg = compose_train(
        tmp_path,
        [
            "+exp=mmoe",
            *TINY_WORLD,
            *QUICK,
            "+callbacks.status._target_=tests.integration.test_run_lifecycle.StatusAtTestStart",
        ],
        data_dir=data_cache,
    )
    train(cfg)
    assert StatusAtTestStart.seen == ["RUNNING"]
    [run] = local_runs(tmp_path)
    assert run.info.status == "FINISHED" and run.data.tags["recolab.complete"] == "true"


def test_sigterm_marks_the_run_killed_and_exits_143(tmp_path: Path) -> None:
    paused = tmp_path / "paused"
    proc = start_cli(
        [
            "train",
            "+exp=mmoe",
            *TINY_WORLD,
            *QUICK,
            "+callbacks.wait._target_=tests.integration.test_run_lifecycle.WaitForSigterm",
            "+callbacks.wait.step=4",  # in epoch 1: epoch 0's checkpoint is written
            f"+callbacks.wait.path={paused}",
        ],
        tmp_path,
    )
    deadline = time.monotonic() + 240
    while not paused.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"the run never reached step 4: {proc.communicate()[1][-3000:]}")
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = communicate_or_dump(proc, 120)
    assert proc.returncode == 143, err[-3000:]
    [line] = [ln for ln in err.splitlines() if "killed by SIGTERM" in ln]
    last = re.search(r"the last checkpoint is kept at (\S+);", line)[1]
    assert last.endswith("checkpoints/last.ckpt") and Path(last).is_file(), line
    assert "ckpt_path=last" in line
    [run] = local_runs(tmp_path)
    assert run.info.status == "KILLED" and "recolab.complete" not in run.data.tags


@pytest.mark.usefixtures("one_torch_thread")
def test_a_tracking_server_killed_mid_training_in_process(tmp_path: Path, data_cache: Path) -> None:
    """The default suite's variant of the test below: `train()` in this process, with the
    training process's MLflow settings (`training_process`), then `replay_unlogged`."""
    server, url = start_mlflow_server(tmp_path)
    killed = tmp_path / "killed"
    cfg = compose_train(
        tmp_path,
        [
            "+exp=mmoe",
            *TINY_WORLD,
            *QUICK,
            "+callbacks.kill._target_=tests.integration.test_run_lifecycle.KillServer",
            "+callbacks.kill.step=2",
            f"+callbacks.kill.pgid={server.pid}",
            f"+callbacks.kill.path={killed}",
            f"logger.mlflow.tracking_uri={url}",
            "logger.mlflow.artifact_location=null",
        ],
        data_dir=data_cache,
    )
    try:
        with training_process(), pytest.raises(TrackingIncomplete) as e:
            train(cfg)
    finally:
        stop_mlflow_server(server)
    assert time.time() - float(killed.read_text()) < 60
    out = tmp_path / "out"
    assert f"python -m recolab sync {out}" in str(e.value) and "Connection refused" in str(e.value)
    assert (out / "checkpoints" / "last.ckpt").is_file() and (out / UNLOGGED).is_file()

    server, _ = start_mlflow_server(tmp_path, int(url.rsplit(":", 1)[1]))
    try:
        assert "status FINISHED" in replay_unlogged(out)
        run = MlflowClient(tracking_uri=url).get_run(e.value.args[0].split("MLflow run ")[1][:32])
    finally:
        stop_mlflow_server(server)
    report = json.loads((out / "report" / "metrics.json").read_text())["metrics"]
    tested = {k: v for k, v in run.data.metrics.items() if k.startswith("test/")}
    assert run.info.status == "FINISHED" and run.data.tags["recolab.complete"] == "true"
    assert tested and all(report[k] == pytest.approx(v) for k, v in tested.items())


@pytest.mark.slow  # the command line: two tracking server starts and a run, ~26 s on 2 cores
def test_a_tracking_server_killed_mid_run(tmp_path: Path) -> None:
    """Training goes on within seconds of the server's death; the run ends non-zero saying what
    was not logged and how to log it; `recolab sync` records it once the server is back."""
    server, mlflow_server = start_mlflow_server(tmp_path)
    pgid = server.pid
    killed = tmp_path / "killed"
    start = time.time()
    proc = start_cli(
        [
            "train",
            "+exp=mmoe",
            *TINY_WORLD,
            *QUICK,
            "+callbacks.kill._target_=tests.integration.test_run_lifecycle.KillServer",
            "+callbacks.kill.step=2",
            f"+callbacks.kill.pgid={pgid}",
            f"+callbacks.kill.path={killed}",
        ],
        tmp_path,
        MLFLOW_TRACKING_URI=mlflow_server,
    )
    try:
        out, err = communicate_or_dump(proc, 300)
    finally:
        stop_mlflow_server(server)
    ended = time.time()
    assert killed.exists(), f"the server was never killed: {err[-3000:]}"
    assert ended - float(killed.read_text()) < 60, f"{ended - start:.0f} s; {err[-3000:]}"
    assert proc.returncode != 0
    folder = Path(re.search(r"^outputs: (.+)$", out, re.M)[1])
    assert "TrackingIncomplete" in err and f"python -m recolab sync {folder}" in err, err[-3000:]
    assert (folder / "checkpoints" / "last.ckpt").is_file()
    assert (folder / "report" / "metrics.json").is_file()
    records = [json.loads(ln) for ln in (folder / UNLOGGED).read_text().splitlines()]
    assert any(k.startswith("test/") for r in records if "metrics" in r for k in r["metrics"])
    assert records[-1]["end"]["status"] == "FINISHED"

    # The server back, on the same store and port: the run is recorded complete.
    server, _ = start_mlflow_server(tmp_path, int(mlflow_server.rsplit(":", 1)[1]))
    try:
        p = start_cli(["sync", str(folder)], tmp_path, MLFLOW_TRACKING_URI=mlflow_server)
        sync_out, sync_err = communicate_or_dump(p, 120)
        assert p.returncode == 0, sync_err[-3000:]
        assert "status FINISHED" in sync_out
        run_id = json.loads((folder / f"{UNLOGGED}.synced").read_text().splitlines()[0])["run_id"]
        run = MlflowClient(tracking_uri=mlflow_server).get_run(run_id)
        report = json.loads((folder / "report" / "metrics.json").read_text())["metrics"]
        assert run.info.status == "FINISHED" and run.data.tags["recolab.complete"] == "true"
        tested = {k: v for k, v in run.data.metrics.items() if k.startswith("test/")}
        assert tested and all(report[k] == pytest.approx(v) for k, v in tested.items())
    finally:
        stop_mlflow_server(server)
