import pytest

from recolab.data.schema import DenseFeature, Schema, SequenceFeature, SparseFeature, Task


def test_schema_lists_features_in_order_and_finds_by_name():
    s = Schema(
        sparse=(SparseFeature("user_id", 5), SparseFeature("item_id", 9)),
        dense=(DenseFeature("price"),),
        sequences=(SequenceFeature("hist", 9, 4, vocab_of="item_id"),),
        tasks=(Task("click"), Task("watch_time", kind="regression", transform="log1p")),
        meta=("user_id", "gt_relevance"),
    )
    assert s.feature_names == ["user_id", "item_id", "price", "hist"]
    assert s.task_names == ["click", "watch_time"]
    assert s.sparse_by_name("item_id").vocab_size == 9
    assert s.task("watch_time").transform == "log1p"
    with pytest.raises(KeyError, match="no task 'like'"):
        s.task("like")
    # ground truth is meta, never a feature
    assert "gt_relevance" not in s.feature_names


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: SparseFeature("x", 1), "vocab_size"),
        (lambda: Task("t", kind="ranking"), "kind"),
        (lambda: Task("t", transform="sqrt"), "transform"),
        (lambda: Task("t", weight=-1.0), "weight"),
    ],
)
def test_impossible_specs_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_user_and_item_roles_give_each_tower_its_feature_specs():
    s = Schema(
        sparse=(
            SparseFeature("user_id", 5),
            SparseFeature("item_id", 9),
            SparseFeature("hour", 25),
        ),
        dense=(DenseFeature("age"),),
        sequences=(SequenceFeature("hist", 9, 4, vocab_of="item_id"),),
        user=("user_id", "age", "hist"),
        item=("item_id",),
    )
    assert [f.name for f in s.features_of("user")] == ["user_id", "age", "hist"]
    assert s.features_of("item") == (SparseFeature("item_id", 9),)
    assert Schema().features_of("user") == ()  # no roles: every feature is context
    with pytest.raises(ValueError, match=r"user role names \['nope'\], which are not features"):
        Schema(sparse=s.sparse, user=("nope",))
    with pytest.raises(ValueError, match="both the user and the item role"):
        Schema(sparse=s.sparse, user=("hour",), item=("hour",))
