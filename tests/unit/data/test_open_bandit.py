"""The Open Bandit loader on the shared copy (skipped without ../shared) and on malformed copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from recolab.data.datamodule import DataError
from recolab.data.open_bandit import OpenBanditDataModule
from tests.conftest import shared_data

SPARSE = ["item_id", "campaign", "user_feature_0", "item_feature_1"]


def module(path: Path, cache: Path, **kw) -> OpenBanditDataModule:
    args = dict(
        path=str(path),
        cache_dir=str(cache),
        sparse=SPARSE,
        dense=["item_feature_0", "affinity"],
        tasks=[{"name": "click"}],
        meta=["user_id", "position", "propensity_score"],
        batch_size=64,
        eval_batch_size=256,
    )
    return OpenBanditDataModule(**(args | kw))


def small_copy(src: Path, dst: Path, rows: int = 60, campaigns=("men",)) -> Path:
    """The first rows of each log of `campaigns`, in the dataset's layout."""
    for policy in ("bts", "random"):
        for campaign in campaigns:
            (dst / policy / campaign).mkdir(parents=True)
            frame = pd.read_csv(
                src / policy / campaign / f"{campaign}.csv", index_col=0, nrows=rows
            )
            frame.to_csv(dst / policy / campaign / f"{campaign}.csv")
            shutil.copy(
                src / policy / campaign / "item_context.csv",
                dst / policy / campaign / "item_context.csv",
            )
    return dst


def test_trains_on_bts_and_tests_on_the_random_log(tmp_path: Path) -> None:
    src = shared_data("open-bandit-dataset-small")
    dm = module(src, tmp_path / "cache", max_rows=500)
    dm.prepare_data()
    dm.setup()
    sizes = {s: len(dm.data[s]["labels"]["click"]) for s in ("train", "val", "test")}
    assert sizes == {"train": 3 * 450, "val": 3 * 50, "test": 3 * 500}
    raw = pd.read_parquet(next((tmp_path / "cache").glob("*.parquet")))
    assert len(raw) == 60_000 and set(raw["policy"]) == {"bts", "random"}
    # The random log is uniform over positions; the position is meta, never a feature.
    test_pos = dm.data["test"]["meta"]["position"]
    assert set(test_pos.unique().tolist()) == {1, 2, 3}
    assert (
        "position" not in dm.data["train"]["features"] and "position" not in dm.schema.feature_names
    )
    # Items of different campaigns stay distinct; the affinity is the shown item's.
    assert raw.groupby("campaign")["item_id"].agg(["min", "max"]).loc["men"].tolist() == [
        1000,
        1033,
    ]
    first = pd.read_csv(src / "bts" / "all" / "all.csv", index_col=0, nrows=1).iloc[0]
    row = raw[(raw.policy == "bts") & (raw.campaign == "all")].iloc[0]
    assert row["affinity"] == pytest.approx(first[f"user-item_affinity_{first['item_id']}"])
    assert torch.isin(dm.data["train"]["labels"]["click"], torch.tensor([0.0, 1.0])).all()


def test_conversion_is_cached_and_keyed_by_the_source(tmp_path: Path) -> None:
    src = small_copy(shared_data("open-bandit-dataset-small"), tmp_path / "obd")
    dm = module(src, tmp_path / "cache", campaigns=["men"])
    dm.prepare_data()
    first = sorted((tmp_path / "cache").glob("*.parquet"))
    dm.prepare_data()
    assert sorted((tmp_path / "cache").glob("*.parquet")) == first and len(first) == 1
    log = src / "bts" / "men" / "men.csv"
    frame = pd.read_csv(log, index_col=0)
    frame.iloc[:40].to_csv(log)  # an edited source converts again
    module(src, tmp_path / "cache", campaigns=["men"]).prepare_data()
    assert len(list((tmp_path / "cache").glob("*.parquet"))) == 2


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda f: f.drop(columns=["click"]), r"bts/men/men\.csv: missing column\(s\) \['click'\]"),
        (
            lambda f: f.assign(position=f["position"].where(f.index != 3, 5)),
            r"bts/men/men\.csv: column 'position' must hold one of \[1\.0, 2\.0, 3\.0\]; row 3 has '5'",
        ),
        (
            lambda f: f.assign(click=f["click"].astype(object).where(f.index != 2, "yes")),
            r"bts/men/men\.csv: column 'click' must hold one of \[0\.0, 1\.0\]; row 2 has 'yes'",
        ),
        (
            lambda f: f.assign(item_id=f["item_id"].where(f.index != 0, 99)),
            r"bts/men/men\.csv: column 'item_id' holds 1 id\(s\) missing from .*item_context\.csv",
        ),
        (
            lambda f: f.assign(timestamp=f["timestamp"].where(f.index != 1, "soon")),
            r"bts/men/men\.csv: column 'timestamp' must hold dates; row 1 has 'soon'",
        ),
    ],
)
def test_malformed_copies_fail_naming_file_and_column(tmp_path: Path, edit, match: str) -> None:
    src = small_copy(shared_data("open-bandit-dataset-small"), tmp_path / "obd")
    log = src / "bts" / "men" / "men.csv"
    edit(pd.read_csv(log, index_col=0)).to_csv(log)
    with pytest.raises(DataError, match=match):
        module(src, tmp_path / "cache", campaigns=["men"]).prepare_data()


def test_missing_files_and_bad_settings_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no such folder"):
        module(tmp_path / "nowhere", tmp_path / "cache").prepare_data()
    (tmp_path / "obd" / "bts" / "men").mkdir(parents=True)
    with pytest.raises(DataError, match=r"bts/men/men\.csv: no such file"):
        module(tmp_path / "obd", tmp_path / "cache", campaigns=["men"]).prepare_data()
    with pytest.raises(ValueError, match=r"data.campaigns: expected a non-empty subset"):
        module(tmp_path, tmp_path, campaigns=["kids"])
    with pytest.raises(ValueError, match=r"data.split: the Open Bandit split is fixed"):
        module(tmp_path, tmp_path, split={"kind": "random"})
