"""The one registry of metric names: name -> function, task kind, better side.

A pipeline's metric set is declared by config (`module.metrics` in `configs/module/*.yaml`, which
an experiment may change) as names of this registry; the pipeline computes them through it, its
`logged_metric_names` and its report read the same declared names, and `recolab.run_checks`
reads each metric's better side from here. Adding a metric is one function (in this package)
and one entry below, then its name in a `module.metrics` list.

Kinds:

- `binary` and `regression`: a metric of one task, `compute(E, labels, preds, groups)` with `E`
  an `ExactMetrics` (the device or numpy path); `grouped` metrics need `groups` (the module's
  `group_key` column) and return a `GroupedMetric` (its value is logged, the details go to the
  report's per-user file); the others return a float.
- `retrieval`: a metric of the retrieved lists, `compute(R, k)` with `R` a `RetrievalInputs`;
  `at_k` metrics are logged once per cut-off K of `module.ks` (`recall_at_50`), the others once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recolab.metrics.calibration import ECE_BINS, ece
from recolab.metrics.regression import mae, rmse
from recolab.metrics.retrieval import RetrievalMetrics, mrr, retrieval_details

#: The cut-off of `retrieved_popularity@K` and `index_recall@K` (or max(ks) where that is smaller).
POPULARITY_K = 50


@dataclass(frozen=True)
class Metric:
    """One registered metric.

    Attributes:
        name: the logged name's metric part (`split/<name>[/task]`, `split/<name>_at_K`).
        kind: "binary", "regression" or "retrieval".
        compute: see the module docstring.
        higher_is_better: the better side (None: neither, e.g. a popularity).
        grouped: needs the group column (per-task metrics only).
        at_k: one value per cut-off K (retrieval only).
    """

    name: str
    kind: str
    compute: Callable[..., Any] = field(repr=False)
    higher_is_better: bool | None
    grouped: bool = False
    at_k: bool = False


@dataclass
class RetrievalInputs:
    """What retrieval metrics read: (U, K') retrieved ids, (U, M) targets, (I,) training counts;
    `retrieval_details` computed once per K and shared by recall, NDCG and hit rate."""

    topk: np.ndarray
    targets: np.ndarray
    item_counts: np.ndarray
    _details: dict[int, RetrievalMetrics] = field(default_factory=dict, repr=False)

    def details(self, k: int) -> RetrievalMetrics:
        if k not in self._details:
            self._details[k] = retrieval_details(self.topk, self.targets, k=k)
        return self._details[k]


def retrieved_popularity(topk: np.ndarray, item_counts: np.ndarray) -> float:
    """Mean over users (with a retrieved item) of the mean `log(1 + training count)` of their
    top-P items, P = `topk`'s width; -1 (padding) and 0 ids are not items."""
    valid = topk > 0
    pop = np.where(valid, np.log1p(item_counts[np.clip(topk, 0, None)]), 0.0).sum(1) / np.maximum(
        valid.sum(1), 1
    )
    return float(pop[valid.any(1)].mean()) if valid.any() else float("nan")


def popularity_k(width: int) -> int:
    """The P of `retrieved_popularity_at_P` for lists of `width` items."""
    return min(POPULARITY_K, width)


def _auc(E: Any, y: np.ndarray, p: np.ndarray, groups: Any) -> float:
    return E.auc(y, p) if 0 < y.sum() < len(y) else float("nan")


def _xauc(E: Any, y: np.ndarray, p: np.ndarray, groups: Any) -> float:
    return E.xauc(y, p) if np.ptp(y) > 0 else float("nan")


_METRICS = (
    Metric("auc", "binary", _auc, True),
    Metric("logloss", "binary", lambda E, y, p, g: E.logloss(y, p), False),
    Metric("ece", "binary", lambda E, y, p, g: ece(y, p, num_bins=ECE_BINS), False),
    Metric("gauc", "binary", lambda E, y, p, g: E.gauc_details(y, p, g), True, grouped=True),
    Metric("mae", "regression", lambda E, y, p, g: mae(y, p), False),
    Metric("rmse", "regression", lambda E, y, p, g: rmse(y, p), False),
    Metric("xauc", "regression", _xauc, True),
    Metric("xgauc", "regression", lambda E, y, p, g: E.xgauc_details(y, p, g), True, grouped=True),
    Metric("recall", "retrieval", lambda R, k: R.details(k).recall, True, at_k=True),
    Metric("ndcg", "retrieval", lambda R, k: R.details(k).ndcg, True, at_k=True),
    Metric("hit_rate", "retrieval", lambda R, k: R.details(k).hit_rate, True, at_k=True),
    Metric("mrr", "retrieval", lambda R, k: mrr(R.topk, R.targets), True),
    Metric(
        "retrieved_popularity",
        "retrieval",
        lambda R, k: retrieved_popularity(R.topk[:, :k], R.item_counts),
        None,
    ),
)
#: Every metric by name.
METRICS: dict[str, Metric] = {m.name: m for m in _METRICS}


def names_problem(names: Sequence[str], kind: str) -> str | None:
    """What is wrong with `names` as a declared metric set of `kind` (None: nothing): an unknown
    name or one of another kind, or a name given twice; phrased as what was expected."""
    import difflib

    known = [m.name for m in _METRICS if m.kind == kind]
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            return f"names of {kind} metrics, some of {known} ({name!r} is not one{hint})"
    if len(set(names)) != len(names):
        return f"each {kind} metric named once"
    return None


def metric_names(kind: str) -> Callable[[list[str]], list[str]]:
    """A pydantic after-validator for a constructor's declared metric set of `kind`
    (`Annotated[list[str], AfterValidator(metric_names("binary"))]`)."""

    def check(names: list[str]) -> list[str]:
        if problem := names_problem(names, kind):
            raise ValueError(problem)
        return names

    return check


def metric_set(names: Iterable[str], kind: str, *, key: str) -> tuple[Metric, ...]:
    """The registered metrics `names` of `kind`, in the given order; ValueError naming `key` (the
    config key that declared them) for an unknown name or one of another kind."""
    names = list(names)
    if problem := names_problem(names, kind):
        raise ValueError(f"{key}={names}: expected {problem}")
    return tuple(METRICS[name] for name in names)


def at_k(metric: str, k: int) -> str:
    """The logged name of a metric at cut-off K: `recall_at_50` for recall@50.

    MLflow metric names may not contain `@` (Lightning's MLflow logger silently strips it, so
    `test/recall@50` would be stored as `test/recall50`); `_at_` keeps the names the same in
    Lightning, MLflow, the reports and `recolab compare`.
    """
    return f"{metric}_at_{k}"


def retrieval_names(metrics: Sequence[Metric], ks: Sequence[int], width: int) -> list[str]:
    """The logged names of a retrieval metric set (cut-off major, as computed), lists of `width`."""
    names = [at_k(m.name, k) for k in ks for m in metrics if m.at_k]
    for m in metrics:
        if not m.at_k:
            p = popularity_k(width)
            names.append(at_k(m.name, p) if m.name == "retrieved_popularity" else m.name)
    return names


def retrieval_values(
    metrics: Sequence[Metric], inputs: RetrievalInputs, ks: Sequence[int]
) -> dict[str, float]:
    """`{name: value}` of a retrieval metric set, named as `retrieval_names`."""
    out = {at_k(m.name, k): m.compute(inputs, k) for k in ks for m in metrics if m.at_k}
    p = popularity_k(inputs.topk.shape[1])
    for m in metrics:
        if not m.at_k:
            name = at_k(m.name, p) if m.name == "retrieved_popularity" else m.name
            out[name] = m.compute(inputs, p)
    return out


def direction(metric: str) -> str | None:
    """`max`, `min` or None: the better side of a registered metric name."""
    m = METRICS.get(metric)
    if m is None or m.higher_is_better is None:
        return None
    return "max" if m.higher_is_better else "min"
