"""`recolab.serving`: raw rows are encoded exactly as the data module encodes them, bad rows are
refused naming the column, and a model folder is data (its config allow-listed, its weights read
with `weights_only=True`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from omegaconf import OmegaConf

from recolab.data.datamodule import ParquetDataModule
from recolab.lifecycle import run_config
from recolab.resume import CheckpointError
from recolab.serving import FORMAT, ServingError, encode_rank_features, load
from tests.conftest import compose_train


def log_table(n: int = 400) -> pa.Table:
    rng = np.random.default_rng(0)
    users = rng.integers(1, 40, n)
    return pa.table(
        {
            "user_id": users,
            "city": pa.array([f"c{u % 7}" for u in users]),
            "item_id": rng.integers(100, 160, n),
            "age": rng.normal(30, 8, n).astype(np.float32),
            "hist": pa.array(
                [rng.integers(100, 170, rng.integers(0, 6)).tolist() for _ in range(n)],
                type=pa.list_(pa.int64()),
            ),
            "click": rng.integers(0, 2, n).astype(np.float32),
            "timestamp": np.arange(n, dtype=np.int64),
        }
    )


@pytest.fixture
def datamodule(tmp_path: Path) -> tuple[ParquetDataModule, pd.DataFrame]:
    path = tmp_path / "log.parquet"
    pq.write_table(log_table(), path)
    dm = ParquetDataModule(
        path=str(path),
        sparse=["user_id", "city", "item_id"],
        dense=["age"],
        sequences={"hist": {"max_len": 4, "vocab_of": "item_id"}},
        tasks=[{"name": "click", "kind": "binary"}],
        meta=["user_id"],
        split={"kind": "time", "fractions": [0.5, 0.25, 0.25]},
    )
    dm.setup("fit")
    _, table = dm._load()
    test = dm._split(dm._validate(table))["test"].to_pandas()
    return dm, test


def test_raw_rows_encode_as_the_data_module_encodes_them(datamodule) -> None:
    dm, test = datamodule
    got = encode_rank_features(test, dm.schema, dm.vocabs, dm.dense_stats)
    want = dm.data["test"]["features"]
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert torch.equal(got[name], want[name]), name
    # Histories hold ids no item_id column holds (160..169): out of vocabulary, read as 0.
    assert any(any(i >= 160 for i in h) for h in test["hist"])
    assert (got["hist"] > 0).any()


def test_unseen_ids_and_the_columns_order_do_not_matter(datamodule) -> None:
    dm, test = datamodule
    rows = test.iloc[:3][list(reversed(test.columns))].copy()
    rows["user_id"] = [10_000, 10_001, 10_002]
    rows["city"] = ["atlantis", "c1", "c2"]
    got = encode_rank_features(rows, dm.schema, dm.vocabs, dm.dense_stats)
    assert got["user_id"].tolist() == [0, 0, 0]
    assert got["city"][0] == 0 and (got["city"][1:] > 0).all()


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda r: r.drop(columns=["age"]),
            r"no column 'age' \(a dense feature: values as the log holds them, unscaled\)",
        ),
        (
            lambda r: r.assign(user_id=r["user_id"].astype(str)),
            r"column 'user_id' holds strings .* the run's vocabulary of 'user_id' holds integers",
        ),
        (
            lambda r: r.assign(city=[None, *r["city"][1:]]),
            r"column 'city': 1 null id\(s\) \(rows 0, counted from 0\)",
        ),
        (
            lambda r: r.assign(age=[1.0, np.nan, *r["age"][2:]]),
            r"column 'age': 1 non-finite value\(s\) \(NaN, inf or null\) \(rows 1,",
        ),
        (
            lambda r: r.assign(hist=[[[1, 2]], *r["hist"][1:]]),
            r"column 'hist', row 0: expected a list of ids",
        ),
    ],
)
def test_bad_rows_name_the_column_and_what_was_expected(datamodule, change, message) -> None:
    dm, test = datamodule
    rows = change(test.iloc[:4].reset_index(drop=True).copy())
    with pytest.raises(ServingError, match=message):
        encode_rank_features(rows, dm.schema, dm.vocabs, dm.dense_stats)


def model_folder(tmp_path: Path, config: str) -> Path:
    folder = tmp_path / "recolab_model"
    folder.mkdir()
    (folder / "features.json").write_text(json.dumps({"format": FORMAT, "kind": "rank"}))
    (folder / "config.yaml").write_text(config)
    return folder


def test_a_model_folder_whose_config_would_run_code_is_refused_before_anything_is_built(
    tmp_path: Path,
) -> None:
    cfg = compose_train(tmp_path, ["+exp=mmoe"])
    config = OmegaConf.to_container(run_config(cfg), resolve=True)
    config["model"] = {"_target_": "builtins.open", "file": str(tmp_path / "written")}
    folder = model_folder(tmp_path, OmegaConf.to_yaml(OmegaConf.create(config)))
    with pytest.raises(CheckpointError, match=r"its stored config would run code") as e:
        load(folder)
    assert str(e.value).startswith(f"logged model {folder}/config.yaml: ")
    assert "model._target_='builtins.open'" in str(e.value)
    assert not (tmp_path / "written").exists()


class Payload:
    """Unpickled, it writes a file: what `weights_only=True` keeps from running."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (self.target, "ran"))


def test_weights_holding_pickled_code_are_refused(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, ["+exp=mmoe"])
    folder = model_folder(tmp_path, OmegaConf.to_yaml(run_config(cfg), resolve=True))
    target = tmp_path / "ran"
    torch.save({"state_dict": {}, "payload": Payload(target)}, folder / "weights.pt")
    with pytest.raises(CheckpointError, match=r"refused by torch.load\(weights_only=True\)"):
        load(folder)
    assert not target.exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["register_as=tiny", "log_model=false"], r"it needs log_model=true \(got false\)"),
        (["register_as=a/b"], r"register_as='a/b': MLflow's registered model names cannot hold"),
        (["register_as=tiny", "logger=none"], r"it needs the MLflow logger"),
        (["log_model=maybe"], r"log_model='maybe': expected true or false"),
        (["log_checkpoints=1"], r"log_checkpoints=1: expected true or false"),
    ],
)
def test_the_model_settings_are_checked_before_any_data_is_read(
    tmp_path: Path, overrides: list[str], message: str
) -> None:
    from recolab.config_validation import ConfigError
    from recolab.train import train

    cfg = compose_train(tmp_path, ["+exp=mmoe", *overrides], data_dir=tmp_path / "data")
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert not (tmp_path / "data").exists()
    assert not (tmp_path / "mlflow.db").exists()


def test_checkpoint_references_to_mlflow_and_folders_of_another_project_copy() -> None:
    from recolab.resume import mlflow_reference, rebased

    run = "0123456789abcdef0123456789abcdef"
    assert mlflow_reference(f"runs:/{run}/checkpoints/last.ckpt") == (run, "checkpoints/last.ckpt")
    assert mlflow_reference(run) == (run, "")
    assert mlflow_reference("outputs/runs/mmoe/x/checkpoints/last.ckpt") is None
    assert mlflow_reference("last") is None
    stored = {"root_dir": "/a", "data_dir": "/a/data", "output_dir": "/a/outputs/runs/x"}
    here = {"root_dir": "/b", "data_dir": "/b/data", "output_dir": "/b/outputs/runs/y"}
    node = {"cache_dir": "/a/data/synthetic", "path": "/elsewhere/log.parquet", "n": 3}
    moved, said = rebased(node, stored, here)
    assert moved == {"cache_dir": "/b/data/synthetic", "path": "/elsewhere/log.parquet", "n": 3}
    assert said == [".cache_dir: /a/data/synthetic -> /b/data/synthetic"]
