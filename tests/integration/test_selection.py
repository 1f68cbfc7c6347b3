"""`recolab select`: the choice reads validation only (a configuration better on test but worse on
validation is not chosen), the re-runs take fresh seeds, and the comparison of the re-runs holds
test intervals; on a real MLflow sqlite store, and end to end on a real tiny sweep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from recolab.select import SelectionError, select
from tests.conftest import TINY_WORLD, compose_train
from tests.integration.test_sweeps import QUICK, run_cli


def tracked_runs(root: Path, rows: list[tuple[str, int, float, float]]) -> MlflowClient:
    """Complete training runs of one sweep in the store `<root>/mlflow.db`, as `recolab train`
    records them: (model.num_experts, seed, val/auc/click, test/auc/click) per run."""
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    experiment = client.create_experiment("recolab", artifact_location=str(root / "mlartifacts"))
    for experts, seed, val, test in rows:
        run = client.create_run(
            experiment,
            run_name=f"mmoe-seed{seed}",
            tags={
                "recolab.kind": "train",
                "recolab.complete": "true",
                "recolab.exp": "mmoe",
                "recolab.sweep": "sweep-1",
                "recolab.overrides": json.dumps(["+exp=mmoe", f"model.num_experts={experts}"]),
            },
        )
        rid = run.info.run_id
        for key, value in {
            "exp_name": "mmoe",
            "seed": seed,
            "model.num_experts": experts,
            "run_name": f"mmoe-seed{seed}",
        }.items():
            client.log_param(rid, key, value)
        client.log_metric(rid, "val/auc/click", val)
        client.log_metric(rid, "test/auc/click", test)
        client.set_terminated(rid, "FINISHED")
    return client


def choose_cfg(root: Path, *overrides: str):
    return compose_train(
        root,
        ["sweep=sweep-1", "rerun=false", f"out_dir={root}/sel", *overrides],
        config_name="select",
    )


def test_the_choice_reads_validation_only(tmp_path: Path) -> None:
    # 4 experts: better on test, worse on validation; 8 experts the other way round.
    tracked_runs(
        tmp_path,
        [(4, 1, 0.70, 0.95), (4, 2, 0.71, 0.96), (8, 1, 0.75, 0.60), (8, 2, 0.77, 0.61)],
    )
    result = select(choose_cfg(tmp_path, "metric=val/auc/click", "seeds=3"))
    assert result["chosen"]["config"] == "mmoe, model.num_experts=8"
    assert result["chosen"]["params"] == {"model.num_experts": "8"}
    assert result["metrics_read_for_the_choice"] == ["val/auc/click"]
    best, other = result["candidates"]
    assert (best["n"], other["n"]) == (2, 2)
    assert best["mean"] == pytest.approx(0.76) and other["mean"] == pytest.approx(0.705)
    assert result["runner_up"]["config"] == "mmoe, model.num_experts=4"
    assert result["runner_up"]["method"].startswith("paired t")
    assert result["runner_up"]["diff"] == pytest.approx(0.055)
    assert result["candidate_seeds"] == ["1", "2"] and result["seeds_to_run"] == [0, 3, 4]
    written = json.loads((tmp_path / "sel" / "selection.json").read_text())
    assert written["chosen"] == result["chosen"]
    assert "test/" not in json.dumps(written["candidates"])
    md = (tmp_path / "sel" / "selection.md").read_text()
    assert "**Chosen: mmoe, model.num_experts=8**" in md
    # A metric whose lower values are better: the lowest mean wins.
    result = select(choose_cfg(tmp_path, "metric=val/auc/click", "mode=min", "seeds=1"))
    assert result["chosen"]["params"] == {"model.num_experts": "4"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["metric=test/auc/click"], "metric='test/auc/click': a metric of the test split"),
        (["metric=oracle/auc/click"], "metric='oracle/auc/click': a metric of the oracle"),
        (["metric=train/loss"], "metric='train/loss': expected a validation metric"),
        (["metric=val/auc/clik"], "metric='val/auc/clik': none of the 2 candidate runs logged it"),
        (["metric=val/auc/click", "seeds=[2,5]"], "seeds=[2, 5]: seed(s) [2] already ran"),
        (["metric=val/auc/click", "seeds=0"], "seeds=0: expected the number of fresh seeds"),
        (["metric=val/auc/click", "sweep=other"], "no complete training run matches"),
        (["metric=val/auc/click", "sweep=null"], "no candidates named: expected sweep=<id>"),
        (["metric=val/samples_per_sec"], "expected mode=max or mode=min"),
    ],
)
def test_a_selection_that_cannot_be_made_on_validation_fails(
    overrides: list[str], message: str, tmp_path: Path
) -> None:
    tracked_runs(tmp_path, [(4, 1, 0.70, 0.95), (4, 2, 0.71, 0.96)])
    with pytest.raises(SelectionError) as e:
        select(choose_cfg(tmp_path, *overrides))
    assert message in str(e.value)
    assert not (tmp_path / "sel").exists()


@pytest.mark.slow  # about 30 s on 2 cores: four tiny training runs in three processes
def test_a_sweep_is_chosen_on_validation_and_rerun_on_fresh_seeds(tmp_path: Path) -> None:
    sweep = run_cli(
        ["train", "-m", "+exp=mmoe", "model.num_experts=2,4", "seed=1", *TINY_WORLD, *QUICK],
        tmp_path,
    )
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("recolab").experiment_id
    runs = client.search_runs([experiment])
    assert len(runs) == 2
    (sweep_id,) = {r.data.tags["recolab.sweep"] for r in runs}
    best, worse = sorted(runs, key=lambda r: -r.data.metrics["val/auc/click"])
    assert best.data.metrics["val/auc/click"] > worse.data.metrics["val/auc/click"]
    # The configuration worse on validation is made far better on test (its latest value).
    client.log_metric(worse.info.run_id, "test/auc/click", 0.999, step=10**6)
    client.log_metric(best.info.run_id, "test/auc/click", 0.001, step=10**6)

    done = run_cli(
        ["select", f"sweep={sweep_id}", "metric=val/auc/click", "seeds=2", "out_dir=sel"],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "sel" / "selection.json").read_text())
    experts = best.data.params["model.num_experts"]
    assert result["chosen"]["params"] == {"model.num_experts": experts}
    assert result["chosen"]["run_ids"] == [best.info.run_id]
    assert [c["mean"] for c in result["candidates"]] == pytest.approx(
        [best.data.metrics["val/auc/click"], worse.data.metrics["val/auc/click"]]
    )
    # Fresh seeds (the sweep ran seed 1), one multirun, the chosen configuration again.
    rerun = result["rerun"]
    assert rerun["seeds"] == [0, 2]
    assert rerun["command"][-2:] == [
        "seed=0,2",
        f"hydra.sweep.dir={tmp_path}/outputs/multiruns/{rerun['sweep']}",
    ]
    again = client.search_runs([experiment], f"tags.`recolab.sweep` = '{rerun['sweep']}'")
    assert sorted(r.data.params["seed"] for r in again) == ["0", "2"]
    assert sorted(r.info.run_id for r in again) == sorted(rerun["run_ids"])
    assert all(r.data.params["model.num_experts"] == experts for r in again)
    assert all(r.data.tags["recolab.complete"] == "true" for r in again)
    # The comparison of the re-runs: test metrics with a 95% interval over the two seeds.
    comparison = json.loads((tmp_path / "sel" / "comparison.json").read_text())
    (auc,) = [r for r in comparison["records"] if r["metric"] == "test/auc/click"]
    values = [r.data.metrics["test/auc/click"] for r in again]
    assert auc["n"] == 2 and auc["mean"] == pytest.approx(sum(values) / 2)
    assert auc["ci_low"] < auc["mean"] < auc["ci_high"]
    assert {"test/auc/click", "val/auc/click"} <= {r["metric"] for r in rerun["results"]}
    assert (tmp_path / "sel" / "comparison.md").is_file()
    assert (
        f"**Chosen: mmoe, model.num_experts={experts}**"
        in (tmp_path / "sel" / "selection.md").read_text()
    )
