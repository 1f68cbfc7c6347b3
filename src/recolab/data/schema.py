"""Feature specs: what a data set holds and how models read it.

A `Schema` is the contract between a data module and a model. Models take the schema (never a
data set or a config bag) and read only the columns it lists as features; ground-truth and
bookkeeping columns travel in `Batch.meta`, out of every model's reach.

Batches are plain dicts of tensors, sliced column-wise (see `recolab.data.columnar`):

- `features[name]`: sparse ids (B,) int64 with 0 as the out-of-vocabulary bucket, dense values
  (B,) float32, or id sequences (B, L) int64 left-padded with 0;
- `labels[task]`: (B,) float32;
- `meta[name]`: (B,) columns for evaluation only (`user_id` for GAUC, `position`, `duration`,
  `gt_*` truth).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import ConfigDict
from pydantic.dataclasses import dataclass as pydantic_dataclass

from recolab.params import NonNegative

TaskKind = Literal["binary", "regression"]
Transform = Literal["none", "log1p"]

#: Special column names (DESIGN.md section 2).
USER_ID = "user_id"
ITEM_ID = "item_id"
POSITION = "position"
DURATION = "duration"
TIMESTAMP = "timestamp"


@dataclass(frozen=True)
class SparseFeature:
    """A categorical id. Index 0 is the out-of-vocabulary bucket, so ids run 1..vocab_size-1."""

    name: str
    vocab_size: int

    def __post_init__(self) -> None:
        if self.vocab_size < 2:
            raise ValueError(
                f"sparse feature {self.name!r}: vocab_size must be >= 2, got {self.vocab_size}"
            )


@dataclass(frozen=True)
class DenseFeature:
    """A real value, standardized with the training split's mean and std by the data module."""

    name: str


@dataclass(frozen=True)
class SequenceFeature:
    """A variable-length id sequence, truncated to the last `max_len`, left-padded with 0.

    `vocab_of` names the sparse feature whose vocabulary (and embedding table) it shares, e.g. a
    history of `item_id`s.
    """

    name: str
    vocab_size: int
    max_len: int
    vocab_of: str | None = None


Feature = SparseFeature | DenseFeature | SequenceFeature


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class Task:
    """One prediction target.

    Attributes:
        name: the label column and the task's key in logits and metric names.
        kind: `binary` (logit, BCE) or `regression` (MSE on `transform(label)`).
        weight: the task's weight in the summed training loss, >= 0.
        transform: for regression, the label transform the model is trained on; predictions are
            mapped back through its inverse before any metric.
    """

    name: str
    kind: TaskKind = "binary"
    weight: NonNegative = 1.0
    transform: Transform = "none"


@dataclass(frozen=True)
class Schema:
    """Features a model may read, the tasks it predicts, and the evaluation-only columns."""

    sparse: tuple[SparseFeature, ...] = ()
    dense: tuple[DenseFeature, ...] = ()
    sequences: tuple[SequenceFeature, ...] = ()
    tasks: tuple[Task, ...] = ()
    meta: tuple[str, ...] = ()
    #: task name -> meta column holding the true probability / expectation (synthetic data only).
    oracle: dict[str, str] = field(default_factory=dict)
    #: Roles: the features that describe the user (a recaller's user tower reads them) and the
    #: item (its item tower); `user_id` and `item_id` first where the data has them. Features in
    #: neither are context (e.g. the hour, the position).
    user: tuple[str, ...] = ()
    item: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = self.feature_names
        for role in ("user", "item"):
            unknown = [n for n in getattr(self, role) if n not in names]
            if unknown:
                raise ValueError(f"schema {role} role names {unknown}, which are not features")
        if both := set(self.user) & set(self.item):
            raise ValueError(f"features {sorted(both)} have both the user and the item role")

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in (*self.sparse, *self.dense, *self.sequences)]

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def features_of(self, role: Literal["user", "item"]) -> tuple[Feature, ...]:
        """The specs of the features with `role`, in the role's order."""
        specs = {f.name: f for f in (*self.sparse, *self.dense, *self.sequences)}
        return tuple(specs[n] for n in getattr(self, role))

    def sparse_by_name(self, name: str) -> SparseFeature:
        for f in self.sparse:
            if f.name == name:
                return f
        raise KeyError(f"no sparse feature {name!r}; have {[f.name for f in self.sparse]}")

    def task(self, name: str) -> Task:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"no task {name!r}; have {self.task_names}")
