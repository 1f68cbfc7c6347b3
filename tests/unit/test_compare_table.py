import pytest

from recolab.reports.compare import RunRecord, comparison_table, write_comparison


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
        "model",
        "runs",
        "seeds",
        "test/auc/click",
    ]  # lr is equal: not shown
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
    assert "| mmoe | 1 | 1 | 0.7000 |" in md.read_text()
    assert "<table" in html.read_text()
