"""The torch metrics (recolab.metrics.device) against the numpy ones, on random and on tied inputs.

Both compute the same exact integer counts, so AUC, GAUC, XAUC and XGAUC must agree exactly (the
tests allow 1e-12 only where a float sum is involved: logloss); per-group values and the groups
left out must match too. On CPU here; tests/gpu repeats them on a CUDA device.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from recolab import metrics as M
from recolab.metrics import device as D


def _cases():
    rng = np.random.default_rng(0)
    n = 3000
    yield "random float64", rng.integers(0, 2, n), rng.normal(size=n), rng.integers(0, 40, n)
    # float32 scores rounded to few values: heavy ties, within and across groups
    yield (
        "tied float32",
        rng.integers(0, 2, n),
        np.round(rng.normal(size=n), 1).astype(np.float32),
        rng.integers(0, 25, n),
    )
    scores = rng.integers(0, 5, n).astype(np.float64)
    scores[rng.random(n) < 0.2] = -0.0  # -0.0 ties with 0.0
    yield "integer-valued with signed zeros", rng.integers(0, 2, n), scores, rng.integers(-3, 7, n)
    yield (
        "single-row and one-class groups",
        np.r_[np.ones(5), rng.integers(0, 2, n - 5)],
        rng.normal(size=n),
        np.r_[np.arange(5), 5 + rng.integers(0, 50, n - 5)],
    )


CASES = list(_cases())
IDS = [c[0] for c in CASES]


def _same_grouped(a: M.GroupedMetric, b: M.GroupedMetric) -> None:
    assert (a.value == b.value) or (np.isnan(a.value) and np.isnan(b.value))
    assert (a.num_groups, a.num_groups_used, a.num_groups_left_out, a.rows_left_out) == (
        b.num_groups,
        b.num_groups_used,
        b.num_groups_left_out,
        b.rows_left_out,
    )
    pa, pb = a.per_group, b.per_group
    np.testing.assert_array_equal(pa.groups, pb.groups)
    np.testing.assert_array_equal(pa.rows, pb.rows)
    np.testing.assert_array_equal(pa.values, pb.values)  # nan where left out, in both
    np.testing.assert_array_equal(pa.weights, pb.weights)
    if pa.positives is not None or pb.positives is not None:
        np.testing.assert_array_equal(pa.positives, pb.positives)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_auc_and_gauc_equal_numpy(case):
    _, y, s, g = case
    assert D.auc(y, s) == M.auc(y, s)
    assert D.auc(torch.from_numpy(y), torch.from_numpy(s)) == M.auc(y, s)
    for weight in ("impressions", "positives", "uniform"):
        _same_grouped(
            D.gauc_details(y, s, g, weight=weight), M.gauc_details(y, s, g, weight=weight)
        )


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_xauc_and_xgauc_equal_numpy(case):
    _, _, s, g = case
    rng = np.random.default_rng(1)
    # targets with ties (watch seconds), predictions from the case (ties included)
    t = np.round(rng.exponential(5, len(s))).astype(np.float64)
    assert D.xauc(t, s) == M.xauc(t, s)
    assert D.xauc(s, t) == M.xauc(s, t)
    _same_grouped(D.xgauc_details(t, s, g), M.xgauc_details(t, s, g))
    _same_grouped(D.xgauc_details(s, t, g), M.xgauc_details(s, t, g))


def test_logloss_equals_numpy_to_rounding():
    rng = np.random.default_rng(2)
    y, p = rng.integers(0, 2, 5000), rng.random(5000).astype(np.float32)
    p[:10] = [0, 1, 0, 1, 0.5, 1e-9, 1 - 1e-9, 0, 1, 0]
    assert D.logloss(y, p) == pytest.approx(M.logloss(y, p), rel=1e-12, abs=0)


def test_inversions_match_a_pair_loop():
    rng = np.random.default_rng(3)
    for n in (1, 2, 3, 7, 64, 65, 300):
        v = rng.permutation(n)
        expected = sum(int(v[i] > v[j]) for i in range(n) for j in range(i + 1, n))
        assert int(D._inversions(torch.from_numpy(v))[0]) == expected


def test_bad_inputs_raise_like_numpy():
    with pytest.raises(ValueError, match="both classes"):
        D.auc(np.ones(4), np.arange(4.0))
    with pytest.raises(ValueError, match="same length"):
        D.auc(np.array([0, 1]), np.arange(3.0))
    with pytest.raises(ValueError, match="NaN or infinite"):
        D.xauc(np.arange(3.0), np.array([0.0, np.nan, 1.0]))
    with pytest.raises(ValueError, match="0 or 1"):
        D.gauc(np.array([0, 2]), np.arange(2.0), np.zeros(2))
    with pytest.raises(ValueError, match="two distinct targets"):
        D.xauc(np.ones(3), np.arange(3.0))


def test_exact_metrics_chooses_torch_only_for_large_inputs_on_a_device(monkeypatch):
    y = np.array([0, 1, 1, 0])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    called = []
    real = D.auc
    monkeypatch.setattr(D, "auc", lambda *a, **k: called.append(1) or real(*a, **k))
    assert D.ExactMetrics(torch.device("cpu")).auc(y, s) == M.auc(y, s)
    assert called == []  # numpy on a CPU device
    monkeypatch.setattr(D, "ON_CPU", True)
    monkeypatch.setattr(D, "MIN_ROWS", 4)
    assert D.ExactMetrics(torch.device("cpu")).auc(y, s) == M.auc(y, s)
    assert called == [1]
    assert not D.ExactMetrics(None).on_device(10**9)


def test_the_rank_pipeline_logs_the_same_metrics_through_the_torch_path(tmp_path, monkeypatch):
    """`RankModule`'s evaluation with the torch path forced on (a CPU here): every metric equal."""
    import pytorch_lightning as pl

    from recolab.models.blocks import FeatureEmbedding
    from recolab.models.rank.mmoe import MMoE
    from recolab.pipelines.rank import RankModule
    from tests.unit.data.test_datamodule import _dm, _write

    dm = _dm(_write(tmp_path, n=400), meta=["user_id"], eval_batch_size=16)
    dm.setup()
    torch.manual_seed(0)
    module = RankModule(
        MMoE(
            dm.schema,
            embedding=partial(FeatureEmbedding, embedding_dim=4),
            num_experts=2,
            expert_dims=[8],
            tower_dims=[4],
        ),
        dm.schema,
        group_key="user_id",
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=dm)
    calls = []
    for name in ("auc", "gauc_details", "xauc", "xgauc_details", "logloss"):
        real = getattr(D, name)
        monkeypatch.setattr(
            D, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k)
        )
    [numpy_path] = trainer.test(module, datamodule=dm, verbose=False)
    assert calls == []
    monkeypatch.setattr(D, "ON_CPU", True)
    monkeypatch.setattr(D, "MIN_ROWS", 0)
    [torch_path] = trainer.test(module, datamodule=dm, verbose=False)
    assert set(calls) == {"auc", "gauc_details", "xauc", "xgauc_details", "logloss"}
    assert numpy_path.keys() == torch_path.keys()
    assert any(k.startswith("test/gauc/") for k in numpy_path)
    for key, value in numpy_path.items():
        assert torch_path[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key


def test_deterministic_mode_keeps_numpy(monkeypatch):
    monkeypatch.setattr(D, "ON_CPU", True)
    monkeypatch.setattr(D, "MIN_ROWS", 1)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        assert D.ExactMetrics(torch.device("cpu")).on_device(10)
        torch.use_deterministic_algorithms(True)
        assert not D.ExactMetrics(torch.device("cpu")).on_device(10)
    finally:
        torch.use_deterministic_algorithms(was)
