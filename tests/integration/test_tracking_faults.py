"""Tracking faults with real parts: a port that is open but not MLflow, one that never answers, a run
that raises mid-training, a run interrupted by a real SIGINT; checkpoints that load with
`weights_only=True` (and a pickled object that is refused)."""

from __future__ import annotations

import http.server
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from recolab.evaluate import load_checkpoint
from recolab.resume import CheckpointError
from recolab.tracking import TrackingError
from recolab.train import train
from tests.conftest import ROOT, TINY_WORLD, compose_train
from tests.integration.probe import LOG, ONE_THREAD_ENV, PAUSE_AFTER, one_torch_thread  # noqa: F401 (a fixture)

QUICK = [
    "trainer.max_epochs=2",
    "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=2",
    "callbacks.progress_bar.refresh_rate=0",
]


@pytest.fixture
def not_mlflow() -> Iterator[str]:
    """A real HTTP server on a free port that answers 404 to everything (not an MLflow server)."""

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def silent_port() -> Iterator[str]:
    """A port that accepts connections and never says a word."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def test_an_open_port_that_is_not_mlflow_fails_before_training(
    tmp_path: Path, not_mlflow: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", not_mlflow)
    start = time.monotonic()
    with pytest.raises(
        TrackingError, match=r"answered HTTP 404 on /health: is it an MLflow tracking server\?"
    ):
        train(compose_train(tmp_path, ["+exp=mmoe", *TINY_WORLD]))
    assert time.monotonic() - start < 30
    assert not (tmp_path / "data").exists(), "data was read before the tracking check"


def test_a_server_that_never_answers_fails_within_seconds(
    tmp_path: Path, silent_port: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", silent_port)
    start = time.monotonic()
    with pytest.raises(TrackingError, match=r"is not reachable \(.*timed out"):
        train(compose_train(tmp_path, ["+exp=mmoe", *TINY_WORLD]))
    assert time.monotonic() - start < 30
    assert not (tmp_path / "data").exists()


@pytest.mark.usefixtures("one_torch_thread")
def test_a_run_that_raises_mid_training_is_failed_not_complete(
    tmp_path: Path, data_cache: Path
) -> None:
    cfg = compose_train(
        tmp_path,
        [
            "+exp=mmoe",
            *TINY_WORLD,
            *QUICK,
            "+callbacks.probe._target_=tests.integration.probe.Probe",
            "+callbacks.probe.raise_at_epoch=1",
        ],
        data_dir=data_cache,
    )
    with pytest.raises(RuntimeError, match="failing on purpose at epoch 1"):
        train(cfg)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("recolab").experiment_id])
    assert run.info.status == "FAILED"
    assert "recolab.complete" not in run.data.tags
    assert not (tmp_path / "out" / "report").exists(), "a report was written for a run that failed"

    # The checkpoint it left (epoch 0) loads with weights_only=True: tensors and plain data only.
    last = tmp_path / "out" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["recolab"]["run_id"] == run.info.run_id
    assert load_checkpoint(str(last))["recolab"]["config"] == ckpt["recolab"]["config"]


class Payload:
    """Unpickling this would run code (`os.system` in a real attack); weights_only refuses it."""

    def __reduce__(self) -> tuple:
        return (os.getpid, ())


def test_a_checkpoint_holding_a_pickled_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "recolab": {"config": "{}"}, "payload": Payload()}, path)
    with pytest.raises(
        CheckpointError,
        match=r"evil\.ckpt: refused by torch\.load\(weights_only=True\) \(Trying to load unsupported GLOBAL posix\.getpid",
    ) as e:
        load_checkpoint(str(path))
    assert isinstance(e.value.__cause__, pickle.UnpicklingError)
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(
        CheckpointError, match=r"junk\.ckpt: refused by torch\.load\(weights_only=True\)"
    ):
        load_checkpoint(str(tmp_path / "junk.ckpt"))


@pytest.mark.slow  # a subprocess; the in-process test above covers the FAILED path in the default suite
def test_an_interrupted_run_is_marked_failed(tmp_path: Path) -> None:
    log = tmp_path / "probe.log"
    env = {
        **os.environ,
        "RECOLAB_CONFIG_DIR": str(ROOT / "configs"),
        "PYTHONPATH": str(ROOT),
        LOG: str(log),
        PAUSE_AFTER: "2",
        **ONE_THREAD_ENV,
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "recolab",
            "train",
            "+exp=mmoe",
            *TINY_WORLD,
            *QUICK,
            "+callbacks.probe._target_=tests.integration.probe.Probe",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not Path(f"{log}.paused").exists():
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, (
                "the run never reached the step where it is interrupted"
            )
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)  # Ctrl-C: Lightning shuts down, train() marks the run
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("recolab").experiment_id])
    assert run.info.status == "FAILED" and "recolab.complete" not in run.data.tags
