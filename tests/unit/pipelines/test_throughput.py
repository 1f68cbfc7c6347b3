"""FLOPs of a training step (recolab.pipelines.flops) and the per-epoch throughput every run logs
(recolab.throughput), on real Lightning fits."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from mlflow.tracking import MlflowClient
from pytorch_lightning.trainer.states import RunningStage, TrainerFn
from torch.utils.data import DataLoader

from recolab.models.blocks import FeatureEmbedding
from recolab.models.rank.single_task import SingleTask
from recolab.pipelines.rank import RankModule
from recolab.throughput import EpochThroughput, WindowThroughputMonitor
from recolab.train import train
from tests.conftest import TINY_WORLD, compose_train
from tests.lightning_helpers import Plain, quiet_trainer
from tests.unit.models.rank.helpers import SCHEMA, tiny_batch

HIDDEN = [12, 7]


def batches(sizes: list[int]) -> list[dict]:
    out = []
    for i, n in enumerate(sizes):
        labels = {
            "click": torch.randint(0, 2, (n,)).float(),
            "like": torch.randint(0, 2, (n,)).float(),
            "watch_time": torch.rand(n) * 30,
        }
        out.append({"features": tiny_batch(batch=n, seed=i), "labels": labels})
    return out


class Seen(pl.Callback):
    """What ThroughputMonitor reads at each training batch's end."""

    def __init__(self) -> None:
        self.train: list[int | None] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.train.append(pl_module.flops_per_batch)


def test_a_steps_flops_are_its_matrix_products_forward_and_backward() -> None:
    """SingleTask: per task an MLP over the features; every Linear layer's forward product,
    weight gradient and input gradient (the input needs one: it holds the embeddings) each cost
    2 * rows * d_in * d_out, and nothing else in the step is a matrix product."""
    torch.manual_seed(0)
    model = SingleTask(
        SCHEMA, embedding=partial(FeatureEmbedding, embedding_dim=4), hidden_dims=HIDDEN
    )
    module = RankModule(model, SCHEMA)
    seen = Seen()
    sizes = [16, 16, 5]
    trainer = quiet_trainer(max_epochs=2, callbacks=[seen], limit_val_batches=0)
    trainer.fit(module, DataLoader(batches(sizes), batch_size=None))
    d0 = model.embeds["click"].output_dim
    layers = list(zip([d0, *HIDDEN], [*HIDDEN, 1]))
    per_row = 3 * 2 * sum(a * b for a, b in layers) * len(SCHEMA.tasks)
    assert module.train_flops == {16: 16 * per_row, 5: 5 * per_row}
    assert seen.train == [16 * per_row, 16 * per_row, 5 * per_row] * 2
    assert module.flops_per_batch is None, "outside training there is no training batch's count"


def test_each_epoch_logs_samples_and_flops_per_second(tmp_path: Path) -> None:
    cfg = compose_train(
        tmp_path, ["+exp=mmoe", *TINY_WORLD, "trainer.max_epochs=2", "experiment_name=speed"]
    )
    train(cfg)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("speed").experiment_id])[0]
    history = {
        k: client.get_metric_history(run.info.run_id, k)
        for k in ("train/samples_per_sec", "train/flops_per_sec")
    }
    steps = [m.step for m in history["train/samples_per_sec"]]
    assert steps == [m.step for m in history["train/flops_per_sec"]]
    assert len(steps) == 2 and steps[1] == 2 * steps[0], "one value per epoch, at its last step"
    # The same seconds divide both, so their ratio is the FLOPs per sample: the same every epoch.
    ratios = [
        f.value / s.value
        for f, s in zip(history["train/flops_per_sec"], history["train/samples_per_sec"])
    ]
    assert ratios[0] > 0 and ratios[1] == pytest.approx(ratios[0], rel=1e-9)


def test_epoch_throughput_needs_no_flops() -> None:
    """A module without `flops_per_batch` still gets its samples per second, and no FLOPs."""

    logged: list[dict[str, float]] = []

    class Recorder(pl.loggers.logger.DummyLogger):
        def log_metrics(self, metrics, step=None) -> None:
            logged.append(dict(metrics))

    trainer = quiet_trainer(max_epochs=1, logger=Recorder(), callbacks=[EpochThroughput()])
    trainer.fit(Plain(), DataLoader(torch.randn(40, 3), batch_size=8))
    mine = [m for m in logged if "train/samples_per_sec" in m]
    assert len(mine) == 1 and mine[0]["train/samples_per_sec"] > 0
    assert "train/flops_per_sec" not in mine[0]


def test_a_step_that_fails_while_counted_leaves_no_counter_behind() -> None:
    """The counter wraps the step's forward and backward; a step that raises still closes it,
    so no later computation in the process runs under a leftover counter."""
    module = RankModule(
        SingleTask(
            SCHEMA, embedding=partial(FeatureEmbedding, embedding_dim=4), hidden_dims=HIDDEN
        ),
        SCHEMA,
    )
    broken = batches([8])
    del broken[0]["labels"]["like"]
    trainer = quiet_trainer(max_epochs=1, limit_val_batches=0)
    with pytest.raises(KeyError, match="like"):
        trainer.fit(module, DataLoader(broken, batch_size=None))
    assert torch._C._len_torch_dispatch_stack() == 0
    assert module.train_flops == {}


def test_each_span_of_training_reaches_on_span_with_its_samples() -> None:
    """A subclass sees every span of training (the benchmarks' `EpochTimer` records them): with a
    validation in the middle of each epoch, two spans per epoch, whose samples add up to the
    epoch's rows, and none of the validation's."""

    class Spans(Plain):
        def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
            self.layer(batch)

    spans: list[tuple[float, int]] = []

    class Recording(EpochThroughput):
        def on_span(self, trainer, seconds: float, samples: int) -> None:
            spans.append((seconds, samples))

    trainer = quiet_trainer(max_epochs=2, callbacks=[Recording()], val_check_interval=3)
    data = DataLoader(torch.randn(40, 3), batch_size=8)  # 5 batches: validation after the 3rd
    trainer.fit(Spans(), data, DataLoader(torch.randn(16, 3), batch_size=8))
    assert [samples for _, samples in spans] == [24, 16] * 2
    assert all(seconds > 0 for seconds, _ in spans)


def test_the_windowed_all_rank_rates_do_not_share_epoch_throughputs_names() -> None:
    """In a DDP run Lightning's ThroughputMonitor logs all-rank rates over its window under
    `train/samples_per_sec` too; `WindowThroughputMonitor` moves them to `train/window/...`, so
    that name's history is EpochThroughput's per-epoch values alone."""
    real = quiet_trainer()
    ddp = SimpleNamespace(  # what setup reads of a trainer, with two ranks
        precision_plugin=real.precision_plugin,
        strategy=real.strategy,
        enable_validation=False,
        world_size=2,
        state=SimpleNamespace(stage=RunningStage.TRAINING, fn=TrainerFn.FITTING),
    )
    monitor = WindowThroughputMonitor(batch_size_fn=len, window_size=2)
    monitor.setup(ddp, Plain(), "fit")
    throughput = monitor._throughputs[RunningStage.TRAINING]
    for step in (1, 2):
        throughput.update(time=float(step), batches=step, samples=8 * step, flops=100 * step)
    metrics = throughput.compute()
    assert metrics["window/samples_per_sec"] == 16.0 and metrics["device/samples_per_sec"] == 8.0
    assert "window/flops_per_sec" in metrics and "device/flops_per_sec" in metrics
    assert not {"samples_per_sec", "flops_per_sec", "batches_per_sec"} & set(metrics)
