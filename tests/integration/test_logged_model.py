"""The MLflow Model every training run logs (`recolab.serving`): loaded in a fresh process that never
saw the run's folder, served by a real `mlflow models serve` over HTTP, registered by name, and
scoring raw rows exactly as the run scored its test split."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from recolab import metrics as M
from recolab.tracking import keep_tracking_env
from recolab.train import build, train
from tests.conftest import TINY_WORLD, compose_train
from tests.integration.probe import ONE_THREAD_ENV, one_torch_thread  # noqa: F401 (a fixture)
from tests.integration.test_mlflow_server import free_port, post, stop_mlflow_server

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUICK = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=4",
    "callbacks.progress_bar.refresh_rate=0",
]


def rebuilt_and_tested(ckpt_path: Path) -> tuple[Any, Any]:
    """The run's best checkpoint rebuilt and tested as `recolab evaluate` does: the module (its
    `test_results`) and the data module."""
    ckpt = torch.load(ckpt_path, weights_only=True)
    cfg = OmegaConf.create(ckpt["recolab"]["config"])
    datamodule = instantiate(cfg.data)
    datamodule.load_state_dict(ckpt["recolab"]["data_state"])
    datamodule.prepare_data()
    datamodule.setup("test")
    _, module = build(cfg, datamodule)
    module.load_state_dict(ckpt["state_dict"])
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.test(module, datamodule=datamodule, verbose=False)
    return module, datamodule


def train_run(root: Path, overrides: list[str]) -> tuple[str, str]:
    """Train into `root`'s own store; return (tracking URI, run id)."""
    cfg = compose_train(root, overrides, data_dir=root / "data")
    with keep_tracking_env():
        train(cfg)
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("recolab").experiment_id])
    return uri, run.info.run_id


@pytest.fixture(scope="module")
def ranker(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny MMoE run with calibrated click and like and D2Q's watch time (which reads each row's
    `duration`), registered as `tiny-mmoe`; its test rows (raw, as the log holds them) and its
    own test predictions; then its outputs/ folder removed."""
    root = tmp_path_factory.mktemp("ranker")
    torch.set_num_threads(1)
    overrides = ["+exp=d2q", *TINY_WORLD, *QUICK, "+calibration=isotonic"]
    with pytest.MonkeyPatch.context() as mp:  # set up before the per-test fixtures clear it
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        uri, run_id = train_run(root, [*overrides, "register_as=tiny-mmoe"])
    module, datamodule = rebuilt_and_tested(
        next((root / "out" / "checkpoints").glob("epoch*.ckpt"))
    )
    _, table = datamodule._load()
    rows = datamodule._split(datamodule._validate(table))["test"].to_pandas()
    shutil.rmtree(root / "out")  # nothing of the run's folder is left: only the store
    return {
        "uri": uri,
        "run_id": run_id,
        "rows": rows,
        "preds": module.test_results["preds"],
        "tasks": module.schema.task_names,
        "root": root,
    }


def fresh_process(code: str, cwd: Path, uri: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, **ONE_THREAD_ENV}
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done


LOAD_AND_PREDICT = """
import sys
import mlflow
import pandas as pd

rows = pd.read_parquet(sys.argv[1])
for i, uri in enumerate(sys.argv[3:]):
    mlflow.pyfunc.load_model(uri).predict(rows).to_parquet(f"{sys.argv[2]}.{i}")
"""


def test_the_logged_model_loads_in_a_fresh_process_and_scores_raw_rows_as_the_run_did(
    ranker, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"  # another machine: no outputs/, no configs, the store only
    elsewhere.mkdir()
    rows = ranker["rows"]
    rows.to_parquet(tmp_path / "rows.parquet")  # every column of the log, as it holds them
    uris = [f"runs:/{ranker['run_id']}/model", "models:/tiny-mmoe/1"]
    fresh_process(
        LOAD_AND_PREDICT,
        elsewhere,
        ranker["uri"],
        str(tmp_path / "rows.parquet"),
        str(tmp_path / "scores"),
        *uris,
    )
    for i, uri in enumerate(uris):
        scores = pd.read_parquet(tmp_path / f"scores.{i}")
        assert list(scores.columns) == ranker["tasks"], uri
        for task in ranker["tasks"]:  # the calibrated click and like, watch time
            np.testing.assert_allclose(
                scores[task].to_numpy(), ranker["preds"][task], rtol=1e-5, atol=1e-7, err_msg=task
            )
    # Row for row the run's test predictions: the metrics it logged, from the model's scores.
    logged = MlflowClient(ranker["uri"]).get_run(ranker["run_id"]).data.metrics
    scores = pd.read_parquet(tmp_path / "scores.0")
    for task in ("click", "like"):
        y = rows[task].to_numpy()
        assert M.auc(y, scores[task].to_numpy()) == pytest.approx(logged[f"test/auc/{task}"])
        assert M.logloss(y, scores[task].to_numpy()) == pytest.approx(
            logged[f"test/logloss/{task}"], rel=1e-5
        )
    y = rows["watch_time"].to_numpy()  # D2Q's served watch time, through each row's duration
    assert M.xauc(y, scores["watch_time"].to_numpy()) == pytest.approx(
        logged["test/xauc/watch_time"]
    )


def test_the_model_is_data_with_a_signature_an_example_and_no_pickled_code(ranker) -> None:
    mlflow.set_tracking_uri(ranker["uri"])
    info = mlflow.models.get_model_info(f"runs:/{ranker['run_id']}/model")
    assert info.flavors["python_function"]["loader_module"] == "recolab.serving"
    assert "cloudpickle" not in str(info.flavors)
    inputs = info.signature.inputs.input_names()
    assert inputs == [
        "user_id",
        "item_id",
        "category",
        "user_age",
        "user_activity",
        "log_duration",
        "hist_items",
        "duration",
    ]  # the features, and the one meta column the served prediction reads (D2Q's groups)
    assert info.signature.outputs.input_names() == ["click", "like", "watch_time"]
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{ranker['run_id']}/model"))
    folder = local / "data" / "recolab_model"
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.yaml",
        "features.json",
        "weights.pt",
    ]
    torch.load(folder / "weights.pt", weights_only=True)  # tensors and plain values only
    example = pd.read_json(local / "input_example.json", orient="split")
    assert len(example) == 5 and list(example.columns) == inputs
    [version] = MlflowClient(ranker["uri"]).search_model_versions("name='tiny-mmoe'")
    assert version.run_id == ranker["run_id"]
    model = mlflow.pyfunc.load_model(f"runs:/{ranker['run_id']}/model")
    with pytest.raises(Exception, match="duration"):
        model.predict(ranker["rows"].drop(columns=["duration"]))


def wait_for(url: str, proc: subprocess.Popen, log: Path, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        assert proc.poll() is None, f"the server exited:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"no answer from {url}:\n{log.read_text()[-4000:]}"
        time.sleep(0.5)


def test_mlflow_models_serve_answers_a_real_http_request(ranker, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("mlflow")),
                "models",
                "serve",
                "-m",
                f"runs:/{ranker['run_id']}/model",
                "--env-manager",
                "local",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            cwd=tmp_path,
            env={
                **os.environ,
                "MLFLOW_TRACKING_URI": ranker["uri"],
                # as in an activated venv: MLflow starts the server as `uvicorn` from PATH
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                **ONE_THREAD_ENV,
            },
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(f"http://127.0.0.1:{port}/ping", proc, log)
        rows = ranker["rows"].head(20)
        columns = ["user_id", "item_id", "category", "user_age", "user_activity"]
        columns += ["log_duration", "hist_items", "duration"]
        body = {
            "dataframe_split": {
                "columns": columns,
                "data": [
                    [v.tolist() if isinstance(v, np.ndarray) else v for v in row]
                    for row in rows[columns].astype(object).itertuples(index=False)
                ],
            }
        }
        answer = post(f"http://127.0.0.1:{port}/invocations", body)["predictions"]
        for task in ranker["tasks"]:
            np.testing.assert_allclose(
                [r[task] for r in answer], ranker["preds"][task][:20], rtol=1e-5, atol=1e-7
            )
    finally:
        stop_mlflow_server(proc)


def test_a_recallers_model_retrieves_what_the_pipeline_retrieves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "trained"
    overrides = ["+exp=two_tower", *TINY_WORLD, *QUICK, "module.index=flat"]
    uri, run_id = train_run(root, overrides)
    module, datamodule = rebuilt_and_tested(
        next((root / "out" / "checkpoints").glob("epoch*.ckpt"))
    )
    batch = next(iter(datamodule.test_dataloader()))
    seen = (batch["seen"]["indptr"], batch["seen"]["indices"])
    module.eval()
    with torch.no_grad():
        want = module.retrieve(batch["features"], seen)  # (B, 100) item codes, -1 padded
    items, users = datamodule.vocabs["item_id"].values, datamodule.vocabs["user_id"].values
    ages = datamodule.vocabs["user_age"].values
    features = {k: v.numpy() for k, v in batch["features"].items()}
    indptr, indices = (t.numpy() for t in seen)
    rows = pd.DataFrame(
        {
            "user_id": users[features["user_id"] - 1],
            "user_age": ages[features["user_age"] - 1],
            "hist_items": [[items[c - 1] for c in row if c > 0] for row in features["hist_items"]],
            "exclude_items": [
                items[indices[indptr[i] : indptr[i + 1]] - 1].tolist()
                for i in range(len(indptr) - 1)
            ],
        }
    )
    shutil.rmtree(root / "out")
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    got = model.predict(rows)
    assert list(got.columns) == ["user_embedding", "item_ids", "scores"]
    assert [list(r) for r in got["item_ids"]] == [
        [items[c - 1].item() for c in row if c > 0] for row in want.tolist()
    ]
    emb = module.sampler.scored(module.model.user_embeddings(batch["features"]).float()).detach()
    np.testing.assert_allclose(np.stack(got["user_embedding"]), emb.numpy(), rtol=1e-5, atol=1e-6)
    # The item vectors and the faiss index the model searches are artifacts of the model.
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model"))
    folder = local / "data" / "recolab_model"
    vectors = np.load(folder / "item_embeddings.npy", allow_pickle=False)
    assert vectors.shape == (len(items) + 1, module.model.dim)
    assert (folder / "items.faiss").stat().st_size > 0
    # Without exclude_items, the history is left out instead.
    plain = model.predict(rows.drop(columns=["exclude_items"]))
    for hist, top in zip(rows["hist_items"], plain["item_ids"]):
        assert not set(hist) & set(top)
