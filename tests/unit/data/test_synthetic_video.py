import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from recolab.data.synthetic_video import WorldParams, cached_world, generate

P = WorldParams(num_users=500, num_items=300, num_impressions=40_000, world_seed=1)


@pytest.fixture(scope="module")
def world():
    t = generate(P)
    return {
        c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names if c != "hist_items"
    } | {
        "hist": t.column("hist_items").combine_chunks().flatten().to_numpy().reshape(t.num_rows, -1)
    }


def test_seeded_and_sized(world):
    again = generate(P)
    assert again.num_rows == P.num_impressions
    np.testing.assert_array_equal(again.column("click").to_numpy(), world["click"])
    other = generate(WorldParams(**{**P.__dict__, "world_seed": 2}))
    assert not np.array_equal(other.column("click").to_numpy(), world["click"])


def test_labels_follow_the_truth(world):
    # click = examined * relevant: the click rate per position tracks E[exam * rel] there.
    for pos in (1, 5, 10):
        m = world["position"] == pos
        expected = world["gt_click_prob"][m].mean()
        assert abs(world["click"][m].mean() - expected) < 4 * np.sqrt(expected / m.sum())
    np.testing.assert_allclose(
        world["gt_examination"], world["position"] ** -P.examination_power, rtol=1e-6
    )
    assert (world["like"] <= world["click"]).all()
    # the oracle separates clicks from non-clicks
    assert roc_auc_score(world["click"], world["gt_click_prob"]) > 0.75


def test_position_bias_and_duration_bias_exist(world):
    # examination falls with position; watch time grows with duration at equal interest
    rate = [world["click"][world["position"] == p].mean() for p in range(1, P.slate_size + 1)]
    assert rate[0] > 2 * rate[-1]
    watched = world["watch_time"] > 0
    long = watched & (world["duration"] > np.median(world["duration"]))
    short = watched & ~long
    assert world["watch_time"][long].mean() > world["watch_time"][short].mean()
    assert (world["watch_time"] <= world["duration"] + 1e-4).all()


def test_history_holds_only_earlier_clicks_of_the_same_user(world):
    rng = np.random.default_rng(0)
    for i in rng.choice(len(world["click"]), 200, replace=False):
        u, t = world["user_id"][i], world["timestamp"][i]
        earlier = (world["user_id"] == u) & (world["timestamp"] < t) & (world["click"] == 1)
        order = np.lexsort((world["position"][earlier], world["timestamp"][earlier]))
        expected = world["item_id"][earlier][order][-P.history_len :]
        got = world["hist"][i][world["hist"][i] > 0]
        assert sorted(got.tolist()) == sorted(expected.tolist())


def test_cache_is_keyed_by_parameters(tmp_path):
    small = WorldParams(num_users=50, num_items=40, num_impressions=500)
    a = cached_world(small, tmp_path)
    assert cached_world(small, tmp_path) == a
    b = cached_world(WorldParams(**{**small.__dict__, "num_items": 41}), tmp_path)
    assert a != b and b.exists()
    assert pq.read_metadata(a).num_rows == 500


def test_bad_parameters_fail_clearly():
    with pytest.raises(ValueError, match="num_items"):
        WorldParams(num_items=0)
    with pytest.raises(ValueError, match="task_correlation"):
        WorldParams(task_correlation=1.5)
