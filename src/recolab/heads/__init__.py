"""Heads: a task's training objective and serving rule, composed with any ranker by config.

A ranker maps features to one output per task (`recolab.models.rank`). A head, set per task
(`module.heads: {task: head}`, config group `head/`), decides how that output is trained and
served, reading what it needs from the batch's `meta` columns, which the ranker never sees:

- position bias (`recolab.heads.position`): PAL and the shallow tower learn the display
  position's effect in training and leave it out at serving;
- duration bias (`recolab.heads.duration`): D2Q and Res-D2Q train on the watch time's quantile
  within its duration group; the regression baselines on watch time, log watch time and ratio.

Contract (`Head`):

    head.bind(task, meta_columns)       # once, at construction of the pipeline
    head.fit(label, meta)               # once, on the training split (e.g. D2Q's quantiles)
    head.loss(output, label, meta)      # scalar, for training and validation
    head.predict(output, meta)          # (B,), served: a probability or the label's scale
    head.debiased(output, meta)         # (B,), the score with the modelled bias removed
    head.summary()                      # plain numbers for the report (e.g. a learned curve)

Everything a head learns or fits is a parameter or a buffer, so it is saved in, and restored
from, the model's checkpoint. A head replaces its task's own loss and prediction (the task's
`transform` is not used).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from recolab.data.schema import Task

Meta = dict[str, torch.Tensor]


class Head(nn.Module, ABC):
    """The base class (see the module docstring). Subclasses set `kinds` and `required_meta`."""

    #: task kinds the head applies to
    kinds: tuple[str, ...] = ("binary", "regression")

    def __init__(self) -> None:
        super().__init__()
        self.task: Task | None = None

    def required_meta(self) -> list[str]:
        """Meta columns the head reads."""
        return []

    def bind(self, task: Task, meta_columns: tuple[str, ...] | list[str]) -> None:
        """Attach to `task`; fail early if the task's kind or the data's meta columns do not fit."""
        where = f"module.heads.{task.name} ({type(self).__name__})"
        if task.kind not in self.kinds:
            raise ValueError(
                f"{where}: applies to {'/'.join(self.kinds)} tasks; task {task.name!r} is {task.kind}"
            )
        missing = [c for c in self.required_meta() if c not in meta_columns]
        if missing:
            raise ValueError(
                f"{where}: needs meta column(s) {missing}; data.meta lists {list(meta_columns)}"
            )
        self.task = task

    @property
    def where(self) -> str:
        name = self.task.name if self.task is not None else "?"
        return f"module.heads.{name} ({type(self).__name__})"

    def fit(self, label: torch.Tensor, meta: Meta) -> None:
        """Fit anything the head estimates from the training split: (N,) labels, (N,) meta columns."""

    @abstractmethod
    def loss(self, output: torch.Tensor, label: torch.Tensor, meta: Meta) -> torch.Tensor:
        """Scalar training and validation loss of the task's (B,) output."""

    @abstractmethod
    def predict(self, output: torch.Tensor, meta: Meta) -> torch.Tensor:
        """(B,) served values: a probability or the label's scale."""

    def debiased(self, output: torch.Tensor, meta: Meta) -> torch.Tensor:
        """The score the head considers free of the bias it models; the served prediction by default."""
        return self.predict(output, meta)

    def summary(self) -> dict[str, Any]:
        return {}


def meta_column(meta: Meta, name: str, where: str) -> torch.Tensor:
    """`meta[name]`, or a KeyError naming the head and the columns present."""
    if name not in meta:
        raise KeyError(
            f"{where}: the batch has no meta column {name!r} (has {sorted(meta)}); list it in data.meta"
        )
    return meta[name]
