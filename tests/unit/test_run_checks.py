"""Start-of-run checks: a monitor or `optimized_metric` naming a metric the run never logs fails
before training, against the names the pipeline module declares; a diverging loss stops the run
at its step, naming the loss and the learning rate."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from recolab.config_validation import ConfigError
from recolab.run_checks import check_finite_loss
from recolab.train import build, train
from tests.conftest import TINY_WORLD, compose_train
from tests.lightning_helpers import Plain, quiet_trainer

QUICK = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=2",
    "callbacks.progress_bar.refresh_rate=0",
]


def tiny(tmp_path: Path, data_cache: Path, *overrides: str) -> DictConfig:
    exp = [] if any(o.startswith("+exp=") for o in overrides) else ["+exp=mmoe"]
    return compose_train(tmp_path, [*exp, *TINY_WORLD, *QUICK, *overrides], data_dir=data_cache)


def runs(tmp_path: Path) -> list:
    if not (tmp_path / "mlflow.db").exists():
        return []
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def declared(cfg: DictConfig, split: str) -> set[str]:
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return set(build(cfg, datamodule)[1].logged_metric_names(split))


@pytest.mark.parametrize(
    "overrides",
    [
        # truth metrics, calibrated tasks' *_raw metrics, GAUC/XGAUC and the oracle's
        ["+exp=mmoe_position", "+calibration=isotonic"],
        # the faiss index's recall against the exact top-k, and the two baselines
        ["+exp=two_tower", "module.index=flat", "module.ks=[10,50]"],
    ],
    ids=["rank", "recall"],
)
def test_declared_metric_names_are_the_ones_logged(
    overrides: list[str], tmp_path: Path, data_cache: Path
) -> None:
    cfg = tiny(tmp_path, data_cache, *overrides, "trainer.log_every_n_steps=1")
    train(cfg)
    (run,) = runs(tmp_path)
    # Lightning's ThroughputMonitor (callbacks.throughput) adds `test/time`, `test/batches`, ...
    logged = {
        k for k in run.data.metrics if k.split("/")[1:] not in (["time"], ["batches"], ["samples"])
    }
    assert {k for k in logged if k.startswith("val/")} == declared(cfg, "val")
    assert {k for k in logged if k.startswith(("test/", "oracle/", "baseline_"))} == declared(
        cfg, "test"
    )
    assert declared(cfg, "train") <= logged


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["callbacks.model_checkpoint.monitor=val/auc/clik"],
            "callbacks.model_checkpoint.monitor='val/auc/clik': not a metric this run logs; "
            "expected one of the metrics logged while fitting: train/loss, ",
        ),
        (
            ["callbacks.early_stopping.monitor=val/los"],
            "callbacks.early_stopping.monitor='val/los': not a metric this run logs",
        ),
        (  # a test metric may not choose when to stop (and is not logged while fitting)
            ["callbacks.early_stopping.monitor=test/auc/click"],
            "callbacks.early_stopping.monitor='test/auc/click': a metric of the test split, which "
            "must not choose anything",
        ),
        (  # the exp monitors recall@50; K=50 is no longer among module.ks
            ["+exp=two_tower", "module.ks=[20,100]"],
            "callbacks.model_checkpoint.monitor='val/recall_at_50': not a metric this run logs",
        ),
        (
            ["+optimized_metric=val/aucc/click"],
            "optimized_metric='val/aucc/click': not a metric this run logs; expected one of "
            "val/loss, ",
        ),
    ],
)
def test_a_metric_the_run_never_logs_fails_before_training(
    overrides: list[str], message: str, tmp_path: Path, data_cache: Path
) -> None:
    with pytest.raises(ConfigError) as e:
        train(tiny(tmp_path, data_cache, *overrides))
    assert message in str(e.value)
    assert not (tmp_path / "out" / "checkpoints").exists(), "training started"
    assert runs(tmp_path) == [], "a run was tracked for a config that cannot complete"


def test_a_misspelled_optimized_metric_gets_a_suggestion(tmp_path: Path, data_cache: Path) -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'val/auc/click'\?"):
        train(tiny(tmp_path, data_cache, "+optimized_metric=val/aucc/click"))


def test_a_diverging_learning_rate_stops_the_run_at_its_step(
    tmp_path: Path, data_cache: Path
) -> None:
    cfg = tiny(tmp_path, data_cache, "module.lr=1e12", "trainer.max_epochs=2")
    with pytest.raises(FloatingPointError) as e:
        train(cfg)
    text = str(e.value)
    assert text.startswith("the training loss is nan at step 1 (epoch 0) with learning rate 1e+12")
    assert "train/loss/click=nan" in text and "lower module.lr" in text
    (run,) = runs(tmp_path)
    assert run.info.status == "FAILED"
    for ckpt in (tmp_path / "out" / "checkpoints").glob("*.ckpt"):  # none is expected
        weights = torch.load(ckpt, weights_only=True)["state_dict"]
        assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


class Diverging(Plain):
    """`Plain`, whose loss turns NaN at its third step."""

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        if batch_idx == 2:
            loss = loss * float("nan")
        check_finite_loss(self, loss, {"train/loss/a": loss, "train/loss/b": torch.tensor(0.25)})
        return loss


def test_the_non_finite_loss_names_the_step_the_part_and_the_learning_rate() -> None:
    module = Diverging()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    data = torch.utils.data.DataLoader(torch.ones(8, 3), batch_size=2)
    with pytest.raises(FloatingPointError) as e:
        quiet_trainer(max_epochs=1).fit(module, data)
    assert str(e.value).startswith(
        "the training loss is nan at step 2 (epoch 0) with learning rate 0.1 (module.lr); "
        "non-finite part(s): train/loss/a=nan. "
    )
    assert all(torch.isfinite(v).all() for v in module.state_dict().values())
    assert any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_a_finite_loss_passes_outside_a_trainer() -> None:
    check_finite_loss(pl.LightningModule(), torch.tensor(0.5))
    with pytest.raises(FloatingPointError, match=r"loss is inf at step 0"):
        check_finite_loss(pl.LightningModule(), torch.tensor(math.inf))
