"""Checks of a run against the built pipeline module: at its start, and at each training step.

`recolab.config_validation` judges the config alone, before any data is read. Some mistakes show
only once the pipeline module exists (its metric names depend on the data's tasks, `module.ks`,
the index, the heads), and Lightning or `recolab.train.optimized_value` would find them an epoch
later, or after the whole run:

- `check_run`, between `build(...)` and `trainer.fit`: a callback's `monitor`
  (`callbacks.model_checkpoint.monitor`, `callbacks.early_stopping.monitor`, any callback with
  one) that names a metric the run never logs during fitting, and an `optimized_metric` the run
  never logs, both against the names the module declares (`logged_metric_names(split)`); a
  monitor or `optimized_metric` that names a metric of the test epoch (`test/...`, `oracle/...`,
  `baseline_*/...`: `selection_problem`), since validation selects and test is read once per
  selected configuration (DESIGN.md section 6); and a callback's `mode` (or an Optuna sweep's
  `direction`) that would keep the worst epoch of a metric whose better side is known
  (`metric_direction`: `mode=min` on `val/gauc/click`, say);
- `check_finite_loss`, in the modules' `training_step`: a loss that turned NaN or infinite (a
  learning rate too large, say) stops the run at that step, naming the step, the loss, its
  parts and the learning rate, instead of training on and failing in validation's metrics.

Only torch, omegaconf and the standard library are imported at the top: the pipeline modules
import this file.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


#: The logged metrics that are not `recolab.metrics.registry` entries, and their better side.
OTHER_DIRECTIONS = {"loss": "min", "truth_xauc": "max", "truth_xgauc": "max", "index_recall": "max"}
#: Prefixes of the metrics the test epoch logs: none of them may choose anything.
TEST_EPOCH = ("test/", "oracle/", "baseline_")


def metric_direction(name: str) -> str | None:
    """`min` or `max`: which side of the metric `name` (`split/metric[/task]`) is better (the
    registry's `higher_is_better`), or None where recolab does not know
    (`train/samples_per_sec`, `val/retrieved_popularity_at_50`)."""
    parts = str(name).split("/")
    if len(parts) < 2:
        return None
    from recolab.metrics.registry import direction

    metric = re.sub(r"_at_\d+$", "", parts[1]).removesuffix("_raw")
    return OTHER_DIRECTIONS.get(metric) or direction(metric)


def selection_problem(key: str, value: str, val_names: list[str] | None = None) -> str | None:
    """Why `key=value` may not choose anything (a checkpoint, when to stop, a sweep's trial, a
    configuration), or None: `value` is a metric of the test epoch. The message suggests the
    validation metric of the same name (checked against `val_names` when given)."""
    value = str(value)
    if not value.startswith(TEST_EPOCH):
        return None
    split, _, rest = value.partition("/")
    what = {"test": "the test split", "oracle": "the oracle (scored on the test split)"}.get(
        split, "a baseline (scored in the test epoch)"
    )
    suggestion = f"val/{rest}"
    if val_names is not None and suggestion not in val_names:
        close = difflib.get_close_matches(suggestion, val_names, n=1, cutoff=0.0)
        suggestion = close[0] if close else "val/loss"
    return (
        f"{key}={value!r}: a metric of {what}, which must not choose anything: validation selects "
        "(checkpoints, early stopping, sweeps, Optuna, recolab select) and test is read once per "
        "selected configuration, so a choice made on test biases the reported test figures "
        f"upwards (DESIGN.md section 6); expected a val/ metric, e.g. {suggestion!r}"
    )


def _mode_problem(key: str, mode: Any, monitor: str) -> str | None:
    want = metric_direction(monitor)
    if want is None or mode == want:
        return None
    better = "higher" if want == "max" else "lower"
    kept = "lowest" if mode == "min" else "highest"
    return (
        f"{key}={mode!r} with monitor={monitor!r}: this keeps the epoch with the {kept} value, and "
        f"{monitor} is better {better}; expected {key}={want}"
    )


def _names(module: Any, split: str) -> list[str] | None:
    declare = getattr(module, "logged_metric_names", None)
    return list(declare(split)) if callable(declare) else None


def _unknown(key: str, value: str, known: list[str], expected: str) -> str:
    close = difflib.get_close_matches(value, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{key}={value!r}: not a metric this run logs; expected {expected}{hint}"


def check_run(cfg: DictConfig, module: Any) -> None:
    """Raise `ConfigError` if a monitor or `optimized_metric` names a metric the run never logs.

    Called once the module is built (its metric names depend on the data's tasks) and before
    `trainer.fit`. A module without `logged_metric_names` is not checked.
    """
    from recolab.config_validation import ConfigError

    train, val, test = (_names(module, s) for s in ("train", "val", "test"))
    if val is None:
        return
    problems = []
    callbacks = OmegaConf.to_container(cfg.get("callbacks") or {}, resolve=True)
    fitting = (train or []) + val
    for name, node in callbacks.items():
        monitor = node.get("monitor") if isinstance(node, dict) else None
        if monitor is None:
            continue
        if problem := selection_problem(f"callbacks.{name}.monitor", str(monitor), val):
            problems.append(problem)
        elif monitor not in fitting:
            problems.append(
                _unknown(
                    f"callbacks.{name}.monitor",
                    str(monitor),
                    fitting,
                    f"one of the metrics logged while fitting: {', '.join(fitting)}",
                )
            )
        # Lightning's ModelCheckpoint and EarlyStopping both default to mode "min".
        elif problem := _mode_problem(f"callbacks.{name}.mode", node.get("mode", "min"), monitor):
            problems.append(problem)
    metric = cfg.get("optimized_metric")
    if metric:
        if problem := selection_problem("optimized_metric", str(metric), val):
            problems.append(problem)
        elif metric not in val:
            problems.append(
                _unknown(
                    "optimized_metric",
                    str(metric),
                    val,
                    f"one of {', '.join(val)} (a sweep chooses on validation metrics only)",
                )
            )
        elif problem := _direction_problem(str(metric)):
            problems.append(problem)
    if problems:
        raise ConfigError("\n".join(problems))


def _is_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _direction_problem(metric: str) -> str | None:
    """An Optuna sweep (`hydra.sweeper.direction`) that would seek the worse side of `metric`."""
    if not _is_sweep():
        return None
    from hydra.core.hydra_config import HydraConfig

    direction = HydraConfig.get().sweeper.get("direction")
    want = metric_direction(metric)
    if not isinstance(direction, str) or want is None:
        return None
    wanted = "maximize" if want == "max" else "minimize"
    if direction == wanted:
        return None
    return (
        f"hydra.sweeper.direction={direction!r} with optimized_metric={metric!r}: the search "
        f"would seek its {'lowest' if want == 'max' else 'highest'} value, and {metric} is better "
        f"{'higher' if want == 'max' else 'lower'}; expected hydra.sweeper.direction={wanted}"
    )


def check_finite_loss(
    module: Any, loss: torch.Tensor, parts: Mapping[str, torch.Tensor] | None = None
) -> None:
    """Raise `FloatingPointError` when the training loss is NaN or infinite.

    Raised in `training_step`, before that step's backward pass and update: the checkpoints
    saved so far hold the weights of earlier, finite steps, and `recolab.train` marks the run
    FAILED. On the CPU every step is checked; on an accelerator, the steps whose loss is logged
    (every `trainer.log_every_n_steps`), where Lightning reads the loss anyway: a check of every
    step would make the host wait for the device at each one.
    """
    trainer = getattr(module, "_trainer", None)
    if loss.device.type != "cpu":
        connector = getattr(trainer, "_logger_connector", None)
        if connector is not None and not connector.should_update_logs:
            return
    if bool(torch.isfinite(loss.detach()).all()):
        return
    rates = sorted(
        {g["lr"] for opt in (getattr(trainer, "optimizers", None) or []) for g in opt.param_groups}
    )
    lr = ", ".join(f"{r:g}" for r in rates) if rates else f"{getattr(module, 'lr', '?')}"
    step = trainer.global_step if trainer is not None else 0
    epoch = trainer.current_epoch if trainer is not None else 0
    shown = {k: float(v.detach()) for k, v in (parts or {}).items()}
    bad = {k: v for k, v in shown.items() if not math.isfinite(v)}
    where = (
        f"; non-finite part(s): {', '.join(f'{k}={v}' for k, v in bad.items())}"
        if bad
        else (f"; its parts: {', '.join(f'{k}={v:g}' for k, v in shown.items())}" if shown else "")
    )
    raise FloatingPointError(
        f"the training loss is {float(loss.detach())} at step {step} (epoch {epoch}) with "
        f"learning rate {lr} (module.lr){where}. The model diverged; the run stops here, before "
        "this step's update. Expected a finite loss: lower module.lr, or look for extreme "
        "labels or features in the training data"
    )
