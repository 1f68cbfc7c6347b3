"""MLflow end to end: a real `mlflow server` on 127.0.0.1 (a free port, stopped by its process id), two
tiny experiments tracked into it, and everything checked through the server's REST API."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from recolab.train import train
from tests.conftest import TINY_WORLD, compose_train
from tests.integration.probe import one_torch_thread  # noqa: F401 (a fixture)

QUICK = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=2",
    "callbacks.progress_bar.refresh_rate=0",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read())


def start_mlflow_server(folder: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """A real `mlflow server` on 127.0.0.1 (a free port unless given) with its store in `folder`,
    in its own process group (stop it with `stop_mlflow_server`), once it answers /health."""
    port = port or free_port()
    log = (folder / "server.log").open("a")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{folder}/server.db",
            "--artifacts-destination",
            str(folder / "server_artifacts"),
        ],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()  # the server holds its own descriptor
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            stop_mlflow_server(proc)
            pytest.fail(f"mlflow server exited:\n{(folder / 'server.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            stop_mlflow_server(proc)
            pytest.fail("mlflow server did not answer /health in 180 s")
        time.sleep(0.5)


def stop_mlflow_server(proc: subprocess.Popen) -> None:
    """Stop the server and its worker, by the group's id (already gone is fine)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    proc, url = start_mlflow_server(tmp_path)
    try:
        yield url
    finally:
        stop_mlflow_server(proc)


@pytest.mark.usefixtures("one_torch_thread")
def test_two_experiments_land_on_a_real_server(
    tmp_path: Path, data_cache: Path, mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    expected = {}
    for exp in ("mmoe", "shared_bottom"):
        cfg = compose_train(
            tmp_path, [f"+exp={exp}", *TINY_WORLD, *QUICK], data_dir=data_cache, out=exp
        )
        assert cfg.logger.mlflow.tracking_uri == mlflow_server
        expected[exp] = train(cfg)

    api = f"{mlflow_server}/api/2.0/mlflow"
    experiment = get(f"{api}/experiments/get-by-name?experiment_name=recolab")["experiment"]
    runs = post(
        f"{api}/runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 100}
    )["runs"]
    assert len(runs) == 2
    for run in runs:
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        exp = tags["recolab.exp"]
        assert run["info"]["status"] == "FINISHED" and tags["recolab.complete"] == "true"
        assert (
            params["exp_name"] == exp
            and params["seed"] == "0"
            and params["model._target_"].endswith(
                {"mmoe": "MMoE", "shared_bottom": "SharedBottom"}[exp]
            )
        )
        for key, value in expected[exp].items():
            assert metrics[key] == pytest.approx(value, nan_ok=True), key
        query = urllib.parse.urlencode({"run_id": run["info"]["run_id"], "path": "report"})
        files = {f["path"] for f in get(f"{api}/artifacts/list?{query}").get("files", [])}
        assert {"report/report.md", "report/metrics.json"} <= files
        root = {
            f["path"]
            for f in get(f"{api}/artifacts/list?run_id={run['info']['run_id']}").get("files", [])
        }
        assert "config.yaml" in root
    assert {
        t["value"] for run in runs for t in run["data"]["tags"] if t["key"] == "recolab.exp"
    } == {"mmoe", "shared_bottom"}
