"""The Ali-CCP loader on the shared sample (skipped without ../shared) and on malformed copies,
and ESMM trained on it from the command's config (`+exp=esmm data=ali_ccp data.path=...`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from recolab.data.ali_ccp import AliCCPDataModule
from recolab.data.checks import DataError
from recolab.train import train
from tests.conftest import CONFIGS, compose_train, shared_data

SAMPLE = "ali-ccp-sample"
CONFIG = yaml.safe_load((CONFIGS / "data" / "ali_ccp.yaml").read_text())
KEYS = ("sparse", "dense", "tasks", "meta", "split")


def module(path: Path, cache: Path, **kw) -> AliCCPDataModule:
    args = {k: CONFIG[k] for k in KEYS} | dict(
        path=str(path), cache_dir=str(cache), batch_size=16, eval_batch_size=64
    )
    return AliCCPDataModule(**(args | kw))


def copy(tmp_path: Path) -> Path:
    dst = tmp_path / "ali"
    shutil.copytree(shared_data(SAMPLE), dst)
    return dst


def test_reads_the_sample_by_split(tmp_path: Path) -> None:
    src = shared_data(SAMPLE)
    dm = module(src, tmp_path / "cache")
    dm.prepare_data()
    dm.setup()
    for split, n in (("train", 100), ("val", 50), ("test", 50)):
        raw = pd.read_csv(src / f"ali_ccp_{split}_sample.csv")
        got = dm.data[split]
        assert len(got["labels"]["click"]) == n
        np.testing.assert_array_equal(got["labels"]["click"].numpy(), raw["click"].to_numpy())
        np.testing.assert_array_equal(got["labels"]["purchase"].numpy(), raw["purchase"].to_numpy())
        np.testing.assert_array_equal(got["meta"]["user_id"].numpy(), raw["101"].to_numpy())
    dense = dm.data["train"]["features"]["d508"].numpy()
    raw = pd.read_csv(src / "ali_ccp_train_sample.csv")["D508"].to_numpy()
    np.testing.assert_allclose(dense, (raw - raw.mean()) / raw.std(), rtol=1e-4, atol=1e-5)
    assert {f.name for f in dm.schema.sparse} == set(CONFIG["sparse"])
    assert dm.schema.user == ("user_id",) and dm.schema.item == ("item_id",)


def test_select_rows_keeps_the_clicked_training_rows(tmp_path: Path) -> None:
    src = shared_data(SAMPLE)
    dm = module(src, tmp_path / "cache", select_rows={"where": "click", "splits": ["train"]})
    dm.setup()
    assert (dm.data["train"]["labels"]["click"] == 1).all()
    assert len(dm.data["train"]["labels"]["click"]) == 7  # the sample's clicks (SOURCE.md)
    assert len(dm.data["test"]["labels"]["click"]) == 50


def test_wrong_layouts_name_the_file_and_the_column(tmp_path: Path) -> None:
    folder = copy(tmp_path)
    test = folder / "ali_ccp_test_sample.csv"
    frame = pd.read_csv(test, dtype=str)

    def fails(edit, match: str, name: str) -> None:
        edit(frame.copy()).to_csv(test, index=False)
        with pytest.raises(DataError, match=match):
            module(folder, tmp_path / name).prepare_data()

    fails(lambda f: f.drop(columns=["D853"]), r"ali_ccp_test_sample.csv: .*missing \['D853'\]", "a")
    fails(
        lambda f: f.drop(columns=["purchase"]), r"test_sample.csv: missing column.*'purchase'", "b"
    )
    fails(
        lambda f: f.assign(**{"206": ["x"] + list(f["206"][1:])}),
        r"test_sample.csv: column '206' must hold integers; line 2 has 'x'",
        "c",
    )
    fails(
        lambda f: f.assign(click=["2"] + list(f["click"][1:])),
        r"test_sample.csv: column 'click' must hold 0 or 1; line 2 has '2'",
        "d",
    )
    fails(
        lambda f: f.assign(click="0", purchase=["1"] + ["0"] * (len(f) - 1)),
        r"test_sample.csv: column 'purchase' is 1 without a click .* line 2",
        "e",
    )
    test.unlink()
    with pytest.raises(
        DataError, match=r"ali_ccp_test.csv', 'ali_ccp_test_sample.csv'\] for the test"
    ):
        module(folder, tmp_path / "f").prepare_data()
    with pytest.raises(DataError, match=r"no such folder \(data.path\)"):
        module(tmp_path / "nowhere", tmp_path / "g").prepare_data()


def test_a_feature_the_files_lack_is_named(tmp_path: Path) -> None:
    dm = module(shared_data(SAMPLE), tmp_path / "cache", sparse=[*CONFIG["sparse"], "f999"])
    with pytest.raises(DataError, match=r"missing column\(s\) \['f999'\]"):
        dm.setup()


def test_bad_select_rows_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="data.select_rows.where: 'clicked' is not a column"):
        module(tmp_path, tmp_path, select_rows={"where": "clicked"})
    with pytest.raises(ValueError, match=r"data.select_rows.splits: .*\['train', 'dev'\]"):
        module(tmp_path, tmp_path, select_rows={"where": "click", "splits": ["train", "dev"]})


def test_esmm_trains_on_the_sample(tmp_path: Path) -> None:
    path = shared_data(SAMPLE)
    cfg = compose_train(
        tmp_path,
        [
            "+exp=esmm",
            "data=ali_ccp",
            f"data.path={path}",
            "data.batch_size=16",
            "data.eval_batch_size=64",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=3",
            "logger=none",
            "log_model=false",
        ],
        data_dir=tmp_path / "data",
    )
    metrics = train(cfg)
    assert np.isfinite(metrics["test/loss"])
    assert {"test/auc/click", "test/auc/purchase"} <= set(metrics)
    assert not any("purchase_if_clicked" in k for k in metrics)
