"""The synthetic world's opt-in purchase (ESMM's post-click conversion), that the default world is
unchanged by it, and `data.select_rows` (a CVR model on the clicked impressions alone)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import roc_auc_score

from recolab.data.synthetic_video import SyntheticVideoDataModule, WorldParams, generate

SMALL = dict(num_users=300, num_items=200, num_impressions=5000)
#: sha256 over the default world's columns (name and bytes, in order), computed with the world
#: generator before the purchase existed (git HEAD 8e19b6c): the default world must not move.
DIGESTS = {
    "small": "dcf867401bbaa71cbf6c36bf9cad1f401d114b7585634d82e2cf230cf7ea3dbb",
    "small_seed3_p0.2": "3d65a6183ae69c1228392aa6c154357b63a25e66b17ec0b64d964b0ce220f38c",
    "default": "a44fbed4caff5ba407ed09bd8f335daff564c5c75b56398f6464463fb024e151",
}
PURCHASE_COLUMNS = [
    "purchase",
    "purchase_if_clicked",
    "gt_purchase_given_click",
    "gt_purchase_prob",
]


def digest(table: pa.Table) -> str:
    h = hashlib.sha256()
    for name in table.column_names:
        h.update(name.encode())
        col = table.column(name).combine_chunks()
        if pa.types.is_fixed_size_list(col.type):
            col = col.flatten()
        h.update(np.ascontiguousarray(col.to_numpy(zero_copy_only=False)).tobytes())
    return h.hexdigest()


def test_default_world_is_bit_identical() -> None:
    assert digest(generate(WorldParams(**SMALL))) == DIGESTS["small"]
    other = WorldParams(**SMALL, world_seed=3, task_correlation=0.2)
    assert digest(generate(other)) == DIGESTS["small_seed3_p0.2"]
    # and keeps its cache key: the purchase's parameters key the cache only when it is on
    assert WorldParams().key() == "4c78b6928dd7"
    assert WorldParams(purchase_bias=3.0).key() == WorldParams().key()
    assert WorldParams(purchase=True).key() != WorldParams(purchase=True, purchase_bias=3.0).key()


@pytest.mark.slow
def test_default_full_size_world_is_bit_identical() -> None:
    assert digest(generate(WorldParams())) == DIGESTS["default"]


@pytest.fixture(scope="module")
def world() -> dict[str, np.ndarray]:
    t = generate(WorldParams(num_users=1000, num_items=500, num_impressions=60_000, purchase=True))
    return {c: t.column(c).to_numpy() for c in t.column_names if c != "hist_items"}


def test_purchase_leaves_every_other_column_unchanged() -> None:
    plain = generate(WorldParams(**SMALL))
    with_purchase = generate(WorldParams(**SMALL, purchase=True))
    assert with_purchase.column_names == plain.column_names + PURCHASE_COLUMNS
    assert digest(with_purchase.select(plain.column_names)) == DIGESTS["small"]


def test_purchase_follows_a_click_and_its_truth(world) -> None:
    click, purchase, would = world["click"], world["purchase"], world["purchase_if_clicked"]
    gt = world["gt_purchase_given_click"]
    np.testing.assert_array_equal(purchase, click * would)  # only after a click
    assert purchase.sum() > 500
    # the counterfactual draw follows its truth, on clicked and unclicked rows alike
    for rows in (click == 1, click == 0):
        expected = gt[rows].mean()
        assert abs(would[rows].mean() - expected) < 4 * np.sqrt(expected / rows.sum())
    np.testing.assert_allclose(
        world["gt_purchase_prob"], world["gt_click_prob"] * gt, rtol=1e-5, atol=1e-7
    )
    assert roc_auc_score(would, gt) > 0.75


def test_conversion_depends_on_relevance_and_on_something_else(world) -> None:
    gt, rel = world["gt_purchase_given_click"], world["gt_relevance"]
    r = np.corrcoef(gt, rel)[0, 1]
    assert 0.3 < r < 0.9, r  # relevance drives it, but CVR is not CTR
    # so the clicked rows are a selected sample: they convert more than the rest would
    clicked = world["click"] == 1
    assert gt[clicked].mean() > 1.3 * gt[~clicked].mean()


def test_purchase_is_seeded() -> None:
    a = generate(WorldParams(**SMALL, purchase=True))
    b = generate(WorldParams(**SMALL, purchase=True))
    c = generate(WorldParams(**SMALL, purchase=True, world_seed=1))
    for name in PURCHASE_COLUMNS:
        np.testing.assert_array_equal(a.column(name).to_numpy(), b.column(name).to_numpy())
    assert not np.array_equal(a.column("purchase_if_clicked"), c.column("purchase_if_clicked"))


def module(tmp_path: Path, **kw) -> SyntheticVideoDataModule:
    args = dict(
        cache_dir=str(tmp_path),
        **SMALL,
        purchase=True,
        sparse=["user_id", "item_id"],
        tasks=[{"name": "purchase_if_clicked"}],
        meta=["user_id", "request_id", "position", "click", "purchase"],
        batch_size=64,
    )
    return SyntheticVideoDataModule(**(args | kw))


def test_select_rows_trains_and_validates_on_clicked_rows_only(tmp_path: Path) -> None:
    dm = module(tmp_path, select_rows={"where": "click", "splits": ["train", "val"]})
    dm.setup()
    full = module(tmp_path)
    full.setup()
    for split in ("train", "val"):
        meta, labels = dm.data[split]["meta"], dm.data[split]["labels"]
        assert (meta["click"] == 1).all()
        assert len(meta["click"]) == int((full.data[split]["meta"]["click"] == 1).sum())
        # on the clicked rows the counterfactual label is the observed purchase
        assert (labels["purchase_if_clicked"] == meta["purchase"]).all()
    assert len(dm.data["test"]["meta"]["click"]) == len(full.data["test"]["meta"]["click"])
    assert (dm.data["test"]["meta"]["click"] == 0).any()


def test_select_rows_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"data.select_rows.where: 'like' is not a column"):
        module(tmp_path, select_rows={"where": "like"})
    with pytest.raises(ValueError, match=r"data.select_rows must be .*got keys \['column'\]"):
        module(tmp_path, select_rows={"column": "click"})
    with pytest.raises(ValueError, match=r"data.select_rows.splits: .*got \[\]"):
        module(tmp_path, select_rows={"where": "click", "splits": []})
