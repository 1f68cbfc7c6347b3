"""What every pipeline module shares: the run's checkpoint extras, the epoch hooks, the optimizer
built from its config node, evaluation as collect -> gather -> compute -> log, and the report
protocol.

A pipeline (`RankModule`, `RecallModule`) subclasses `PipelineModule` and writes only what is its
own: the training step, `collect` (one evaluation batch -> a row of tensors), `compute` (the rows
gathered from every rank -> `split/...` metrics), `logged_metric_names` (what `compute` logs, for
`recolab.run_checks`), and the two report methods of `Reporting`, which `recolab.lifecycle` calls
after testing. Evaluation rows are gathered from every rank at the epoch's end before any metric
is computed, so grouped and ranking metrics are exact under DDP (never an average of per-rank
values); every rank computes the same values and logs them without a sync (`log_gathered`).

The optimizer is a config node, `module.optimizer: {_target_: torch.optim.Adam, _partial_: true,
...}`: a factory that `configure_optimizers` calls with the parameters, `module.lr` and
`module.weight_decay` (`make_optimizer`).
"""

from __future__ import annotations

import functools
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Protocol, runtime_checkable

import pytorch_lightning as pl
import torch
from pydantic import BeforeValidator
from torch import nn

from recolab.params import Count0, NonNegative, Positive, checked
from recolab.pipelines.distributed import gather_columns, log_gathered
from recolab.pipelines.flops import TrainingFlops

log = logging.getLogger(__name__)

#: `module.optimizer`: the torch optimizer's class (or a partial of it), called with the
#: parameters, `lr` and `weight_decay`.
OptimizerFactory = Callable[..., torch.optim.Optimizer]


def _an_optimizer(value: Any) -> Any:
    if value is not None and not callable(value):
        raise ValueError(
            "a torch optimizer node {_target_: torch.optim.Adam, _partial_: true, ...}, its keys "
            "the optimizer's own (e.g. module.optimizer._target_=torch.optim.Adagrad, "
            "+module.optimizer.fused=false)"
        )
    return value


#: A pipeline's `optimizer` parameter: a factory, given by its config node.
Optimizer = Annotated[OptimizerFactory, BeforeValidator(_an_optimizer)]
#: Adam options that choose (or rule out) an implementation: given any, Adam is not made fused.
FUSED_OFF = {"fused", "foreach", "differentiable"}


@runtime_checkable
class Reporting(Protocol):
    """The report protocol: what `recolab.lifecycle.finish_run` (and `recolab evaluate`) call on
    a pipeline module, on rank zero, after testing."""

    def write_report(
        self, out_dir: str | Path, *, title: str, metrics: dict[str, float], context: dict[str, Any]
    ) -> list[Path]:
        """Write the offline report files for the last test epoch; return their paths."""
        ...

    def metrics_markdown(self, metrics: dict[str, float]) -> str:
        """The test metrics as the report's markdown table (printed at the end of a run)."""
        ...


def optimizer_parts(factory: OptimizerFactory) -> tuple[type, dict[str, Any]]:
    """(the optimizer class, the keyword arguments its config node gave) of a factory."""
    if isinstance(factory, functools.partial):
        return factory.func, dict(factory.keywords)
    return factory, {}


def make_optimizer(
    factory: OptimizerFactory, module: nn.Module, *, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """`factory(module.parameters(), lr=lr, weight_decay=weight_decay)`; Adam fused where the
    torch build has it for the parameters' device, unless the node chose an implementation.

    Fused Adam (one kernel per parameter for the whole update) is Adam's update either way
    (experiments/bench/speed.md); `module.optimizer.fused=false` turns it off. Raises ValueError
    when embeddings have sparse gradients and the optimizer is Adam, which does not take them.
    """
    cls, given = optimizer_parts(factory)
    sparse = [n for n, m in module.named_modules() if isinstance(m, nn.Embedding) and m.sparse]
    if sparse and cls is torch.optim.Adam:
        raise ValueError(
            f"embeddings {sparse} have sparse gradients, which Adam does not take: set "
            "module.optimizer._target_=torch.optim.Adagrad"
        )
    if cls is torch.optim.Adam and not FUSED_OFF & given.keys():
        try:
            return factory(module.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
        except (RuntimeError, ValueError) as e:
            log.info("fused Adam unavailable here (%s); using torch's default Adam", e)
    return factory(module.parameters(), lr=lr, weight_decay=weight_decay)


class PipelineModule(TrainingFlops, pl.LightningModule, ABC):
    """The shared part of the pipeline modules (see the module docstring).

    Args:
        lr: the optimizer's learning rate.
        weight_decay: the optimizer's weight decay.
        optimizer: the optimizer factory (`module.optimizer`); None: `torch.optim.Adam`.
        report_bootstrap: resamples B of the report's 95% intervals over users
            (`recolab.reports.per_user`); 0 for none.
    """

    @checked
    def __init__(
        self,
        *,
        lr: Positive,
        weight_decay: NonNegative,
        optimizer: Optimizer | None,
        report_bootstrap: Count0,
    ) -> None:
        super().__init__()
        self.lr = lr
        self.weight_decay = weight_decay
        self.optimizer = optimizer if optimizer is not None else torch.optim.Adam
        self.report_bootstrap = int(report_bootstrap)
        self._rows: list[dict[str, torch.Tensor]] = []
        #: The last validation epoch's metrics (`val/...`; not the sanity check's), saved in checkpoints.
        self.val_metrics: dict[str, float] = {}
        #: Set by `recolab.train`: saved in checkpoints so `recolab evaluate` can rebuild the run.
        self.run_info: dict[str, Any] = {}

    # -- what a pipeline writes ---------------------------------------------------------------

    @abstractmethod
    def collect(self, batch: Any, *, test: bool) -> dict[str, torch.Tensor]:
        """One evaluation batch -> `{key: (n, ...)}` tensors, gathered from every rank later."""

    @abstractmethod
    def compute(self, split: str, rows: dict[str, torch.Tensor]) -> dict[str, float]:
        """The gathered rows of `split` ("val" or "test") -> the metrics it logs, `split/...`."""

    @abstractmethod
    def logged_metric_names(self, split: str) -> list[str]:
        """The metric names this module logs for `split` ("train", "val" or "test"), as
        `compute` builds them; `recolab.run_checks` checks monitors against them."""

    # -- checkpoints and epochs ---------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Plain strings and tensors only: checkpoints load with torch.load(weights_only=True).
        info = dict(self.run_info)
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None:
            info["data_state"] = datamodule.state_dict()
        # The validation that chose this checkpoint (ModelCheckpoint saves after it): plain floats.
        info["val_metrics"] = dict(self.val_metrics)
        checkpoint["recolab"] = info

    def on_train_epoch_start(self) -> None:
        # Reshuffle the columnar batches (they are not driven by a sampler, see data.columnar).
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(self.current_epoch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return make_optimizer(self.optimizer, self, lr=self.lr, weight_decay=self.weight_decay)

    # -- evaluation: collect per batch, gather, compute, log -----------------------------------

    def reset(self) -> None:
        """Forget the epoch's rows (and anything built for the epoch)."""
        self._rows = []

    def on_validation_epoch_start(self) -> None:
        self.reset()

    def on_test_epoch_start(self) -> None:
        self.reset()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._rows.append(self.collect(batch, test=False))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._rows.append(self.collect(batch, test=True))

    def _evaluate(self, split: str) -> dict[str, float]:
        rows = gather_columns(self._rows, self.device)
        self.reset()
        if not rows:
            return {}
        values = self.compute(split, rows)
        log_gathered(self, values)  # every rank holds the same gathered rows
        return values

    def on_validation_epoch_end(self) -> None:
        found = self._evaluate("val")
        if not self.trainer.sanity_checking:
            self.val_metrics = dict(found)

    def on_test_epoch_end(self) -> None:
        self._evaluate("test")
