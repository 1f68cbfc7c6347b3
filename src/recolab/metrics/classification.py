"""Binary-label metrics: AUC, GAUC (Zhou et al., DIN, KDD 2018) and logloss.

AUC is the Mann-Whitney statistic with average ranks, so a tied (positive, negative) pair counts
one half. GAUC computes that AUC inside every group from one ordering of the rows by (group,
score), made like a two-key lexsort (sort by score, then a stable sort by group; each a packed
`np.sort`, see `_checks.stable_argsort`), and per-group sums of positive ranks (cumulative sums,
`np.add.reduceat`); ties get their average rank from the runs of equal (group, score). There is
no loop over groups. Rank sums are kept doubled so that every count is an exact int64 until the
final division.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recolab.metrics import _checks as C

WEIGHTS = ("impressions", "positives", "uniform")


@dataclass(frozen=True, eq=False)
class PerGroup:
    """Each group's own value and weight: the numbers a grouped metric is the weighted mean of.

    `value == sum(weights * values) / sum(weights)` over the groups where `values` is not nan,
    computed from these very arrays, so per-group results written out (a report's per-user
    file) average back to the metric exactly.

    Attributes:
        groups: (G,) the distinct group labels, in sorted order.
        rows: (G,) int64 rows per group.
        positives: (G,) int64 positive rows per group (binary labels), or None.
        values: (G,) float64 the group's metric; nan where the group is left out.
        weights: (G,) float64 the group's weight in the mean; 0 where left out.
    """

    groups: np.ndarray
    rows: np.ndarray
    positives: np.ndarray | None
    values: np.ndarray
    weights: np.ndarray


@dataclass(frozen=True)
class GroupedMetric:
    """A metric averaged over groups, with the groups it had to leave out.

    Attributes:
        value: the weighted mean over usable groups; nan if no group is usable.
        weight: how groups were weighted (`impressions`, `positives` or `uniform`).
        num_groups: distinct groups in the input.
        num_groups_used: groups that entered the mean.
        num_groups_left_out: groups left out (a single class, or a single distinct target).
        rows_left_out: rows in the groups left out.
        per_group: every group's value and weight (`PerGroup`); not part of equality.
    """

    value: float
    weight: str
    num_groups: int
    num_groups_used: int
    num_groups_left_out: int
    rows_left_out: int
    per_group: PerGroup | None = field(default=None, compare=False, repr=False)


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    """`sum(w v) / sum(w)` over the entries with w > 0; nan if there are none."""
    used = weights > 0
    w = weights[used]
    return float(np.dot(w, values[used]) / w.sum()) if w.size else float("nan")


def grouped_metric(
    values: np.ndarray,
    usable: np.ndarray,
    weights: np.ndarray,
    *,
    weight: str,
    groups: np.ndarray,
    rows: np.ndarray,
    positives: np.ndarray | None = None,
) -> GroupedMetric:
    """The `GroupedMetric` of per-group `values` (G,) (nan where not `usable`), each usable group
    weighing `weights` (G,) (`weight` names them), with the groups' labels, rows and positives:
    the one assembly of GAUC, XGAUC and their device twins (`recolab.metrics.device`)."""
    w = np.where(usable, weights, 0).astype(np.float64)  # (G,)
    used = int(np.count_nonzero(usable))
    return GroupedMetric(
        value=weighted_mean(values, w),
        weight=weight,
        num_groups=int(rows.shape[0]),
        num_groups_used=used,
        num_groups_left_out=int(rows.shape[0]) - used,
        rows_left_out=int(rows[~usable].sum()),
        per_group=PerGroup(groups=groups, rows=rows, positives=positives, values=values, weights=w),
    )


def _check_inputs(
    labels: Any, scores: Any, score_name: str = "scores"
) -> tuple[np.ndarray, np.ndarray]:
    y, s = C.finite_pair(("labels", score_name), labels, scores)
    return C.check_binary("labels", y), s


def _auc_parts(
    y: np.ndarray, new_group: np.ndarray, new_run: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group rows, positives and doubled positive rank sums from rows sorted by (group, score).

    Args:
        y: (N,) int8 labels in (group, score) order.
        new_group: (N,) bool, True where a group starts.
        new_run: (N,) bool, True where a run of equal (group, score) starts; None if no score
            repeats within a group.

    Returns:
        rows, positives, twice_rank_sum: (G,) int64 each; `twice_rank_sum` is twice the sum, over
        the group's positives, of their 1-based average rank within the group.
    """
    n = y.shape[0]
    group_start = np.flatnonzero(new_group)  # (G,)
    rows = np.diff(group_start, append=n)  # (G,)
    positives = np.add.reduceat(y, group_start, dtype=np.int64)  # (G,)
    # Untied, the row at sorted position k has doubled rank 2 (k - start + 1): sum 2k + 1 over
    # positives, then subtract 2 start - 1 per positive.
    pos_rows = np.flatnonzero(y)  # (P,)
    twice_rank_sum = _segment_sums(pos_rows, 2 * pos_rows + 1, group_start, n)
    twice_rank_sum -= positives * (2 * group_start - 1)
    if new_run is not None and not new_run.all():
        # A tied run [a, b) replaces each member's 2k + 1 by a + b (twice its average rank).
        in_tie = ~new_run
        in_tie[:-1] |= ~new_run[1:]
        tied = np.flatnonzero(in_tie & (y == 1))  # (T,) positives in tied runs
        starts = np.flatnonzero(new_run)  # (R,)
        at = np.searchsorted(starts, tied, side="right") - 1  # (T,)
        a, b = starts[at], np.append(starts, n)[at + 1]
        twice_rank_sum += _segment_sums(tied, a + b - 2 * tied - 1, group_start, n)
    return rows, positives, twice_rank_sum


def _segment_sums(
    positions: np.ndarray, values: np.ndarray, group_start: np.ndarray, n: int
) -> np.ndarray:
    """Exact int64 sums of `values` over the sorted `positions` that fall in each group."""
    cumulative = np.concatenate([[0], np.cumsum(values, dtype=np.int64)])
    bounds = np.searchsorted(positions, np.append(group_start, n))
    return cumulative[bounds[1:]] - cumulative[bounds[:-1]]


def _auc_from_parts(rows: np.ndarray, pos: np.ndarray, twice_rank_sum: np.ndarray) -> np.ndarray:
    neg = rows - pos
    with np.errstate(divide="ignore", invalid="ignore"):
        return (twice_rank_sum - pos * (pos + 1)) / (2.0 * pos * neg)


def auc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve: the Mann-Whitney statistic.

    The share of (positive, negative) pairs in which the positive scores higher; a pair with tied
    scores counts one half (average ranks). Every row weighs the same. Exact: rank sums are int64.

    Args:
        labels: (N,) 0/1 labels (bool, int or float).
        scores: (N,) real scores; only their order matters.

    Returns:
        The AUC in [0, 1].

    Raises:
        ValueError: on mismatched or non-1-D shapes, empty input, NaN or inf, labels other than
            0/1, or labels holding one class only.
    """
    y, s = _check_inputs(labels, scores)
    n = y.shape[0]
    order, new_run = C.stable_argsort(*C.sort_keys(s))
    new_group = np.zeros(n, dtype=bool)
    new_group[0] = True
    rows, pos, trs = _auc_parts(y[order], new_group, new_run)
    if pos[0] == 0 or pos[0] == n:
        raise ValueError(
            f"auc needs both classes, got {int(pos[0])} positives and {n - int(pos[0])} "
            f"negatives (shape {y.shape})"
        )
    return float(_auc_from_parts(rows, pos, trs)[0])


def gauc_details(
    labels: Any, scores: Any, groups: Any, *, weight: str = "impressions"
) -> GroupedMetric:
    """Group AUC (Zhou et al., DIN, KDD 2018) with the groups it left out.

    `sum_u w_u AUC_u / sum_u w_u` over groups `u` (users, usually) whose labels hold both classes.
    `AUC_u` is `auc` within the group (tied scores count one half). Groups with one class, single
    rows included, are left out and counted. One stable sort by (group, score), then per-run and
    per-group sums: no loop over groups.

    Args:
        labels: (N,) 0/1 labels.
        scores: (N,) real scores.
        groups: (N,) group labels: ints, or anything `np.unique` sorts.
        weight: `w_u`: "impressions" (the group's rows, the default), "positives" (its positive
            rows) or "uniform" (1).

    Returns:
        A GroupedMetric; its value is nan when no group holds both classes.

    Raises:
        ValueError: on mismatched or non-1-D shapes, empty input, NaN or inf, labels other than
            0/1, or an unknown weight.
    """
    if weight not in WEIGHTS:
        raise ValueError(f"weight must be one of {WEIGHTS}, got {weight!r}")
    y, s = _check_inputs(labels, scores)
    n = y.shape[0]
    gkey, gbits = C.group_keys("groups", groups, n)  # (N,) order-preserving group keys

    order, new_score = C.stable_argsort(*C.sort_keys(s))  # rows by score
    # Stable re-sort of the score order by group: rows by (group, score).
    pos, new_group = C.stable_argsort(gkey[order], gbits)
    if new_score.all():  # no tied scores
        y_sorted, new_run = y[order][pos], None
    else:
        rank_and_label = (np.cumsum(new_score) << 1) | y[order]  # (N,) dense score rank, label
        rank_and_label = rank_and_label[pos]
        y_sorted = (rank_and_label & 1).astype(np.int8)
        new_run = new_group.copy()
        new_run[1:] |= (rank_and_label[1:] >> 1) != (rank_and_label[:-1] >> 1)

    rows, positives, trs = _auc_parts(y_sorted, new_group, new_run)
    usable = (positives > 0) & (positives < rows)
    values = np.where(usable, _auc_from_parts(rows, positives, trs), np.nan)  # (G,)
    w = {"impressions": rows, "positives": positives, "uniform": np.ones_like(rows)}[weight]
    first_row = order[pos[np.flatnonzero(new_group)]]  # (G,) a row of each group
    return grouped_metric(
        values,
        usable,
        w,
        weight=weight,
        groups=C.to_numpy(groups)[first_row],
        rows=rows,
        positives=positives,
    )


def gauc(labels: Any, scores: Any, groups: Any, *, weight: str = "impressions") -> float:
    """Group AUC (Zhou et al., DIN, KDD 2018): `sum_u w_u AUC_u / sum_u w_u`.

    Over groups holding both classes; `AUC_u` counts a tied (positive, negative) pair one half.
    The groups left out are reported by `gauc_details`, which this returns the value of.

    Args:
        labels: (N,) 0/1 labels.
        scores: (N,) real scores.
        groups: (N,) group labels: ints, or anything `np.unique` sorts.
        weight: "impressions" (rows, the default), "positives" or "uniform".

    Returns:
        The GAUC, or nan if no group holds both classes.

    Raises:
        ValueError: as `gauc_details`.
    """
    return gauc_details(labels, scores, groups, weight=weight).value


def logloss(labels: Any, probs: Any, *, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy, every row weighing the same.

    `-mean(y log p + (1 - y) log(1 - p))` with `p` clipped to `[eps, 1 - eps]`.

    Args:
        labels: (N,) 0/1 labels.
        probs: (N,) predicted probabilities in [0, 1].
        eps: clipping bound, in (0, 0.5).

    Returns:
        The mean logloss in nats.

    Raises:
        ValueError: on mismatched or non-1-D shapes, empty input, NaN or inf, labels other than
            0/1, probabilities outside [0, 1], or eps outside (0, 0.5).
    """
    if not 0 < eps < 0.5:
        raise ValueError(f"eps must lie in (0, 0.5), got {eps}")
    y, p = _check_inputs(labels, probs, "probs")
    C.check_unit_interval("probs", p)
    p = np.clip(p.astype(np.float64), eps, 1.0 - eps)
    return float(-np.mean(np.log(np.where(y == 1, p, 1.0 - p))))
