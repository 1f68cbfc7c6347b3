"""`recolab evaluate` rebuilds a checkpoint's report as a linked run; `recolab compare` tabulates runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from recolab.compare import compare
from recolab.config_validation import ConfigError
from recolab.evaluate import evaluate
from recolab.tracking import keep_tracking_env
from recolab.train import train
from tests.conftest import TINY_WORLD, compose_train

QUICK = ["trainer.max_epochs=1", "+trainer.limit_train_batches=4"]


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, float]]]:
    root = tmp_path_factory.mktemp("runs")
    results = []
    for seed in (1, 2):
        cfg = compose_train(
            root, ["+exp=mmoe", *TINY_WORLD, *QUICK, f"seed={seed}"], out=f"out{seed}"
        )
        with keep_tracking_env():
            results.append(train(cfg))
    return root, results


def test_evaluate_reproduces_the_test_metrics_as_a_linked_run(two_seeds) -> None:
    root, results = two_seeds
    ckpt = next((root / "out1" / "checkpoints").glob("epoch*.ckpt"))
    assert "recolab" in torch.load(ckpt, weights_only=True)  # loads without pickled code
    cfg = compose_train(root, [f"ckpt_path={ckpt}"], config_name="evaluate", out="eval")
    metrics = evaluate(cfg)
    tested = {k: v for k, v in results[0].items() if not k.startswith("val/")}
    assert tested and set(tested) <= set(metrics)  # train also returns the tested epoch's val/
    for key, value in tested.items():
        assert metrics[key] == pytest.approx(value, rel=1e-5, nan_ok=True), key

    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    runs = client.search_runs(
        [client.get_experiment_by_name("recolab").experiment_id], "tags.`recolab.kind` = 'evaluate'"
    )
    assert len(runs) == 1
    train_run = client.search_runs(
        [client.get_experiment_by_name("recolab").experiment_id],
        "tags.`recolab.kind` = 'train' and params.seed = '1'",
    )[0]
    assert runs[0].data.tags["mlflow.parentRunId"] == train_run.info.run_id
    # The trained model's and data's names, and the run's tags with the evaluation's own.
    for key in ("recolab.model", "recolab.data"):
        assert runs[0].data.tags[key] == train_run.data.tags[key], key
    assert runs[0].data.tags["recolab.model"] == "mmoe"
    assert runs[0].data.tags["recolab.tags"].split(",")[-1] == "evaluate"
    assert {"report/report.md"} <= {
        a.path for a in client.list_artifacts(runs[0].info.run_id, "report")
    }


def test_evaluate_refuses_a_missing_checkpoint(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, [f"ckpt_path={tmp_path}/nope.ckpt"], config_name="evaluate")
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        evaluate(cfg)


def test_compare_groups_seeds_into_mean_and_std(two_seeds) -> None:
    root, results = two_seeds
    cfg = compose_train(root, ["exps=[mmoe]", f"out_dir={root}/table"], config_name="compare")
    md, html, summary = compare(cfg)
    text = md.read_text()
    values = [r["test/auc/click"] for r in results]
    mean, std = sum(values) / 2, abs(values[0] - values[1]) / 2**0.5
    assert f"{mean:.4f} +- {std:.4f} (2)" in text
    assert "train/samples_per_sec" in text, "runs compare on speed too"
    assert "<table" in html.read_text()
    # Without a baseline: each configuration's t interval over its seeds, in comparison.json.
    (record,) = [
        r for r in json.loads(summary.read_text())["records"] if r["metric"] == "test/auc/click"
    ]
    assert record["n"] == 2 and record["mean"] == pytest.approx(mean)
    assert record["ci_low"] < mean < record["ci_high"] and record["diff"] is None


def test_evaluate_refuses_a_trainer_lightning_cannot_build_before_reading_data(
    two_seeds, tmp_path: Path
) -> None:
    root, _ = two_seeds
    ckpt = next((root / "out2" / "checkpoints").glob("epoch*.ckpt"))
    fresh = tmp_path / "data"  # the same world, asked for in a folder of its own
    cfg = compose_train(
        root,
        [f"ckpt_path={ckpt}", "data=synthetic_video", *TINY_WORLD, "+trainer.strategy=dpp"],
        config_name="evaluate",
        out="bad",
        data_dir=fresh,
    )
    with pytest.raises(Exception, match="invalid strategy name"):
        evaluate(cfg)
    assert not fresh.exists(), "data was generated or read before the trainer was built"
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    runs = client.search_runs(
        [client.get_experiment_by_name("recolab").experiment_id],
        "tags.`recolab.kind` = 'evaluate' and params.seed = '2'",
    )
    assert not runs, "an evaluation run was tracked for a trainer that cannot be built"
    assert not (root / "bad" / "report").exists()


def test_compare_takes_one_experiment_name_without_brackets(two_seeds) -> None:
    # `exps=mmoe` is a string: it once matched runs of experiments 'm', 'm', 'o' and 'e' (none).
    root, _ = two_seeds
    tables = []
    for i, exps in enumerate(("exps=[mmoe]", "exps=mmoe")):
        cfg = compose_train(root, [exps, f"out_dir={root}/table{i}"], config_name="compare")
        md, *_ = compare(cfg)
        tables.append(md.read_text().split("\n", 3)[3])  # past the title and the store line
    assert tables[0] == tables[1]


def test_evaluate_without_a_test_batch_fails_before_any_run(two_seeds) -> None:
    # `trainer.limit_test_batches=0` tests nothing: refused with the key before a run is tracked
    # (it used to fail after the run had started; the run was then marked FAILED).
    root, _ = two_seeds
    ckpt = next((root / "out2" / "checkpoints").glob("epoch*.ckpt"))
    cfg = compose_train(
        root,
        [f"ckpt_path={ckpt}", "+trainer.limit_test_batches=0"],
        config_name="evaluate",
        out="eval_empty",
    )
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    experiment = client.get_experiment_by_name("recolab").experiment_id
    before = len(client.search_runs([experiment]))
    with pytest.raises(ConfigError, match=r"trainer\.limit_test_batches=0: expected an integer"):
        evaluate(cfg)
    assert len(client.search_runs([experiment])) == before
