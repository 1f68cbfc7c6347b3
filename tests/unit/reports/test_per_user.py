"""per_user.parquet: written by the reports, read back, averaging to the metrics exactly."""

from __future__ import annotations

import numpy as np
import pytest

from recolab import metrics as M
from recolab.data.schema import Schema, Task
from recolab.reports import per_user as PU
from recolab.reports.rank_report import write_rank_report
from recolab.reports.recall_report import write_recall_report


def rank_details(seed: int = 0):
    rng = np.random.default_rng(seed)
    n = 600
    users = np.array([f"user{u:02d}" for u in rng.integers(0, 40, n)])
    users[:1] = "lonely"  # a single row: left out of both metrics
    y = rng.integers(0, 2, n)
    y[users == "user00"] = 1  # no negative
    s = np.round(rng.random(n) + 0.3 * y, 2)  # tied scores
    t = np.round(rng.exponential(size=n), 1)
    p = t + rng.normal(size=n)
    return {
        "gauc/click": M.gauc_details(y, s, users),
        "xgauc/watch_time": M.xgauc_details(t, p, users),
    }


def test_rank_report_writes_per_user_values_that_average_to_the_metrics(tmp_path):
    details = rank_details()
    schema = Schema(tasks=(Task("click"), Task("watch_time", kind="regression")))
    metrics = {f"test/{k}": d.value for k, d in details.items()}
    paths = write_rank_report(
        tmp_path,
        title="t",
        schema=schema,
        metrics=metrics,
        details=details,
        context={},
        bootstrap_samples=300,
    )
    assert tmp_path / "per_user.parquet" in paths
    table, weights = PU.read_per_user(tmp_path / "per_user.parquet")
    assert weights == {"gauc/click": "rows", "xgauc/watch_time": "rows"}
    for key, d in details.items():
        assert PU.mean_of(table, weights, key) == pytest.approx(d.value, abs=1e-12)
    row = table.set_index("user_id")
    assert row.loc["lonely", "left_out/gauc/click"] == "single row"
    assert row.loc["lonely", "left_out/xgauc/watch_time"] == "single row"
    assert row.loc["user00", "left_out/gauc/click"] == "no negative"
    assert np.isnan(row.loc["user00", "gauc/click"]) and row.loc["user00", "positives/click"] > 1
    assert table["id_kind"].eq("raw").all() and table["rows"].sum() == 600
    md = (tmp_path / "report.md").read_text()
    assert "95% CI over users" in md and "300 resamples, seed 0" in md
    low, high = PU.intervals(table, weights, samples=300)["gauc/click"]
    assert low < details["gauc/click"].value < high
    assert (
        f"[{low:.4f}, {high:.4f}]" in md
        and "95% CI over users" in (tmp_path / "report.html").read_text()
    )


def test_user_ids_are_raw_where_the_vocabulary_knows_every_one():
    vocab = np.array([10, 20, 30])  # encoded id i is vocab[i - 1]
    assert PU.user_ids(np.array([3, 1]), vocab)[0].tolist() == [30, 10]
    assert PU.user_ids(np.array([3, 1]), vocab)[1] == "raw"
    ids, kind = PU.user_ids(np.array([3, 0]), vocab)  # 0: out of vocabulary
    assert kind == "encoded" and ids.tolist() == [3, 0]
    assert PU.user_ids(np.array([1]), None)[1] == "encoded"


def test_recall_report_writes_per_user_values(tmp_path):
    rng = np.random.default_rng(1)
    rows = {
        "targets": rng.integers(1, 50, (80, 1)),
        "model": rng.integers(1, 50, (80, 20)),
        "popular": np.tile(np.arange(1, 21), (80, 1)),
    }
    table, weights = PU.recall_per_user(rows, ks=[5, 20], users=np.arange(100, 180), id_kind="raw")
    for k in (5, 20):
        d = M.retrieval_details(rows["model"], rows["targets"], k=k)
        assert PU.mean_of(table, weights, f"recall_at_{k}") == pytest.approx(d.recall, abs=1e-12)
        assert PU.mean_of(table, weights, f"ndcg_at_{k}") == pytest.approx(d.ndcg, abs=1e-12)
    popular = M.retrieval_details(rows["popular"], rows["targets"], k=20)
    assert PU.mean_of(table, weights, "baseline_popular/recall_at_20") == pytest.approx(
        popular.recall, abs=1e-12
    )
    paths = write_recall_report(
        tmp_path,
        title="t",
        metrics={"test/recall_at_20": M.recall_at_k(rows["model"], rows["targets"], k=20)},
        summary={"ks": [5, 20]},
        context={},
        per_user=(table, weights),
        bootstrap_samples=200,
    )
    assert tmp_path / "per_user.parquet" in paths
    assert "| recall@20 |" in (md := (tmp_path / "report.md").read_text())
    assert "model: 95% CI over users" in md
