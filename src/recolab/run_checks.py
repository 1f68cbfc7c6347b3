"""Checks of a run against the built pipeline module: at its start, and at each training step.

`recolab.config_validation` judges the config alone, before any data is read. Some mistakes show
only once the pipeline module exists (its metric names depend on the data's tasks, `module.ks`,
the index, the heads), and Lightning or `recolab.train.optimized_value` would find them an epoch
later, or after the whole run:

- `check_run`, between `build(...)` and `trainer.fit`: a callback's `monitor`
  (`callbacks.model_checkpoint.monitor`, `callbacks.early_stopping.monitor`, any callback with
  one) that names a metric the run never logs during fitting, and an `optimized_metric` the run
  never logs, both against the names the module declares (`logged_metric_names(split)`);
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
from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


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
        if monitor is not None and monitor not in fitting:
            problems.append(
                _unknown(
                    f"callbacks.{name}.monitor",
                    str(monitor),
                    fitting,
                    f"one of the metrics logged while fitting: {', '.join(fitting)}",
                )
            )
    metric = cfg.get("optimized_metric")
    if metric:
        logged = val + (test or [])
        if metric not in logged:
            tested = [m for m in test or [] if m.startswith("test/")]
            problems.append(
                _unknown(
                    "optimized_metric",
                    str(metric),
                    logged,
                    f"one of {', '.join(val)} (a sweep should optimize these), or {', '.join(tested)}",
                )
            )
        elif str(metric).startswith("test/") and _is_sweep():
            log.warning(
                "optimized_metric=%r: this sweep chooses its hyperparameters on the test split; "
                "optimize a val/ metric to keep the test split out of the choice",
                metric,
            )
    if problems:
        raise ConfigError("\n".join(problems))


def _is_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


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
