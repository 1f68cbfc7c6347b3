"""Selection on validation only: a monitor or `optimized_metric` naming a metric of the test epoch
(`test/`, `oracle/`, `baseline_*/`), or a `mode` / Optuna `direction` that would keep the worst
epoch of a metric, fails before training with the key, the value, why, and the val/ metric to use."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from recolab.config_validation import ConfigError
from recolab.run_checks import metric_direction, selection_problem
from recolab.train import train
from tests.conftest import TINY_WORLD, compose_train

QUICK = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
    "callbacks.progress_bar.refresh_rate=0",
]
WHY = "which must not choose anything: validation selects"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["+optimized_metric=test/auc/click"],
            f"optimized_metric='test/auc/click': a metric of the test split, {WHY}",
        ),
        (
            ["+optimized_metric=oracle/auc/click"],
            "optimized_metric='oracle/auc/click': a metric of the oracle (scored on the test "
            f"split), {WHY}",
        ),
        (
            ["callbacks.model_checkpoint.monitor=test/gauc/click"],
            f"callbacks.model_checkpoint.monitor='test/gauc/click': a metric of the test split, {WHY}",
        ),
        (
            ["+exp=two_tower", "callbacks.early_stopping.monitor=baseline_popular/recall_at_50"],
            "callbacks.early_stopping.monitor='baseline_popular/recall_at_50': a metric of a "
            f"baseline (scored in the test epoch), {WHY}",
        ),
        (
            ["callbacks.model_checkpoint.monitor=val/gauc/click"],  # the default mode: min
            "callbacks.model_checkpoint.mode='min' with monitor='val/gauc/click': this keeps the "
            "epoch with the lowest value, and val/gauc/click is better higher; expected "
            "callbacks.model_checkpoint.mode=max",
        ),
        (
            [
                "callbacks.early_stopping.monitor=val/logloss/click",
                "callbacks.early_stopping.mode=max",
            ],
            "callbacks.early_stopping.mode='max' with monitor='val/logloss/click': this keeps the "
            "epoch with the highest value, and val/logloss/click is better lower; expected "
            "callbacks.early_stopping.mode=min",
        ),
        (
            ["+hparams_search=mmoe_optuna", "hydra.sweeper.direction=minimize"],
            "hydra.sweeper.direction='minimize' with optimized_metric='val/auc/click': the search "
            "would seek its lowest value, and val/auc/click is better higher; expected "
            "hydra.sweeper.direction=maximize",
        ),
    ],
    ids=[
        "optimized-test",
        "optimized-oracle",
        "checkpoint-test",
        "early-stopping-baseline",
        "checkpoint-mode",
        "early-stopping-mode",
        "optuna-direction",
    ],
)
def test_a_choice_on_the_test_epoch_or_the_wrong_side_fails_before_training(
    overrides: list[str], message: str, tmp_path: Path, data_cache: Path
) -> None:
    exp = [] if any(o.startswith("+exp=") for o in overrides) else ["+exp=mmoe"]
    cfg = compose_train(tmp_path, [*exp, *TINY_WORLD, *QUICK, *overrides], data_dir=data_cache)
    with pytest.raises(ConfigError) as e:
        train(cfg)
    assert message in str(e.value)
    assert not (tmp_path / "out" / "checkpoints").exists(), "training started"
    if (tmp_path / "mlflow.db").exists():
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
        ids = [x.experiment_id for x in client.search_experiments()]
        assert client.search_runs(ids) == [], "a run was tracked for a config that cannot complete"


def test_the_refusal_suggests_the_validation_metric_of_the_same_name() -> None:
    val = ["val/loss", "val/auc/click", "val/gauc/click", "val/recall_at_50"]
    assert selection_problem("k", "val/auc/click", val) is None
    assert selection_problem("k", "train/loss", val) is None
    for value, suggestion in [
        ("test/gauc/click", "val/gauc/click"),
        ("oracle/auc/click", "val/auc/click"),
        ("baseline_random/recall_at_50", "val/recall_at_50"),
        ("test/index_recall_at_50", "val/recall_at_50"),  # no val twin: the closest val metric
    ]:
        assert selection_problem("k", value, val).endswith(
            f"expected a val/ metric, e.g. {suggestion!r}"
        ), value


@pytest.mark.parametrize(
    ("name", "direction"),
    [
        ("val/loss", "min"),
        ("val/loss/click", "min"),
        ("val/logloss/like", "min"),
        ("val/ece/click", "min"),
        ("val/mae/watch_time", "min"),
        ("val/rmse/watch_time", "min"),
        ("val/auc/click", "max"),
        ("val/gauc/click", "max"),
        ("val/xauc/watch_time", "max"),
        ("val/xgauc/watch_time", "max"),
        ("val/recall_at_50", "max"),
        ("val/ndcg_at_20", "max"),
        ("val/hit_rate_at_100", "max"),
        ("val/mrr", "max"),
        ("test/auc_raw/click", "max"),
        ("val/retrieved_popularity_at_50", None),
        ("train/samples_per_sec", None),
        ("loss", None),
    ],
)
def test_metric_direction(name: str, direction: str | None) -> None:
    assert metric_direction(name) == direction
