"""The matrix-product FLOPs of a training step, for Lightning's `ThroughputMonitor` and for
`recolab.throughput.EpochThroughput`.

`ThroughputMonitor` (the `throughput` callback of every run) logs FLOPs per second when the
LightningModule has a `flops_per_batch` attribute, and model FLOPs utilization (`mfu`) where
Lightning knows the device's peak (CUDA GPUs; not CPUs). `TrainingFlops` supplies it: the first
training step of each batch size runs its forward and backward passes (Lightning's optimizer
closure) under torch's `FlopCounterMode`, counted as the step runs, so nothing is computed twice;
later steps of that size reuse the count. Counted are the operators torch's counter knows (matrix
products, convolutions, attention), as in `experiments/bench/flops.md`; element-wise work, lookups
and the optimizer count no FLOPs.

Not counted: a compiled model (`compile=true`), micro-batches that accumulate gradients without an
optimizer step, and evaluation batches (retrieval's index search runs outside torch). There
`flops_per_batch` is None and only samples per second are logged.
"""

from __future__ import annotations

from typing import Any

from torch.utils.flop_counter import FlopCounterMode

from recolab.data.columnar import batch_rows


class TrainingFlops:
    """Mixin for a LightningModule (listed before `pl.LightningModule`) whose model is `self.model`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Forward and backward FLOPs of one training step on this process, by the batch's rows.
        self.train_flops: dict[int, int] = {}
        self._batch_rows: int | None = None

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._batch_rows = batch_rows(batch)

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
    ) -> None:
        rows = self._batch_rows
        compiled = getattr(self.model, "_compiled_call_impl", None) is not None
        if optimizer_closure is None or rows is None or rows in self.train_flops or compiled:
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)

        def counted_closure() -> Any:
            with FlopCounterMode(display=False) as counter:  # left however the step ends
                loss = optimizer_closure()
            self.train_flops[rows] = counter.get_total_flops()
            return loss

        return super().optimizer_step(epoch, batch_idx, optimizer, counted_closure)

    @property
    def flops_per_batch(self) -> int | None:
        """This training batch's FLOPs on this process (None outside training, or not counted)."""
        trainer = getattr(self, "_trainer", None)
        if trainer is None or not trainer.training:
            return None
        return self.train_flops.get(self._batch_rows)
