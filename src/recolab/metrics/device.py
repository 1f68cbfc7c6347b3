"""The exact ranking metrics computed with torch, where the predictions are (a GPU, say).

`auc`, `gauc_details`, `xauc`, `xgauc_details` and `logloss` of `recolab.metrics`, with the same
definitions, tie policies and weightings (see their docstrings): AUC with average ranks (a tied
positive-negative pair counts one half), GAUC and XGAUC over the groups that hold both classes or
two distinct targets, weighted by rows, XAUC over pairs of different targets with a tied
prediction counting one half. What changes is where the sorting runs: `torch.sort` on the
tensors' device, so predictions gathered on a GPU are ranked there instead of being copied to the
host and sorted by numpy on one core.

Everything that decides the value is an exact int64 count computed on the device: per-group row,
positive and doubled rank sums; tied, discordant and total pair counts. Only those counts (one per
group) come back to the host, where the final divisions and the weighted mean are the numpy
module's own, so the results equal `recolab.metrics`'s bit for bit (logloss, a float sum, agrees
to rounding).

Orders. Values are replaced by dense ranks (`torch.unique(return_inverse=True)`, -0.0 folded
into 0.0 first, so equal values tie exactly as in numpy's sort keys), and lexicographic orders are
stable sorts of combined int64 keys. Discordant pairs are counted as the inversions of a
permutation by its bits, most significant first (`_inversions`): at each bit, the rows sharing the
higher bits form one contiguous block (they hold exactly the ranks of that block, the sequence
being a permutation), a row whose bit is 0 is inverted with each row of its block whose bit is 1
and stands before it (one cumulative sum), and a stable partition by the bit (a scatter to
positions computed from that sum) prepares the next bit. O(N log N) work in `log2 N` passes of
elementwise operations, no Python loop over rows or groups.

`ExactMetrics` chooses per call: these functions when the rows are many (`MIN_ROWS`) and the
tensors' device is a GPU, `recolab.metrics`'s numpy functions otherwise (also whenever torch's
deterministic algorithms are on, `trainer.deterministic=true`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from recolab.metrics import classification as _cls
from recolab.metrics import regression as _reg
from recolab.metrics.classification import WEIGHTS, GroupedMetric, grouped_metric

#: Rows from which `ExactMetrics` computes on the device (below it the numpy functions are as fast).
MIN_ROWS = 1 << 20
#: Whether `ExactMetrics` uses these functions on a CPU device too (numpy is faster there; tests
#: set it to run the torch path through the pipeline on CPU).
ON_CPU = False


# --- inputs -------------------------------------------------------------------------------------


def _tensor(name: str, x: Any, device: torch.device | str | None) -> Tensor:
    """`x` (a tensor or an array-like) as a 1-D real tensor on `device` (its own if None)."""
    if isinstance(x, Tensor):
        t = x.detach()
    else:
        a = np.asarray(x)
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_) or np.iscomplexobj(a):
            raise ValueError(f"{name} must hold real numbers, got dtype {a.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(a))
    if device is not None:
        t = t.to(device)
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if t.is_complex():
        raise ValueError(f"{name} must hold real numbers, got dtype {t.dtype}")
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    if t.is_floating_point() and t.element_size() < 4:
        t = t.float()  # float16 and bfloat16 values are exact in float32, as numpy keys them
    return t


def _same_length(named: dict[str, Tensor]) -> int:
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in named.items())
    if len({v.shape[0] for v in named.values()}) != 1:
        raise ValueError(f"inputs must have the same length, got shapes {shapes}")
    n = next(iter(named.values())).shape[0]
    if n == 0:
        raise ValueError(f"inputs are empty, got shapes {shapes}")
    return n


def _check_finite(name: str, t: Tensor) -> None:
    if t.is_floating_point():
        bad = t.numel() - int(torch.isfinite(t).sum())
        if bad:
            raise ValueError(f"{name} holds {bad} NaN or infinite values (shape {tuple(t.shape)})")


def _binary(name: str, t: Tensor) -> Tensor:
    """0/1 labels as int64; ValueError counting the other values."""
    bad = int(((t != 0) & (t != 1)).sum())
    if bad:
        raise ValueError(f"{name} must be 0 or 1, got {bad} other values (shape {tuple(t.shape)})")
    return t.to(torch.int64)


def _pair(labels: Any, scores: Any, device, names=("labels", "scores")) -> tuple[Tensor, Tensor]:
    y = _tensor(names[0], labels, device)
    s = _tensor(names[1], scores, device if device is not None else y.device)
    if s.device != y.device:
        s = s.to(y.device)
    _same_length({names[0]: y, names[1]: s})
    _check_finite(names[0], y)
    _check_finite(names[1], s)
    return y, s


def _dense_rank(t: Tensor) -> tuple[Tensor, int]:
    """(N,) int64 dense ranks of the values (equal values, -0.0 and 0.0 included, share one) and
    the number of distinct values."""
    if t.is_floating_point():
        t = t + 0.0  # -0.0 + 0.0 is +0.0: both zeros tie, as in numpy's sort keys
    values, inverse = torch.unique(t, sorted=True, return_inverse=True)
    return inverse.reshape(-1).to(torch.int64), int(values.shape[0])


def _groups(groups: Any, n: int, device: torch.device) -> tuple[Tensor, int, np.ndarray]:
    """Dense group ids (in label order), their number, and the labels, for numeric labels."""
    if isinstance(groups, Tensor):
        g = groups.detach().to(device)
    else:
        a = np.asarray(groups)
        if a.dtype.kind not in "biuf":
            raise ValueError(
                f"groups must be numeric for the device metrics, got dtype {a.dtype}: use "
                "recolab.metrics"
            )
        g = torch.from_numpy(np.ascontiguousarray(a)).to(device)
    if g.dim() != 1 or g.shape[0] != n:
        raise ValueError(
            f"groups must be 1-D with one label per row, got shape {tuple(g.shape)}, ({n},) expected"
        )
    if g.dtype == torch.bool:
        g = g.to(torch.uint8)
    _check_finite("groups", g)
    if g.is_floating_point():
        g = g + 0.0
    labels, inverse = torch.unique(g, sorted=True, return_inverse=True)
    return inverse.reshape(-1).to(torch.int64), int(labels.shape[0]), labels.cpu().numpy()


def _argsort(key: Tensor) -> Tensor:
    return torch.sort(key, stable=True).indices


def _run_starts(*sorted_keys: Tensor) -> Tensor:
    """(N,) bool: True where any of the (sorted-order) keys changes, and at row 0."""
    n = sorted_keys[0].shape[0]
    new = torch.zeros(n, dtype=torch.bool, device=sorted_keys[0].device)
    new[0] = True
    for k in sorted_keys:
        new[1:] |= k[1:] != k[:-1]
    return new


def _segment_sum(values: Tensor, segment: Tensor, num: int) -> Tensor:
    """(num,) int64 sums of `values` per segment id."""
    out = torch.zeros(num, dtype=torch.int64, device=values.device)
    return out.index_add_(0, segment, values.to(torch.int64))


def _tied_pairs(new_run: Tensor, group: Tensor | None, num_groups: int) -> Tensor:
    """(G,) sum of C(length, 2) over the runs (`new_run` marks their starts) of each group."""
    starts = torch.nonzero(new_run).reshape(-1)
    n = new_run.shape[0]
    lengths = torch.diff(starts, append=torch.tensor([n], device=starts.device))
    pairs = lengths * (lengths - 1) // 2
    if group is None:
        return pairs.sum().reshape(1)
    return _segment_sum(pairs, group[starts], num_groups)


# --- inversions ---------------------------------------------------------------------------------


def _inversions(v: Tensor, group_of_rank: Tensor | None = None, num_groups: int = 1) -> Tensor:
    """Pairs i < j with v_i > v_j of a permutation `v` of range(N), as (num_groups,) int64.

    With `group_of_rank` ((N,), the group of each value, groups being contiguous ranges of values
    that also sit at the same positions), the count per group; else one total.
    """
    n = v.shape[0]
    device = v.device
    out = torch.zeros(num_groups, dtype=torch.int64, device=device)
    if n < 2:
        return out
    pos = torch.arange(n, device=device)
    v = v.to(torch.int64)
    for b in range(max(1, (n - 1).bit_length()) - 1, -1, -1):
        bit = (v >> b) & 1  # (N,)
        block = (v >> (b + 1)) << (b + 1)  # (N,) first position (and rank) of the row's block
        ones_before = torch.cumsum(bit, 0) - bit  # (N,) ones at earlier positions, any block
        ones_before -= ones_before[block]  # ... within the row's block
        zero = bit == 0
        counted = ones_before[zero]
        if group_of_rank is None:
            out += counted.sum()
        else:
            out.index_add_(0, group_of_rank[v[zero]], counted)
        zeros_in_block = torch.clamp(block + (1 << b), max=n) - block
        zeros_before = pos - block - ones_before
        new_pos = torch.where(zero, block + zeros_before, block + zeros_in_block + ones_before)
        v = torch.empty_like(v).index_put_((new_pos,), v)
    return out


# --- the metrics --------------------------------------------------------------------------------


def _auc_counts(
    y: Tensor, score_rank: Tensor, num_scores: int, gid: Tensor | None, num_groups: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group: rows, positives and doubled positive rank sums (as `classification._auc_parts`)."""
    n = y.shape[0]
    if gid is None:
        order = _argsort(score_rank)
        g_sorted = torch.zeros(n, dtype=torch.int64, device=y.device)
    else:
        order = _argsort(gid * num_scores + score_rank)  # (N,) rows by (group, score)
        g_sorted = gid[order]
    s_sorted = score_rank[order]
    y_sorted = y[order]
    new_run = _run_starts(g_sorted, s_sorted)  # runs of equal (group, score)
    new_group = _run_starts(g_sorted)
    run_start = torch.nonzero(new_run).reshape(-1)  # (R,)
    run_end = torch.cat([run_start[1:], torch.tensor([n], device=y.device)])
    run_id = torch.cumsum(new_run.to(torch.int64), 0) - 1  # (N,)
    group_start = torch.nonzero(new_group).reshape(-1)  # (G,)
    num = int(group_start.shape[0])
    group_id = torch.cumsum(new_group.to(torch.int64), 0) - 1  # (N,)
    # A run [a, b) of a group starting at s: twice its members' 1-based average rank is a + b + 1 - 2s.
    twice_rank = run_start[run_id] + run_end[run_id] + 1 - 2 * group_start[group_id]  # (N,)
    rows = torch.diff(group_start, append=torch.tensor([n], device=y.device))
    positives = _segment_sum(y_sorted, group_id, num)
    twice_rank_sum = _segment_sum(twice_rank * y_sorted, group_id, num)
    return rows.cpu().numpy(), positives.cpu().numpy(), twice_rank_sum.cpu().numpy()


def auc(labels: Any, scores: Any, *, device: torch.device | str | None = None) -> float:
    """`recolab.metrics.auc` (Mann-Whitney, tied pairs one half) on `device` (the tensors' own
    if None). Raises ValueError as `recolab.metrics.auc` does."""
    y, s = _pair(labels, scores, device)
    y = _binary("labels", y)
    rank, num = _dense_rank(s)
    rows, pos, trs = _auc_counts(y, rank, num, None, 1)
    n = int(rows[0])
    if pos[0] == 0 or pos[0] == n:
        raise ValueError(
            f"auc needs both classes, got {int(pos[0])} positives and {n - int(pos[0])} "
            f"negatives (shape ({n},))"
        )
    return float(_cls._auc_from_parts(rows, pos, trs)[0])


def gauc_details(
    labels: Any,
    scores: Any,
    groups: Any,
    *,
    weight: str = "impressions",
    device: torch.device | str | None = None,
) -> GroupedMetric:
    """`recolab.metrics.gauc_details` on `device`: group AUC over the groups holding both
    classes, weighted by `weight`; the same `GroupedMetric`, per-group values included."""
    if weight not in WEIGHTS:
        raise ValueError(f"weight must be one of {WEIGHTS}, got {weight!r}")
    y, s = _pair(labels, scores, device)
    y = _binary("labels", y)
    gid, num_groups, group_labels = _groups(groups, y.shape[0], y.device)
    rank, num = _dense_rank(s)
    rows, positives, trs = _auc_counts(y, rank, num, gid, num_groups)
    usable = (positives > 0) & (positives < rows)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.where(usable, _cls._auc_from_parts(rows, positives, trs), np.nan)
    w = {"impressions": rows, "positives": positives, "uniform": np.ones_like(rows)}[weight]
    return grouped_metric(
        values, usable, w, weight=weight, groups=group_labels, rows=rows, positives=positives
    )


def gauc(
    labels: Any, scores: Any, groups: Any, *, weight: str = "impressions", device=None
) -> float:
    """`recolab.metrics.gauc` on `device` (see `gauc_details`)."""
    return gauc_details(labels, scores, groups, weight=weight, device=device).value


def _xauc_orders(
    rank_t: Tensor, num_t: int, rank_p: Tensor, num_p: int, gid: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Rows by (group, target, pred, row) and by (group, pred, target, row)."""
    seq = _argsort(rank_t * num_p + rank_p)
    by_p = _argsort(rank_p * num_t + rank_t)
    if gid is not None:
        seq = seq[_argsort(gid[seq])]
        by_p = by_p[_argsort(gid[by_p])]
    return seq, by_p


def _xauc_counts(
    t: Tensor, p: Tensor, gid: Tensor | None, num_groups: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per group: rows, pairs with different targets, those of them with tied predictions, and
    the discordant ones."""
    n = t.shape[0]
    rank_t, num_t = _dense_rank(t)
    rank_p, num_p = _dense_rank(p)
    seq, by_p = _xauc_orders(rank_t, num_t, rank_p, num_p, gid)
    g_seq = gid[seq] if gid is not None else None
    g_byp = gid[by_p] if gid is not None else None
    keys_seq = (g_seq,) if gid is not None else ()
    tied_t = _tied_pairs(_run_starts(*keys_seq, rank_t[seq]), g_seq, num_groups)
    tied_p = _tied_pairs(
        _run_starts(*((g_byp,) if gid is not None else ()), rank_p[by_p]), g_byp, num_groups
    )
    tied_tp = _tied_pairs(_run_starts(*keys_seq, rank_t[seq], rank_p[seq]), g_seq, num_groups)
    position = torch.empty_like(by_p)
    position[by_p] = torch.arange(n, device=t.device)  # (N,) row -> its place in by_p
    discordant = _inversions(position[seq], g_byp, num_groups)  # g_byp: the group at each place
    if gid is None:
        rows = torch.tensor([n], device=t.device)
    else:
        rows = torch.bincount(gid, minlength=num_groups)
    pairs = rows * (rows - 1) // 2 - tied_t
    tied = tied_p - tied_tp
    return tuple(x.cpu().numpy() for x in (rows, pairs, tied, discordant))


def xauc(targets: Any, preds: Any, *, device: torch.device | str | None = None) -> float:
    """`recolab.metrics.xauc` (exact) on `device`: over pairs with different targets, the share
    ordered like the targets, tied predictions one half. Raises as `recolab.metrics.xauc`."""
    t, p = _pair(targets, preds, device, ("targets", "preds"))
    n = t.shape[0]
    if n < 2 or bool((t == t[0]).all()):
        raise ValueError(f"xauc needs at least two distinct targets, got shape ({n},)")
    _, pairs, tied, discordant = (int(x[0]) for x in _xauc_counts(t, p, None, 1))
    concordant = pairs - tied - discordant
    return (2 * concordant + tied) / (2 * pairs)


def xgauc_details(
    targets: Any, preds: Any, groups: Any, *, device: torch.device | str | None = None
) -> GroupedMetric:
    """`recolab.metrics.xgauc_details` on `device`: exact XAUC per group, weighted by rows, over
    the groups with two distinct targets or more; the same `GroupedMetric`."""
    t, p = _pair(targets, preds, device, ("targets", "preds"))
    gid, num_groups, group_labels = _groups(groups, t.shape[0], t.device)
    rows, pairs, tied, discordant = _xauc_counts(t, p, gid, num_groups)
    usable = pairs > 0
    concordant = pairs - tied - discordant
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.where(usable, (2 * concordant + tied) / (2.0 * pairs), np.nan)
    return grouped_metric(
        values, usable, rows, weight="impressions", groups=group_labels, rows=rows
    )


def xgauc(targets: Any, preds: Any, groups: Any, *, device=None) -> float:
    """`recolab.metrics.xgauc` on `device` (see `xgauc_details`)."""
    return xgauc_details(targets, preds, groups, device=device).value


def logloss(
    labels: Any, probs: Any, *, eps: float = 1e-7, device: torch.device | str | None = None
) -> float:
    """`recolab.metrics.logloss` on `device`: mean binary cross-entropy, `p` clipped to
    `[eps, 1 - eps]`, in float64 (equal to the numpy value to rounding)."""
    if not 0 < eps < 0.5:
        raise ValueError(f"eps must lie in (0, 0.5), got {eps}")
    y, p = _pair(labels, probs, device, ("labels", "probs"))
    y = _binary("labels", y)
    if bool(((p < 0) | (p > 1)).any()):
        raise ValueError(f"probs must lie in [0, 1] (shape {tuple(p.shape)})")
    p = p.to(torch.float64).clamp(eps, 1.0 - eps)
    return float(-torch.log(torch.where(y == 1, p, 1.0 - p)).mean())


# --- choosing where to compute -------------------------------------------------------------------


def _numeric(groups: Any) -> bool:
    """Whether group labels are numbers (the device path's `torch.unique`); strings stay on numpy."""
    return isinstance(groups, Tensor) or np.asarray(groups).dtype.kind in "biuf"


class ExactMetrics:
    """The exact metrics for predictions held on `device`: the torch functions above on that
    device when `on_device(rows)`, `recolab.metrics`'s numpy functions otherwise.

        E = ExactMetrics(pl_module.device)
        E.auc(labels, scores)   # numpy arrays or tensors alike
    """

    def __init__(self, device: torch.device | str | None) -> None:
        self.device = torch.device(device) if device is not None else None

    def on_device(self, rows: int) -> bool:
        if self.device is None or rows < MIN_ROWS:
            return False
        if torch.are_deterministic_algorithms_enabled():
            # `trainer.deterministic=true`: torch refuses the atomic integer sums used here
            # (their results are exact whatever the order, but torch flags the kernels), so numpy.
            return False
        return self.device.type != "cpu" or ON_CPU

    def auc(self, labels: Any, scores: Any) -> float:
        if self.on_device(len(labels)):
            return auc(labels, scores, device=self.device)
        return _cls.auc(labels, scores)

    def gauc_details(self, labels: Any, scores: Any, groups: Any, **kw: Any) -> GroupedMetric:
        if self.on_device(len(labels)) and _numeric(groups):
            return gauc_details(labels, scores, groups, device=self.device, **kw)
        return _cls.gauc_details(labels, scores, groups, **kw)

    def xauc(self, targets: Any, preds: Any) -> float:
        if self.on_device(len(targets)):
            return xauc(targets, preds, device=self.device)
        return _reg.xauc(targets, preds)

    def xgauc_details(self, targets: Any, preds: Any, groups: Any) -> GroupedMetric:
        if self.on_device(len(targets)) and _numeric(groups):
            return xgauc_details(targets, preds, groups, device=self.device)
        return _reg.xgauc_details(targets, preds, groups)

    def logloss(self, labels: Any, probs: Any, **kw: Any) -> float:
        if self.on_device(len(labels)):
            return logloss(labels, probs, device=self.device, **kw)
        return _cls.logloss(labels, probs, **kw)
