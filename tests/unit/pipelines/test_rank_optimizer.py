"""RankModule's optimizer (fused Adam by default) and its per-step logging, on real runs."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

from recolab.models.rank.mmoe import MMoE
from recolab.pipelines.rank import RankModule
from recolab.train import train
from tests.conftest import TINY_WORLD, compose_train
from tests.unit.models.rank.helpers import SCHEMA, tiny_batch


def module(**kwargs) -> RankModule:
    return RankModule(
        MMoE(SCHEMA, num_experts=2, expert_dims=[8], tower_dims=[4]), SCHEMA, **kwargs
    )


def test_adam_is_fused_by_default_and_the_user_can_turn_it_off() -> None:
    assert module().configure_optimizers().defaults["fused"] is True
    off = module(optimizer=partial(torch.optim.Adam, fused=False)).configure_optimizers()
    assert isinstance(off, torch.optim.Adam) and not off.defaults["fused"]
    foreach = module(optimizer=partial(torch.optim.Adam, foreach=True)).configure_optimizers()
    assert foreach.defaults["foreach"] is True and not foreach.defaults["fused"]
    adagrad = module(optimizer=partial(torch.optim.Adagrad), lr=0.1).configure_optimizers()
    assert isinstance(adagrad, torch.optim.Adagrad) and adagrad.defaults["lr"] == 0.1


def test_fused_and_plain_adam_take_the_same_steps() -> None:
    torch.manual_seed(0)
    a = module(optimizer=partial(torch.optim.Adam, fused=False))
    b = module()
    b.load_state_dict(a.state_dict())
    opts = [m.configure_optimizers() for m in (a, b)]
    batch = tiny_batch(batch=16)
    for _ in range(3):
        for m, opt in zip((a, b), opts):
            opt.zero_grad()
            sum(v.square().mean() for v in m(batch).values()).backward()
            opt.step()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_per_task_training_losses_reach_mlflow_at_the_logging_steps(tmp_path: Path) -> None:
    cfg = compose_train(
        tmp_path,
        [
            "+exp=mmoe",
            *TINY_WORLD,
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=6",
            "trainer.log_every_n_steps=2",
            "experiment_name=logging",
        ],
    )
    train(cfg)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("logging").experiment_id])[0]
    for name in ("train/loss", "train/loss/click", "train/loss/like", "train/loss/watch_time"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, name)]
        assert steps == [1, 3, 5], (name, steps)
