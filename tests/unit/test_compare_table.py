"""The comparison table, configurations and baseline, and intervals against a baseline."""

import json

import numpy as np
import pandas as pd
import pytest

from recolab.reports import per_user as PU
from recolab.reports.compare import (
    RunRecord,
    comparison_records,
    comparison_table,
    group_runs,
    select_baseline,
    write_comparison,
)
from tests.conftest import compose_train


def _run(i, seed, model, auc):
    return RunRecord(
        f"r{i}",
        f"n{i}",
        {"seed": str(seed), "run_name": f"x-seed{seed}", "model": model, "lr": "0.001"},
        {"test/auc/click": auc, "train/loss": 1.0},
    )


def test_groups_by_config_without_seed():
    runs = [_run(0, 1, "mmoe", 0.70), _run(1, 2, "mmoe", 0.72), _run(2, 1, "sb", 0.69)]
    table = comparison_table(runs, metric_patterns=["test/*"])
    assert list(table.columns) == [
        "configuration",
        "test/auc/click",
        "runs",
        "seeds",
        "model",
    ]  # the metrics first; lr is equal: not shown
    row = table.set_index("model").loc["mmoe"]
    assert row["runs"] == 2 and row["seeds"] == "1,2"
    assert row["test/auc/click"] == "0.7100 +- 0.0141 (2)"
    assert table.set_index("model").loc["sb", "test/auc/click"] == "0.6900"


def test_no_runs_is_a_clear_error():
    with pytest.raises(ValueError, match="no runs"):
        comparison_table([], metric_patterns=["*"])


def test_writes_markdown_and_html(tmp_path):
    table = comparison_table(
        [_run(0, 1, "mmoe", 0.7), _run(1, 1, "sb", 0.6)], metric_patterns=["test/*"]
    )
    md, html = write_comparison(table, tmp_path, title="t", source="s")
    assert "| model=mmoe | 0.7000 | 1 | 1 | mmoe |" in md.read_text()
    assert "<table" in html.read_text()


# --- configurations, baseline, intervals (recolab.reports.compare with recolab.reports.stats) ---


def _exp_run(i, exp, seed, metrics, *, start=0, extra=None):
    params = {
        "seed": str(seed),
        "exp_name": exp,
        "logger.mlflow.tags.recolab.exp": exp,  # the copy the MLflow tag makes
        "lr": "0.001",
        **(extra or {}),
    }
    return RunRecord(f"r{i}", f"{exp}-seed{seed}", params, metrics, start_time=start)


def test_exp_name_is_shown_once_and_oracle_columns_come_last_or_go(tmp_path):
    runs = [
        _exp_run(0, "mmoe", 1, {"oracle/auc/click": 0.9, "test/auc/click": 0.7, "oracle/x": 1.0}),
        _exp_run(1, "sb", 1, {"oracle/auc/click": 0.9, "test/auc/click": 0.6, "oracle/x": 2.0}),
    ]
    table = comparison_table(runs, metric_patterns=["test/*", "oracle/*"])
    assert list(table.columns) == ["configuration", "test/auc/click", "runs", "seeds", "oracle/x"]
    assert table.attrs["constant"] == {"oracle/auc/click": "0.9000"}
    md, _ = write_comparison(table, tmp_path, title="t", source="s")[:2]
    assert "- `oracle/auc/click` is 0.9000 in every configuration" in md.read_text()


def test_a_seed_run_twice_counts_once_the_newest():
    runs = [
        _exp_run(0, "mmoe", 1, {"test/auc/click": 0.5}, start=1),
        _exp_run(1, "mmoe", 1, {"test/auc/click": 0.7}, start=2),  # the same seed, later
        _exp_run(2, "mmoe", 2, {"test/auc/click": 0.8}, start=3),
    ]
    grouping = group_runs(runs)
    (config,) = grouping.configs
    assert config.values("test/auc/click") == {"1": 0.7, "2": 0.8}
    assert [r.run_id for r in grouping.duplicates_dropped] == ["r0"]
    table = comparison_table(runs, metric_patterns=["test/*"])
    assert table.loc[0, "runs"] == 2 and table.attrs["duplicates"] == ["r0"]


def test_baseline_by_name_by_params_or_a_clear_error():
    runs = [
        _exp_run(0, "mmoe", 1, {}, extra={"model.num_experts": "4"}),
        _exp_run(1, "mmoe", 1, {}, extra={"model.num_experts": "8"}),
        _exp_run(2, "sb", 1, {}, extra={"model.num_experts": "None"}),
    ]
    configs = group_runs(runs).configs
    assert [c.label for c in configs] == [
        "mmoe, model.num_experts=4",
        "mmoe, model.num_experts=8",
        "sb",
    ]
    assert select_baseline("sb", configs).label == "sb"
    assert select_baseline("num_experts:8", configs).label == "mmoe, model.num_experts=8"
    assert select_baseline("exp_name=mmoe,model.num_experts=4", configs) is configs[0]
    with pytest.raises(ValueError, match=r"baseline='mmoe' matches 2 configurations.*sb"):
        select_baseline("mmoe", configs)
    with pytest.raises(ValueError, match="matches 0 configurations"):
        select_baseline("nope", configs)


def _write_users(folder, run_id, values, rows):
    table = pd.DataFrame(
        {"user_id": np.arange(len(values)), "id_kind": "raw", "rows": rows, "gauc/click": values}
    )
    (folder / run_id).mkdir(parents=True)
    PU.write_per_user(table, {"gauc/click": "rows"}, folder / run_id)


def test_records_test_each_configuration_against_the_baseline(tmp_path):
    rng = np.random.default_rng(0)
    users = 300
    rows = rng.integers(2, 30, users)
    quality = rng.beta(6, 3, users)
    shift = {"base": 0.0, "same": 0.0, "better": 0.05}
    runs = []
    for exp, d in shift.items():
        for seed in (1, 2, 3):
            values = np.clip(quality + d + 0.05 * rng.normal(size=users), 0, 1)
            values[:5] = np.nan  # left out of GAUC
            run_id = f"{exp}{seed}"
            _write_users(tmp_path, run_id, values, rows)
            mean = np.nansum(values * rows) / rows[5:].sum()
            run = _exp_run(0, exp, seed, {"test/gauc/click": mean, "test/auc/click": mean})
            run.run_id = run_id
            runs.append(run)

    def load(run_id):
        return PU.read_per_user(tmp_path / run_id / PU.FILE)

    records, notes = comparison_records(
        runs, metric_patterns=["test/*"], baseline="base", load_per_user=load, samples=500
    )
    by = {(r["config"], r["metric"], r["test"]): r for r in records}
    assert by[("base", "test/gauc/click", None)]["method"] == "baseline"
    better = by[("better", "test/gauc/click", "users")]
    assert better["within_noise"] is False and better["p_holm"] < 0.01
    assert better["diff_ci_low"] < 0.05 < better["diff_ci_high"]
    assert better["units"] == users - 5 and better["seed_pairs"] == 3
    same = by[("same", "test/gauc/click", "users")]
    assert same["within_noise"] is True
    # Holm over the two configurations compared: the larger p doubled at most, never below p.
    ps = sorted((r["p_value"], r["p_holm"]) for r in (better, same))
    assert ps[0][1] == pytest.approx(min(1, 2 * ps[0][0]))
    assert ps[1][1] == pytest.approx(max(ps[0][1], ps[1][0]))
    seeds = by[("better", "test/gauc/click", "seeds")]
    assert seeds["method"] == "paired t over 3 seeds" and seeds["n"] == 3
    assert ("better", "test/auc/click", "users") not in by  # no per-user column for AUC
    assert not notes
    table = comparison_table(runs, metric_patterns=["test/*"])
    paths = write_comparison(table, tmp_path / "out", title="t", source="s", records=records)
    saved = json.loads(paths[2].read_text())["records"]
    assert saved[0]["config"] == "base" and saved[0]["diff"] is None  # NaN-free, strict JSON
    assert "within noise" in paths[0].read_text() and "significant" in paths[0].read_text()


def test_default_out_dir_is_outside_the_tracked_tree(tmp_path):
    cfg = compose_train(tmp_path, [], config_name="compare")
    out = cfg.out_dir
    assert out.startswith(f"{tmp_path}/outputs/compare/"), out
