"""The one registry of metric names: declared sets, their names, their better sides."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recolab import metrics as M
from recolab.metrics.device import ExactMetrics
from recolab.metrics.registry import METRICS, RetrievalInputs, metric_set, retrieval_values
from recolab.pipelines.rank import RankModule, rank_metrics
from recolab.run_checks import metric_direction
from tests.unit.models.rank.helpers import SCHEMA


def test_each_task_metric_is_the_pure_function_it_names() -> None:
    rng = np.random.default_rng(0)
    y, p, g = rng.integers(0, 2, 200), rng.random(200), rng.integers(0, 20, 200)
    E = ExactMetrics(None)
    assert METRICS["auc"].compute(E, y, p, g) == M.auc(y, p)
    assert METRICS["gauc"].compute(E, y, p, g).value == M.gauc(y, p, g)
    assert METRICS["ece"].compute(E, y, p, g) == M.ece(y, p, num_bins=15)
    t = rng.random(200)
    assert METRICS["xgauc"].compute(E, t, p, g).value == M.xgauc(t, p, g)
    assert METRICS["rmse"].compute(E, t, p, g) == M.rmse(t, p)


def test_retrieval_values_are_named_per_cut_off() -> None:
    topk, targets = np.array([[3, 1, 2], [2, 3, 1]]), np.array([[1], [4]])
    inputs = RetrievalInputs(topk, targets, np.arange(5))
    got = retrieval_values(metric_set(["recall", "mrr"], "retrieval", key="k"), inputs, [1, 2])
    assert got == {"recall_at_1": 0.0, "recall_at_2": 0.5, "mrr": M.mrr(topk, targets)}


def test_the_rank_module_logs_its_declared_set() -> None:
    module = RankModule(
        torch.nn.Linear(2, 1), SCHEMA, metrics={"binary": ["logloss"], "regression": ["xgauc"]}
    )
    val = module.logged_metric_names("val")
    assert [n for n in val if not n.startswith("val/loss")] == [
        f"val/{'logloss' if t.kind == 'binary' else 'xgauc'}/{t.name}"
        for t in SCHEMA.tasks
        if t.kind == "binary" or "user_id" in SCHEMA.meta
    ]
    y = {t.name: np.array([0.0, 1.0, 1.0]) for t in SCHEMA.tasks}
    found, details = rank_metrics(SCHEMA, module.metrics, y, y, np.array([1, 1, 2]))
    assert set(found) == {
        f"{'logloss' if t.kind == 'binary' else 'xgauc'}/{t.name}" for t in SCHEMA.tasks
    }
    assert set(details) == {f"xgauc/{t.name}" for t in SCHEMA.tasks if t.kind == "regression"}


def test_an_unknown_metric_is_named_with_a_suggestion() -> None:
    with pytest.raises(
        ValueError,
        match=r"metrics.binary=\['gaucc'\]: expected names of binary metrics.*did you mean 'gauc'",
    ):
        RankModule(torch.nn.Linear(2, 1), SCHEMA, metrics={"binary": ["gaucc"]})
    with pytest.raises(ValueError, match=r"metrics.ranking: unknown key for RankMetricSets"):
        RankModule(torch.nn.Linear(2, 1), SCHEMA, metrics={"ranking": ["auc"]})


def test_run_checks_read_the_better_side_from_the_registry() -> None:
    for m in METRICS.values():
        want = {True: "max", False: "min", None: None}[m.higher_is_better]
        assert metric_direction(f"val/{m.name}_at_5/x" if m.at_k else f"val/{m.name}/x") == want
    assert metric_direction("val/loss") == "min" and metric_direction("test/auc_raw/click") == "max"
