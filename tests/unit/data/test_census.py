"""The Census-Income (KDD) loader, on the real file from ../shared/data (skipped when it is absent)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from recolab.data.census import COLUMNS, NOT_FEATURES, CensusDataModule
from recolab.data.datamodule import DataError
from tests.conftest import CONFIGS, shared_data

ROWS = 3000
CONFIG = yaml.safe_load((CONFIGS / "data" / "census.yaml").read_text())
FEATURES = {"sparse": CONFIG["sparse"], "dense": CONFIG["dense"], "tasks": CONFIG["tasks"]}


def module(path: Path, cache: Path, **kw) -> CensusDataModule:
    args = dict(
        path=str(path), cache_dir=str(cache), max_rows=ROWS, batch_size=256, seed=0, **FEATURES
    )
    return CensusDataModule(**(args | kw))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One parquet conversion for the module's tests."""
    return tmp_path_factory.mktemp("census-cache")


@pytest.fixture(scope="module")
def census(cache) -> tuple[Path, CensusDataModule]:
    path = shared_data("census-income-kdd")
    dm = module(path, cache)
    dm.setup()
    return path, dm


def raw_head(path: Path, n: int) -> pd.DataFrame:
    """The reference: the file's first n rows, read here independently of the loader."""
    df = pd.read_csv(
        path / "census-income.test.gz", header=None, nrows=n, skipinitialspace=True, dtype=str
    )
    return df.apply(lambda c: c.str.strip())


def test_labels_match_the_file_and_have_plausible_rates(census):
    path, dm = census
    raw = raw_head(path, ROWS)
    income = float((raw[41] == "50000+.").mean())
    never = float((raw[7] == "Never married").mean())
    labels = {
        t: np.concatenate([dm.data[s]["labels"][t].numpy() for s in ("train", "val", "test")])
        for t in ("income", "never_married")
    }
    assert len(labels["income"]) == ROWS
    assert labels["income"].mean() == pytest.approx(income)
    assert labels["never_married"].mean() == pytest.approx(never)
    assert (
        0.03 < income < 0.10 and 0.30 < never < 0.50
    )  # SOURCE.md: 6.2% and 43.2% over the whole file


def test_split_is_seeded_by_split_seed_not_by_the_training_seed(census, cache):
    path, dm = census
    sizes = {s: len(dm.data[s]["labels"]["income"]) for s in ("train", "val", "test")}
    assert sizes == {"train": 2400, "val": 300, "test": 300}
    other = module(path, cache, seed=7)
    other.setup()
    np.testing.assert_array_equal(
        other.data["test"]["features"]["age"], dm.data["test"]["features"]["age"]
    )
    moved = module(path, cache, split_seed=1)
    moved.setup()
    assert not np.array_equal(
        moved.data["test"]["features"]["age"], dm.data["test"]["features"]["age"]
    )


def test_no_label_column_is_a_feature(census):
    _, dm = census
    features = set(dm.schema.feature_names)
    assert not features & NOT_FEATURES
    assert set(dm.schema.task_names) == {"income", "never_married"}
    assert features == set(CONFIG["sparse"]) | set(CONFIG["dense"])
    assert features | {"marital_stat", "income_50k", "instance_weight"} == set(
        COLUMNS
    )  # every other column is used
    assert set(dm.data["train"]["features"]) == features


def test_dense_features_are_standardized_on_train(census):
    _, dm = census
    age = dm.data["train"]["features"]["age"].numpy()
    assert abs(age.mean()) < 1e-4 and abs(age.std() - 1) < 1e-3


def test_a_label_source_listed_as_a_feature_is_refused(tmp_path):
    with pytest.raises(ValueError, match="marital_stat"):
        module(tmp_path, tmp_path, sparse=[*CONFIG["sparse"], "marital_stat"])


def test_missing_folder_names_it(tmp_path):
    dm = module(tmp_path / "nowhere", tmp_path)
    with pytest.raises(DataError, match="nowhere: no such folder"):
        dm.setup()


def test_malformed_copy_missing_a_column_names_the_file(tmp_path):
    source = shared_data("census-income-kdd") / "census-income.test.gz"
    bad = tmp_path / "bad"
    bad.mkdir()
    with gzip.open(source, "rt") as f:
        lines = [next(f) for _ in range(50)]
    with gzip.open(bad / "census-income.test.gz", "wt") as f:
        f.writelines(
            ",".join(line.split(",")[:20] + line.split(",")[21:]) for line in lines
        )  # drop state_prev_res
    dm = module(bad, tmp_path / "cache")
    with pytest.raises(DataError, match=r"bad/census-income.test.gz: expected 42 .* found 41"):
        dm.setup()


def test_a_configured_column_the_table_lacks_is_named(cache):
    dm = module(shared_data("census-income-kdd"), cache, dense=[*CONFIG["dense"], "hours_per_week"])
    with pytest.raises(
        DataError, match=r"census-income.test.gz: missing column\(s\) \['hours_per_week'\]"
    ):
        dm.setup()


def test_cache_is_reused_and_keyed_by_the_source_file(census, cache):
    path, _ = census
    (cached,) = cache.glob("*.parquet")
    stat = (path / "census-income.test.gz").stat()
    (source,) = json.loads(cached.with_suffix(".json").read_text())["sources"]
    assert (source["size"], source["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns)
    written = cached.stat().st_mtime_ns
    module(path, cache).setup()
    assert [p.stat().st_mtime_ns for p in cache.glob("*.parquet")] == [written]


def test_no_validation_share_validates_on_the_test_rows(cache):
    dm = module(shared_data("census-income-kdd"), cache, fractions=[0.8, 0.0, 0.2])
    dm.setup()
    assert len(dm.data["train"]["labels"]["income"]) == 2400
    val, test = dm.data["val"], dm.data["test"]
    assert len(test["labels"]["income"]) == 600
    for group in ("features", "labels"):
        for name, values in test[group].items():
            assert torch.equal(val[group][name], values), name


@pytest.mark.parametrize(
    "fractions", [[0.9, 0.1], [0.5, 0.2, 0.2], [0.0, 0.5, 0.5], [0.9, 0.1, 0.0]]
)
def test_bad_fractions_are_refused(tmp_path, fractions):
    with pytest.raises(ValueError, match=r"fractions=\[.*: expected|data.fractions must give"):
        module(tmp_path, tmp_path, fractions=fractions)
