"""The MMoE paper's synthetic data (Ma et al., KDD 2018, Sec. 4.2), against its definition."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recolab.data.mmoe_synthetic import MMoESyntheticDataModule, make_tables, world_parameters


@pytest.mark.parametrize("p", [1.0, 0.9, 0.5, 0.0, -0.7])
def test_weight_vectors_have_norm_c_and_cosine_p(p: float) -> None:
    w = world_parameters(dim=50, correlation=p, scale=2.0, world_seed=3)
    assert np.linalg.norm(w["w1"]) == pytest.approx(2.0)
    assert np.linalg.norm(w["w2"]) == pytest.approx(2.0)
    cosine = w["w1"] @ w["w2"] / (np.linalg.norm(w["w1"]) * np.linalg.norm(w["w2"]))
    assert cosine == pytest.approx(p, abs=1e-12)


def test_a_correlation_sweep_shares_the_world() -> None:
    a, b = (world_parameters(dim=20, correlation=p, world_seed=7) for p in (0.9, 0.1))
    for key in ("w1", "alpha", "beta"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.allclose(a["w2"], b["w2"])
    ta, tb = (make_tables(num_rows=100, dim=20, correlation=p, world_seed=7) for p in (0.9, 0.1))
    np.testing.assert_array_equal(ta["x3"], tb["x3"])
    np.testing.assert_array_equal(ta["gt_y1"], tb["gt_y1"])


def test_labels_follow_the_papers_formula_row_by_row() -> None:
    dim, m = 8, 10
    cols = make_tables(num_rows=30, dim=dim, correlation=0.3, num_sines=m, noise_std=0.0)
    w = world_parameters(dim=dim, correlation=0.3, num_sines=m)
    for i in range(30):
        x = [float(cols[f"x{j}"][i]) for j in range(dim)]
        for k in ("1", "2"):
            wx = sum(wj * xj for wj, xj in zip(w[f"w{k}"], x))
            y = wx + sum(math.sin(w["alpha"][s] * wx + w["beta"][s]) for s in range(m))
            assert cols[f"gt_y{k}"][i] == pytest.approx(y, rel=1e-5, abs=1e-5)
            assert cols[f"y{k}"][i] == cols[f"gt_y{k}"][i]


def test_noise_has_the_given_spread_and_label_correlation_falls_with_p() -> None:
    worlds = {p: make_tables(num_rows=20_000, dim=100, correlation=p) for p in (1.0, 0.5, 0.0)}
    noise = worlds[0.5]["y1"] - worlds[0.5]["gt_y1"]
    assert noise.std() == pytest.approx(0.1, rel=0.05)
    np.testing.assert_allclose(worlds[1.0]["gt_y1"], worlds[1.0]["gt_y2"], rtol=1e-6)
    corr = {p: np.corrcoef(t["y1"], t["y2"])[0, 1] for p, t in worlds.items()}
    assert corr[1.0] > 0.99 and corr[1.0] > corr[0.5] > corr[0.0]
    assert abs(corr[0.0]) < 0.1


def test_data_module_reads_dense_columns_and_two_regression_tasks() -> None:
    dm = MMoESyntheticDataModule(num_rows=1000, dim=6, correlation=0.5, batch_size=128, seed=0)
    dm.setup()
    assert [f.name for f in dm.schema.dense] == [f"x{j}" for j in range(6)]
    assert [(t.name, t.kind) for t in dm.schema.tasks] == [
        ("y1", "regression"),
        ("y2", "regression"),
    ]
    assert dm.schema.oracle == {"y1": "gt_y1", "y2": "gt_y2"}
    sizes = {s: len(dm.data[s]["labels"]["y1"]) for s in ("train", "val", "test")}
    assert sizes == {"train": 800, "val": 100, "test": 100}
    assert not dm.schema.sparse


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"correlation": 1.5}, "correlation=1.5: expected a number <= 1"),
        ({"dim": 1}, "dim=1: expected a number >= 2"),
        ({"fractions": [0.9, 0.1]}, "fractions=[0.9, 0.1]: expected at least 3 element(s)"),
        ({"split": {"kind": "time"}}, "data.split is not used"),
        ({"dense": ["x0", "x9"], "dim": 4}, "column(s) ['x9']"),
    ],
)
def test_bad_settings_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        MMoESyntheticDataModule(**({"num_rows": 200, "dim": 4, "seed": 0} | kwargs)).setup()
    assert message in str(err.value)
