"""Each training epoch's throughput, logged as `train/samples_per_sec` (and `train/flops_per_sec`).

Lightning's `ThroughputMonitor` (the `throughput` callback) logs rates over a sliding window of
batches: nothing until its window (100 batches by default) has filled, and on one process only
the per-device names (`train/device/samples_per_sec`). `EpochThroughput` gives every run, short
or long, on one process or many, the same figures to compare runs by: per training epoch, the
samples trained on by all ranks over the epoch's training seconds (from the epoch's start to
the start of its validation, so evaluation is left out; with validation within the epoch,
`val_check_interval`, each span of training between validations is logged by itself), and, where the module counts its
FLOPs (`recolab.pipelines.flops`), the FLOPs of all ranks over the same seconds. They are logged
at the epoch's last step.

In a DDP run Lightning's `ThroughputMonitor` also logs all-rank rates over its window, under the
same names; `WindowThroughputMonitor` (the `throughput` callback) puts those under
`train/window/...`, so that `train/samples_per_sec` holds the per-epoch values alone (the ones
`recolab compare` reads as a run's latest).
"""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ThroughputMonitor
from pytorch_lightning.trainer.states import TrainerFn

from recolab.data.columnar import batch_rows


class EpochThroughput(pl.Callback):
    """Logs `train/samples_per_sec` and `train/flops_per_sec` (if counted) once per training epoch."""

    def __init__(self) -> None:
        self._t0: float | None = None
        self._samples = 0
        self._flops: int | None = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0, self._samples, self._flops = time.perf_counter(), 0, 0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, *_: Any
    ) -> None:
        self._samples += batch_rows(batch)
        flops = getattr(pl_module, "flops_per_batch", None)
        self._flops = None if flops is None or self._flops is None else self._flops + flops

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._close(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Validation within fit: the rest of the epoch, if any, is a new span. (`trainer.training`
        # is False here: the trainer's stage is validating until this hook returns.)
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close(trainer)

    def _close(self, trainer: pl.Trainer) -> None:
        """Every rank calls this at the same point of the epoch: the counts are summed over ranks."""
        if self._t0 is None:
            return
        seconds, self._t0 = time.perf_counter() - self._t0, None
        counted = self._flops is not None
        totals = torch.tensor(
            [float(self._samples), float(self._flops or 0), float(counted)], dtype=torch.float64
        )
        totals = trainer.strategy.reduce(totals.to(trainer.strategy.root_device), reduce_op="sum")
        samples, flops, counted_ranks = totals.tolist()
        if not samples or seconds <= 0:  # e.g. after the validation that ends an epoch
            return
        self.on_span(trainer, seconds, int(samples))
        metrics = {"train/samples_per_sec": samples / seconds}
        if counted_ranks == trainer.world_size:  # every rank counted its FLOPs
            metrics["train/flops_per_sec"] = flops / seconds
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def on_span(self, trainer: pl.Trainer, seconds: float, samples: int) -> None:
        """Called on every rank as a span of training closes, with its seconds and the samples
        of all ranks: for subclasses that record more about the span (the benchmarks'
        `EpochTimer` adds CPU time and page faults)."""


class WindowThroughputMonitor(ThroughputMonitor):
    """Lightning's `ThroughputMonitor`, its all-rank windowed rates (logged in DDP runs only)
    renamed from `<stage>/<rate>` to `<stage>/window/<rate>` (`samples_per_sec`,
    `flops_per_sec`, `mfu`, ...); the per-device rates (`<stage>/device/...`) and the counts keep
    their names. Arguments as `ThroughputMonitor`'s."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        for throughput in self._throughputs.values():
            throughput.compute = _windowed(throughput.compute, throughput.separator)


def _windowed(compute: Any, separator: str) -> Any:
    def renamed() -> dict[str, Any]:
        return {
            f"window{separator}{k}"
            if not k.startswith("device") and (k.endswith("_per_sec") or k == "mfu")
            else k: v
            for k, v in compute().items()
        }

    return renamed
