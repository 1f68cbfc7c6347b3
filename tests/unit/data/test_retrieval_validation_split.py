"""The retrieval validation split (leave-second-last-out): per user, the validation target is the
second-to-last distinct item and the test target the last, never the same item; training holds
neither; validation never sees the test item; test may see the validation item (history and
exclusions); the counts in `summary` add up. On a table source and on the synthetic world."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from recolab.data.retrieval import SyntheticRetrievalDataModule
from tests.unit.data.test_retrieval import _all, _reference, _setup


def _decoded(dm, ids: list[int]) -> list[int | None]:
    values = dm.vocabs["item_id"].values
    return [None if i == 0 else int(values[i - 1]) for i in ids]


def _splits(dm) -> tuple[dict, dict, dict]:
    return _all(dm.train_dataloader()), _all(dm.val_dataloader()), _all(dm.test_dataloader())


def _check_split(dm) -> None:
    """The split's properties on encoded ids (0: an item never trained on, counted apart)."""
    train, val, test = _splits(dm)
    users = dm.summary["users"]
    assert dm.summary["val_users"] == dm.summary["test_users"] == users
    assert len(val["targets"]["item_id"]) == len(test["targets"]["item_id"]) == users
    assert len(train["features"]["item_id"]) == dm.summary["train_interactions"]
    # every kept interaction is in exactly one split: training rows plus one val and one test per user
    kept = dm.summary["interactions_read"] - dm.summary["duplicate_interactions_dropped"]
    kept -= dm.summary["interactions_filtered"]
    assert dm.summary["train_interactions"] + 2 * users == kept

    by_user_train: dict[int, set[int]] = {}
    for u, i in zip(train["features"]["user_id"].tolist(), train["features"]["item_id"].tolist()):
        by_user_train.setdefault(u, set()).add(i)
    val_of = dict(
        zip(val["features"]["user_id"].tolist(), val["targets"]["item_id"][:, 0].tolist())
    )
    test_of = dict(
        zip(test["features"]["user_id"].tolist(), test["targets"]["item_id"][:, 0].tolist())
    )
    assert val_of.keys() == test_of.keys()
    val_seen = dict(zip(val["features"]["user_id"].tolist(), val["seen"]))
    test_seen = dict(zip(test["features"]["user_id"].tolist(), test["seen"]))
    val_hist = dict(
        zip(val["features"]["user_id"].tolist(), val["features"]["hist_items"].tolist())
    )
    oov_val = oov_test = 0
    for u in val_of:
        v, t = val_of[u], test_of[u]
        oov_val, oov_test = oov_val + (v == 0), oov_test + (t == 0)
        if v and t:
            assert v != t, f"user {u}: the validation and test targets are one item"
        trained = by_user_train.get(u, set())
        assert v not in trained and t not in trained, f"user {u}: a held-out item is trained on"
        # validation sees the user's training items only: never the test item
        assert val_seen[u] == trained - {0}
        assert t == 0 or (t not in val_seen[u] and t not in val_hist[u])
        # test sees the validation item too (it happened before the test item)
        assert test_seen[u] == (trained | {v}) - {0}
    assert dm.summary["val_targets_out_of_vocabulary"] == oov_val
    assert dm.summary["test_targets_out_of_vocabulary"] == oov_test


def test_validation_and_test_targets_are_each_users_last_two_distinct_items() -> None:
    rng = np.random.default_rng(3)
    n = 800
    table = pa.table(
        {
            "user_id": rng.integers(0, 25, n),
            "item_id": rng.integers(500, 560, n),
            "timestamp": rng.permutation(n),
        }
    )
    dm = _setup(table)
    _check_split(dm)
    # against the raw log: the second-to-last and the last distinct item of each user, in time
    ref = _reference(table)
    _, val, test = _splits(dm)
    users = dm.vocabs["user_id"].values
    for split, back in ((val, 2), (test, 1)):
        targets = _decoded(dm, split["targets"]["item_id"][:, 0].tolist())
        for u, target in zip(split["features"]["user_id"].tolist(), targets):
            expected = ref[int(users[u - 1])][-back][1]
            assert target in (expected, None)  # None: an item no user trained on


def test_the_synthetic_world_has_the_same_validation_split(tmp_path: Path) -> None:
    dm = SyntheticRetrievalDataModule(
        cache_dir=str(tmp_path),
        num_users=200,
        num_items=150,
        num_impressions=20000,
        min_interactions=3,
        history_len=5,
        batch_size=64,
        eval_batch_size=64,
    )
    dm.prepare_data()
    dm.setup("fit")
    assert dm.summary["users"] > 50
    _check_split(dm)
