"""What a run prints: a line per validation with its headline metrics, and not the known noise.

`EpochSummary` (a Lightning callback, `configs/callbacks/default.yaml`) prints one line per
validation during fitting: the epoch, the step, the latest training loss, the validation loss and
the validation metrics that match its `metrics` globs (by default every AUC-like one: AUC, GAUC,
XAUC, XGAUC, and the retrieval metrics), grouped by task, read from what the module logged (a
metric added to the module shows up without a change here). It keeps every validation's `val/...`
values (`history`, saved in checkpoints, so a resumed run keeps its earlier epochs): the report's
training curves (`recolab.reports.curves`).

`ModelSummary` is Lightning's model summary without the FLOPs column and total where Lightning
counted none (it counts them only for a module with an `example_input_array`; recolab counts the
training step's FLOPs itself: `train/flops_per_sec`).

`quiet()` (called by `python -m recolab` before the task runs) silences, each by a filter that
matches that message alone, output that says nothing about the run:

- Lightning's tips to install `litlogger` and `litmodels` (INFO records of its rank-zero logger),
  and its note that a model summary callback was given (ours);
- torch's FutureWarning that `isinstance(treespec, LeafSpec)` is deprecated, raised from
  Lightning's own `_pytree` helper;
- Lightning's warning that the module's `transfer_batch_to_device` is used although a data module
  is given: recolab's ranking module defines it on purpose (it keeps CPU batches in place);
- alembic's `setup plugin alembic...` INFO lines (MLflow's and Optuna's SQLite stores import it).

`PlainOptunaLogs` (a Hydra callback, `configs/hydra/default.yaml`) sends Optuna's log lines through
Hydra's logging, as plain text, instead of Optuna's own handler, whose colour codes end up as
escape sequences in every log file and captured output.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import sys
import warnings
from collections.abc import Iterable
from typing import Any

import pytorch_lightning as pl
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelSummary as LightningModelSummary
from pytorch_lightning.callbacks.progress.tqdm_progress import TQDMProgressBar
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.model_summary.model_summary import (
    get_formatted_model_size,
    get_human_readable_count,
)

log = logging.getLogger(__name__)

#: Messages of Lightning's rank-zero logger that `quiet` drops (prefixes, matched exactly).
LIGHTNING_NOISE = (
    "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]",
    "💡 Tip: For seamless cloud uploads and versioning, try installing [litmodels]",
    "Trainer already configured with model summary callbacks: [<class 'recolab.console.",
)

#: Warnings that `quiet` ignores: (message prefix, category).
WARNING_NOISE = (
    ("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning),
    (
        "You have overridden `transfer_batch_to_device` in `LightningModule` but have passed in a"
        " `LightningDataModule`",
        UserWarning,
    ),
)


class _DropPrefixes(logging.Filter):
    def __init__(self, prefixes: Iterable[str]) -> None:
        super().__init__()
        self.prefixes = tuple(prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


_quiet_filter = _DropPrefixes(LIGHTNING_NOISE)


def quiet() -> None:
    """Install the filters listed in the module docstring (once per process)."""
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _quiet_filter not in logger.filters:
            logger.addFilter(_quiet_filter)
    for message, category in WARNING_NOISE:
        warnings.filterwarnings("ignore", message=re.escape(message), category=category)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


class PlainOptunaLogs(HydraCallback):
    """Hydra callback: before a sweep starts, Optuna logs through Hydra's handlers (plain text)
    instead of its own coloured one. Nothing happens for a sweeper other than Optuna's."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        target = str(config.hydra.sweeper.get("_target_", ""))
        if "optuna" not in target.lower():
            return
        import optuna

        optuna.logging.disable_default_handler()
        optuna.logging.enable_propagation()


# ---------------------------------------------------------------------------------------------
# One line per validation


def _split(name: str) -> tuple[str, str]:
    """`val/auc/click` -> (`click`, `auc`); `val/loss` -> (``, `loss`)."""
    parts = name.split("/")
    if len(parts) >= 3:
        return parts[-1], "/".join(parts[1:-1])
    return "", "/".join(parts[1:])


class EpochSummary(pl.Callback):
    """Prints one line per validation while fitting (rank zero) and keeps every validation's
    `val/...` metrics in `history` (saved in checkpoints).

    Args:
        metrics: globs of the `val/...` names to print (besides `val/loss`); a name the module
            does not log is skipped; where none matches, every `val/...` metric but the per-task
            losses is printed.
        digits: decimals shown.
    """

    def __init__(
        self,
        metrics: Iterable[str] = (
            "val/*auc/*",
            "val/recall*",
            "val/ndcg*",
            "val/hit_rate*",
            "val/mrr*",
        ),
        digits: int = 4,
    ) -> None:
        self.metrics = tuple(metrics)
        self.digits = digits
        #: One entry per validation: {"epoch", "step", "metrics": {name: value}}.
        self.history: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(h, metrics=dict(h["metrics"])) for h in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # A resumed run starts from the checkpoint's history; testing the best checkpoint
        # (restored after later epochs ran) keeps those later epochs: the union, by step.
        by_step = {h["step"]: h for h in state_dict.get("history", [])}
        by_step |= {h["step"]: h for h in self.history}
        self.history = [by_step[k] for k in sorted(by_step)]

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After the module's own epoch-end hook (callbacks' `on_validation_epoch_end` run first):
        # its metrics are in `callback_metrics` now.
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        values = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith("val/") and getattr(v, "numel", lambda: 1)() == 1
        }
        if not values:
            return
        entry = {"epoch": trainer.current_epoch, "step": trainer.global_step, "metrics": values}
        self.history = [h for h in self.history if h["step"] != entry["step"]] + [entry]
        train_loss = trainer.callback_metrics.get("train/loss")
        self._print(trainer, self.line(trainer, values, train_loss))

    def chosen(self, values: dict[str, float]) -> list[str]:
        """The names to print, in the order logged: `val/loss`, then those the globs match."""
        picked = [k for k in values if any(fnmatch.fnmatchcase(k, p) for p in self.metrics)]
        if not picked:
            picked = [k for k in values if not k.startswith("val/loss")]
        return (["val/loss"] if "val/loss" in values else []) + [
            k for k in picked if k != "val/loss"
        ]

    def line(self, trainer: pl.Trainer, values: dict[str, float], train_loss: Any = None) -> str:
        d = self.digits
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        head = f"epoch {trainer.current_epoch + 1}" + (f"/{epochs}" if epochs else "")
        parts = [f"{head} step {trainer.global_step}"]
        if train_loss is not None:
            parts.append(f"train loss {float(train_loss):.{d}f}")
        by_task: dict[str, list[str]] = {}
        for name in self.chosen(values):
            task, metric = _split(name)
            by_task.setdefault(task, []).append(f"{metric} {values[name]:.{d}f}")
        if "" in by_task:
            parts.append("val " + " ".join(by_task.pop("")))
        parts += [f"{task}: " + " ".join(items) for task, items in by_task.items()]
        return " | ".join(parts)

    @staticmethod
    @rank_zero_only
    def _print(trainer: pl.Trainer, text: str) -> None:
        bar = trainer.progress_bar_callback
        if isinstance(bar, TQDMProgressBar) and bar.is_enabled:
            bar.print(text)  # above the bars, not through them
        else:
            print(text, file=sys.stdout, flush=True)


def history_of(trainer: pl.Trainer | None) -> list[dict[str, Any]]:
    """The `EpochSummary` history of a trainer's run (empty without that callback)."""
    for callback in getattr(trainer, "callbacks", None) or []:
        if isinstance(callback, EpochSummary):
            return list(callback.history)
    return []


# ---------------------------------------------------------------------------------------------
# The model summary


class ModelSummary(LightningModelSummary):
    """Lightning's text model summary, without the FLOPs column and total where none were counted."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int = 0,
        **summarize_kwargs: Any,
    ) -> None:
        columns = [
            (name.strip(), [str(v) for v in values])
            for name, values in summary_data
            if not (name == "FLOPs" and not total_flops)
        ]
        widths = [max([len(name), *map(len, values)]) for name, values in columns]
        rows = [" | ".join(name.ljust(w) for (name, _), w in zip(columns, widths))]
        rows.append("-" * len(rows[0]))
        for i in range(len(columns[0][1]) if columns else 0):
            rows.append(" | ".join(vals[i].ljust(w) for (_, vals), w in zip(columns, widths)))
        rows.append("-" * len(rows[0]))
        totals = [
            ("Trainable params", get_human_readable_count(int(trainable_parameters))),
            (
                "Non-trainable params",
                get_human_readable_count(int(total_parameters - trainable_parameters)),
            ),
            ("Total params", get_human_readable_count(int(total_parameters))),
            ("Total estimated model params size (MB)", get_formatted_model_size(model_size)),
            ("Modules in train mode", str(total_training_modes.get("train", 0))),
            ("Modules in eval mode", str(total_training_modes.get("eval", 0))),
        ]
        if total_flops:
            totals.append(("Total FLOPs", get_human_readable_count(int(total_flops))))
        rows += [f"{value:<10} {name}" for name, value in totals]
        log.info("model summary:\n%s", "\n".join(rows))


def report_curves(trainer: pl.Trainer | None, report_dir: Any) -> list:
    """The run's training curves in its report (`recolab.reports.curves`): the validation loss and
    the metrics the console line shows, per epoch, the tested checkpoint's epoch marked."""
    summary = next(
        (c for c in getattr(trainer, "callbacks", None) or [] if isinstance(c, EpochSummary)), None
    )
    if summary is None or not summary.history:
        return []
    from recolab.reports.curves import append_training_curves

    logged: dict[str, float] = {}
    for h in summary.history:
        logged |= h["metrics"]
    best_epoch = None
    callback = getattr(trainer, "checkpoint_callback", None)
    score = getattr(callback, "best_model_score", None)
    if score is not None and getattr(callback, "monitor", None):
        for h in summary.history:
            value = h["metrics"].get(callback.monitor)
            if value is not None and abs(value - float(score)) <= 1e-9 * max(1.0, abs(value)):
                best_epoch = h["epoch"] + 1
    return append_training_curves(
        report_dir, summary.history, summary.chosen(logged), best_epoch=best_epoch
    )
