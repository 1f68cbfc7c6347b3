"""Metrics for real-valued targets: XAUC and XGAUC (Zhan et al., D2Q, KDD 2022), MAE and RMSE.

XAUC is the share of row pairs with different targets whose predictions are ordered the same
way, a tied prediction counting one half. Exact XAUC is a count of discordant pairs, which is the
number of inversions of the prediction ranks once rows are sorted by target. We count them with
a binary wavelet decomposition in numpy: rows of the sequence stay grouped by the high bits of
their rank, and at each bit a row's inversions are `sum(positions of its zeros) - C(h, 2)`, so a
level costs a bit test, two `np.compress` calls and a column count, O(N) each; the last six
levels are a vectorised brute force over blocks of 64. That is O(N log N), exact in int64.
Ties need the rows in (target, pred) and (pred, target) order; float32 predictions tie a few
rows in a hundred, so only the tied runs are re-sorted, not every row (about 2.6x one argsort on
float32 as on float64, where it was 4.6x; experiments/bench/metrics.md).
XGAUC runs the same machinery with each group in its own power-of-two block of ranks.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from recolab.metrics import _checks as C
from recolab.metrics.classification import GroupedMetric, grouped_metric

_BRUTE_WIDTH = 64  # rows this wide or narrower are counted pair by pair
_CHUNK = 1 << 20  # sampled pairs drawn per batch (fixes the random stream for a seed)
_LITTLE = sys.byteorder == "little"
# XAUC re-sorts every row, not only the tied ones, when more than 1 row in this many is tied.
_HEAVY_TIES = 4


def _check_inputs(targets: Any, preds: Any) -> tuple[np.ndarray, np.ndarray]:
    return C.finite_pair(("targets", "preds"), targets, preds)


# --- inversion counting -------------------------------------------------------------------------


def _bit(a: np.ndarray, h: int) -> np.ndarray:
    """(a & h) != 0 for a power of two h, as a bool array; reads one byte per element."""
    b = h.bit_length() - 1
    if a.dtype.itemsize == 1 or not _LITTLE:
        x, b = (a, b) if a.dtype.itemsize == 1 else (a >> b, 0)
    else:
        x = a.view(np.uint8)[b // 8 :: a.dtype.itemsize]
        b %= 8
    return ((x >> b) & 1).astype(np.uint8, copy=False).view(np.bool_)


def _narrow(buf: np.ndarray, width: int) -> np.ndarray:
    """Keep only the low bits rows of `width` still need, in the smallest unsigned dtype."""
    if width <= 1 << 8 and buf.dtype.itemsize > 1:
        return (buf & 0xFF).astype(np.uint8)
    if width <= 1 << 16 and buf.dtype.itemsize > 2:
        return (buf & 0xFFFF).astype(np.uint16)
    return buf


def _pair_inversions(x: np.ndarray) -> int:
    """Inversions of a short 1-D array by comparing all pairs."""
    return int(np.count_nonzero(np.triu(x[:, None] > x[None, :], 1)))


def _inversions(
    v: np.ndarray,
    width: int,
    block_offsets: np.ndarray | None = None,
    brute_width: int = _BRUTE_WIDTH,
) -> int | np.ndarray:
    """Inversions (i < j, v_i > v_j) of a permutation `v` of range(N).

    The sequence is cut into rows of `width` (a power of two, the last row may be short); row r
    must hold exactly the ranks of an aligned range, as it does for the whole permutation when
    `width >= N`. Each level splits every row by one bit of the rank, keeping order, counts the
    (one, zero) pairs that the split undoes, and halves the width.

    With `block_offsets` (ascending starts of power-of-two blocks of ranks, widest first, each
    sitting at its own positions), the count is returned per block: a pair is inverted only
    inside a block, and every row that counts something lies inside one block (blocks narrower
    than a row sit in one half of it); `brute_width` must then be at most the narrowest block.
    """
    buf = v
    n = buf.shape[0]
    rows, tail = divmod(n, width)
    track = block_offsets is not None
    starts = np.arange(rows, dtype=np.int64) * width  # (R,) first rank of each full row
    tail_start = rows * width
    total = 0
    per_block = np.zeros(len(block_offsets) if track else 0, dtype=np.int64)

    def attribute(counts: np.ndarray, first: np.ndarray) -> None:
        nz = np.flatnonzero(counts)
        block = np.searchsorted(block_offsets, first[nz], side="right") - 1
        np.add.at(per_block, block, counts[nz])

    out = np.empty_like(buf)
    while width > brute_width:
        h = width >> 1
        narrowed = _narrow(buf, width)
        if narrowed is not buf:
            buf, out = narrowed, np.empty_like(narrowed)
        full, rest = buf[: rows * width], buf[rows * width :]
        if rows:
            ones = _bit(full, h)  # (R * W,)
            # A row's zeros sit at z_0 < z_1 < ...; zero k has z_k - k ones before it, so the row
            # holds sum(z) - C(h, 2) inverted (one, zero) pairs, and sum(z) = C(W, 2) - sum(ones).
            base = width * (width - 1) // 2 - h * (h - 1) // 2
            if track or rows < 64:
                at_one = np.flatnonzero(ones).reshape(rows, h)  # (R, h): every row has h ones
                at_one &= width - 1
                row_counts = base - at_one.sum(axis=1)  # (R,)
                total += int(row_counts.sum())
                if track:
                    attribute(row_counts, starts)
            else:
                ones_per_col = np.count_nonzero(ones.reshape(rows, width), axis=0)  # (W,)
                total += rows * base - int(ones_per_col @ np.arange(width, dtype=np.int64))
            np.compress(~ones, full, out=out[: rows * h])
            at = rows * h + (h if tail > h else 0)
            np.compress(ones, full, out=out[at : at + rows * h])
        if tail > h:
            t_ones = _bit(rest, h)
            count = tail * (tail - 1) // 2 - int(np.flatnonzero(t_ones).sum()) - h * (h - 1) // 2
            total += count
            if track and count:
                attribute(np.array([count]), np.array([tail_start]))
            np.compress(~t_ones, rest, out=out[rows * h : rows * h + h])
            np.compress(t_ones, rest, out=out[2 * rows * h + h :])
            if track:
                starts = np.concatenate([starts, [tail_start], starts + h])
            rows, tail, tail_start = 2 * rows + 1, tail - h, tail_start + h
        else:
            out[2 * rows * h :] = rest
            if track:
                parts = [starts, starts + h] + ([[tail_start]] if tail == h else [])
                starts = np.concatenate(parts)
            rows, tail = (2 * rows + 1, 0) if tail == h else (2 * rows, tail)
        buf, out, width = out, (buf if buf is not v else np.empty_like(buf)), h  # keep v intact

    buf = _narrow(buf, width)
    if rows:
        cols_t = np.ascontiguousarray(buf[: rows * width].reshape(rows, width).T)  # (W, R)
        if track:
            row_counts = np.zeros(rows, dtype=np.uint16)  # at most C(64, 2) per row
            for j in range(1, width):
                row_counts += (cols_t[:j] > cols_t[j]).sum(axis=0, dtype=np.uint16)
            row_counts = row_counts.astype(np.int64)
            attribute(row_counts, starts)
            total += int(row_counts.sum())
        else:
            total += sum(int(np.count_nonzero(cols_t[:j] > cols_t[j])) for j in range(1, width))
    if tail > 1:
        count = _pair_inversions(buf[rows * width :])
        total += count
        if track and count:
            attribute(np.array([count]), np.array([tail_start]))
    return per_block if track else total


def count_inversions(v: np.ndarray) -> int:
    """Pairs i < j with v_i > v_j, for a permutation `v` of range(N) (O(N log N), exact)."""
    width = 1 << max(0, (v.shape[0] - 1).bit_length())
    return _inversions(v, width)


def block_inversions(v: np.ndarray, block_sizes: np.ndarray) -> np.ndarray:
    """Inversions inside each block of a blocked permutation, per block (see _inversions).

    Args:
        v: (N,) a permutation of range(N) in which block b's ranks sit at block b's positions.
        block_sizes: (B,) powers of two, non-increasing, summing to N.
    """
    offsets = np.cumsum(block_sizes) - block_sizes
    brute = min(_BRUTE_WIDTH, int(block_sizes[-1]))
    return _inversions(v, int(block_sizes[0]), offsets, brute)


# --- XAUC ---------------------------------------------------------------------------------------


def _scatter(order: np.ndarray, sorted_values: np.ndarray) -> np.ndarray:
    out = np.empty(order.shape[0], dtype=sorted_values.dtype)
    out[order] = sorted_values
    return out


def _bits(count: int) -> int:
    return max(1, (count - 1).bit_length())


def _positions(order: np.ndarray) -> np.ndarray:
    """The inverse permutation: each row's position in `order`."""
    n = order.shape[0]
    pos = np.empty(n, dtype=np.int32 if n < 1 << 31 else np.int64)
    pos[order] = np.arange(n, dtype=pos.dtype)
    return pos


def _xauc_counts(t: np.ndarray, p: np.ndarray) -> tuple[int, int, int]:
    """(pairs with different targets, those with tied preds, discordant pairs) over all pairs."""
    n = t.shape[0]
    key_t, bits_t = C.sort_keys(t)
    key_p, bits_p = C.sort_keys(p)
    order_t, new_t = C.stable_argsort(key_t, bits_t)
    by_p, new_p = C.stable_argsort(key_p, bits_p)
    pos_t = C.tied_positions(new_t)  # (M,) sorted positions in runs of tied targets
    pos_p = C.tied_positions(new_p)
    tied_t = C.tied_pairs(new_t, pos_t)
    tied_p = C.tied_pairs(new_p, pos_p)
    # Rows by (pred, target, row). Rare ties (float32 predictions of 10M rows tie about 1 row
    # in 8) re-sort the tied runs alone; heavy ones re-sort every row by dense ranks.
    if tied_p:
        if pos_p.size <= n // _HEAVY_TIES:
            C.order_ties_by(by_p, new_p, pos_p, _positions(order_t), order_t)
        else:
            rank_p = _scatter(by_p, np.cumsum(new_p) - 1)  # (N,) dense pred rank
            o, _ = C.stable_argsort(rank_p[order_t].view(np.uint64), _bits(int(rank_p.max()) + 1))
            by_p = order_t[o]
    rank = _positions(by_p)  # (N,) pred rank, ties broken by target, then by row
    # Rows by (target, pred, row), the same tie break: the only inverted pairs of `rank[seq]`
    # are those with t_i < t_j and p_i > p_j.
    seq = order_t
    tied_tp = 0
    if tied_t:
        if pos_t.size <= n // _HEAVY_TIES:
            C.order_ties_by(seq, new_t, pos_t, rank, by_p)
        else:
            rank_t = _scatter(order_t, np.cumsum(new_t) - 1)  # (N,) dense target rank
            o, _ = C.stable_argsort(rank_t[by_p].view(np.uint64), _bits(int(rank_t.max()) + 1))
            seq = by_p[o]
        if tied_p:
            k = key_p[seq[pos_t]]  # (M,) the tied-target runs' pred keys, in order
            joint = np.array(new_t)  # new_t holds for seq too: its runs are order_t's
            joint[pos_t[1:]] |= k[1:] != k[:-1]  # where (target, pred) changes along seq
            tied_tp = C.tied_pairs(joint, pos_t)  # (target, pred) runs lie in target runs
    discordant = count_inversions(rank[seq])
    pairs = n * (n - 1) // 2 - tied_t
    return pairs, tied_p - tied_tp, discordant


def _xauc_sampled(t: np.ndarray, p: np.ndarray, num_pairs: int, seed: int) -> float:
    n = t.shape[0]
    rng = np.random.default_rng(seed)
    agree = tied = kept = 0
    left = num_pairs
    while left > 0:
        b = min(left, _CHUNK)
        left -= b
        i = rng.integers(0, n, b)
        j = rng.integers(0, n - 1, b)
        j += j >= i  # uniform over j != i
        ti, tj, pi, pj = t[i], t[j], p[i], p[j]
        keep = ti != tj
        up = ti < tj
        agree += int(np.count_nonzero(keep & np.where(up, pi < pj, pi > pj)))
        tied += int(np.count_nonzero(keep & (pi == pj)))
        kept += int(np.count_nonzero(keep))
    if kept == 0:
        raise ValueError(f"none of the {num_pairs} sampled pairs has different targets")
    return (agree + 0.5 * tied) / kept


def xauc(targets: Any, preds: Any, *, num_pairs: int | None = None, seed: int = 0) -> float:
    """XAUC (Zhan et al., D2Q, KDD 2022): pairwise ordering accuracy for real-valued targets.

    Over all pairs of rows (i, j) with `targets_i != targets_j`, the share whose predictions are
    ordered like their targets; a pair with tied predictions counts one half, and pairs with tied
    targets are not pairs. Every pair weighs the same.

    Exact by default, in O(N log N) time and integer arithmetic: sort by target and count the
    discordant pairs as inversions of the prediction ranks (see the module docstring).

    With `num_pairs=N`, the sampled variant that some papers report: N pairs (i, j), i != j,
    drawn uniformly with `np.random.default_rng(seed)`; pairs with equal targets are discarded
    and the same tie rule applies to the rest. Deterministic for a seed; its standard error is
    about `0.5 / sqrt(kept pairs)`.

    Args:
        targets: (N,) real targets, e.g. watch time.
        preds: (N,) real predictions; only their order matters.
        num_pairs: None for the exact value, else how many random pairs to draw.
        seed: seed of the sampled variant.

    Returns:
        The XAUC in [0, 1].

    Raises:
        ValueError: on mismatched or non-1-D shapes, empty input, NaN or inf, fewer than two
            distinct targets, or a num_pairs below 1.
    """
    t, p = _check_inputs(targets, preds)
    if num_pairs is not None and (int(num_pairs) != num_pairs or num_pairs < 1):
        raise ValueError(f"num_pairs must be a positive integer or None, got {num_pairs}")
    n = t.shape[0]
    if n < 2 or np.all(t == t[0]):
        raise ValueError(f"xauc needs at least two distinct targets, got shape {t.shape}")
    if num_pairs is not None:
        return _xauc_sampled(t, p, int(num_pairs), seed)
    pairs, tied, discordant = _xauc_counts(t, p)
    concordant = pairs - tied - discordant
    return (2 * concordant + tied) / (2 * pairs)


def _runs_per_group(new_run: np.ndarray, new_group: np.ndarray) -> np.ndarray:
    """Sum over each group's runs of C(run length, 2); runs nest in groups (new_group => new_run)."""
    start = np.flatnonzero(new_run)
    length = np.diff(start, append=new_run.shape[0])
    return np.add.reduceat(length * (length - 1) // 2, np.flatnonzero(new_group[start]))


def xgauc_details(targets: Any, preds: Any, groups: Any) -> GroupedMetric:
    """Group XAUC: exact XAUC within each group, averaged with the group's rows as weights.

    `sum_u n_u XAUC_u / sum_u n_u` over groups `u` (users, usually) holding at least two distinct
    targets; other groups (single rows included) are left out and counted. `XAUC_u` follows
    `xauc` (exact, tied predictions count one half). No loop over groups: rows are sorted by
    (group, target) and each group's ranks get their own power-of-two block of the inversion
    count.

    Args:
        targets: (N,) real targets.
        preds: (N,) real predictions.
        groups: (N,) group labels: ints, or anything `np.unique` sorts.

    Returns:
        A GroupedMetric with weight "impressions"; its value is nan if no group is usable.

    Raises:
        ValueError: on mismatched or non-1-D shapes, empty input, or NaN or inf.
    """
    t, p = _check_inputs(targets, preds)
    n = t.shape[0]
    gkey, gbits = C.group_keys("groups", groups, n)  # (N,) order-preserving group keys

    order_t, new_t = C.stable_argsort(*C.sort_keys(t))
    order_p, new_p = C.stable_argsort(*C.sort_keys(p))
    ties_t, ties_p = not new_t.all(), not new_p.all()
    rank_t = _scatter(order_t, np.cumsum(new_t) - 1) if ties_t else None  # (N,) dense
    rank_p = _scatter(order_p, np.cumsum(new_p) - 1) if ties_p else None  # (N,) dense
    by_p = order_p
    if ties_p:  # break pred ties by target
        o, _ = C.stable_argsort(rank_p[order_t].view(np.uint64), _bits(int(rank_p.max()) + 1))
        by_p = order_t[o]
    o, new_group = C.stable_argsort(gkey[by_p], gbits)
    by_gp = by_p[o]  # (N,) rows by (group, pred, target)
    if ties_t:
        num_t = int(np.count_nonzero(new_t))
        gid = _scatter(by_gp, np.cumsum(new_group) - 1).view(np.uint64)  # (N,) dense group id
        key_gt = gid * np.uint64(num_t) + rank_t.view(np.uint64)  # (N,) (group, target rank)
        num_groups = int(np.count_nonzero(new_group))
        o, _ = C.stable_argsort(key_gt[by_gp], _bits(num_groups) + _bits(num_t))
        seq = by_gp[o]  # (N,) rows by (group, target, pred)
    else:
        o, _ = C.stable_argsort(gkey[order_t], gbits)
        seq = order_t[o]  # (N,) rows by (group, target)

    group_start = np.flatnonzero(new_group)  # (G,), the same in seq and by_gp
    num_groups = group_start.shape[0]
    rows = np.diff(group_start, append=n)  # (G,)
    tied_t = tied_p = tied_tp = np.zeros(num_groups, dtype=np.int64)
    if ties_t:
        new_gt = _with_changes(new_group, rank_t[seq])
        tied_t = _runs_per_group(new_gt, new_group)
    if ties_p:
        tied_p = _runs_per_group(_with_changes(new_group, rank_p[by_gp]), new_group)
    if ties_t and ties_p:
        tied_tp = _runs_per_group(_with_changes(new_gt, rank_p[seq]), new_group)
    pairs = rows * (rows - 1) // 2 - tied_t  # (G,)
    usable = pairs > 0
    discordant = np.zeros(num_groups, dtype=np.int64)
    if usable.any():
        discordant[usable] = _group_discordant(seq, by_gp, group_start, rows, usable)

    tied = tied_p - tied_tp
    concordant = pairs - tied - discordant
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.where(usable, (2 * concordant + tied) / (2.0 * pairs), np.nan)  # (G,)
    return grouped_metric(
        values,
        usable,
        rows,
        weight="impressions",
        groups=C.to_numpy(groups)[by_gp[group_start]],
        rows=rows,
    )


def _with_changes(new: np.ndarray, values: np.ndarray) -> np.ndarray:
    """`new` or'ed with where `values` differs from the previous row."""
    out = new.copy()
    out[1:] |= values[1:] != values[:-1]
    return out


def _group_discordant(
    seq: np.ndarray,
    by_gp: np.ndarray,
    group_start: np.ndarray,
    rows: np.ndarray,
    usable: np.ndarray,
) -> np.ndarray:
    """Discordant pairs of each usable group, in the order of `np.flatnonzero(usable)`.

    Each usable group gets a block of 2^ceil(log2 rows) ranks and positions, widest block first,
    so that blocks are aligned; slots past a group's rows keep their own index as rank, so they
    invert nothing. Rows of left-out groups are not placed at all.
    """
    n = seq.shape[0]
    groups = np.flatnonzero(usable)  # (U,)
    size = np.left_shift(1, np.ceil(np.log2(rows[groups])).astype(np.int64))  # (U,)
    size = np.where(size < rows[groups], 2 * size, size)
    widest = np.argsort(-size, kind="stable")  # (U,)
    offset = np.empty_like(size)
    offset[widest] = np.cumsum(size[widest]) - size[widest]
    total = int(size.sum())
    dtype = np.int32 if total < 1 << 31 else np.int64
    rank_gp = np.empty(n, dtype=dtype)
    rank_gp[by_gp] = np.arange(n, dtype=dtype)  # (N,) row -> position in (group, pred, target)
    # Position k of seq (group g) goes to offset_g + (k - start_g), with that same shift on rank.
    shift = np.full(group_start.shape[0], -1, dtype=np.int64)
    shift[groups] = offset - group_start[groups]
    shift = np.repeat(shift.astype(dtype), rows)  # (N,)
    buf = np.arange(total, dtype=dtype)
    if groups.shape[0] == group_start.shape[0]:
        buf[np.arange(n, dtype=dtype) + shift] = rank_gp[seq] + shift
    else:
        keep = np.repeat(usable, rows)
        buf[(np.arange(n, dtype=dtype) + shift)[keep]] = (rank_gp[seq] + shift)[keep]
    return block_inversions(buf, size[widest])[np.argsort(widest)]


def xgauc(targets: Any, preds: Any, groups: Any) -> float:
    """Group XAUC: `sum_u n_u XAUC_u / sum_u n_u` over groups with two distinct targets or more.

    `XAUC_u` is the exact `xauc` inside group u (a tied prediction counts one half); `n_u` is the
    group's row count. The groups left out are reported by `xgauc_details`.

    Args:
        targets: (N,) real targets.
        preds: (N,) real predictions.
        groups: (N,) group labels: ints, or anything `np.unique` sorts.

    Returns:
        The XGAUC, or nan if no group is usable.

    Raises:
        ValueError: as `xgauc_details`.
    """
    return xgauc_details(targets, preds, groups).value


def _errors(targets: Any, preds: Any) -> np.ndarray:
    """(N,) float64 `targets - preds`, every row weighing the same in the means below.

    Raises:
        ValueError: on mismatched or non-1-D shapes, empty input, or NaN or inf.
    """
    t, p = _check_inputs(targets, preds)
    return t.astype(np.float64) - p.astype(np.float64)


def mae(targets: Any, preds: Any) -> float:
    """Mean absolute error `mean(|targets - preds|)` of (N,) real targets and predictions, in the
    targets' unit; ValueError as `_errors`."""
    return float(np.mean(np.abs(_errors(targets, preds))))


def rmse(targets: Any, preds: Any) -> float:
    """Root mean squared error `sqrt(mean((targets - preds)^2))` of (N,) real targets and
    predictions, in the targets' unit; ValueError as `_errors`."""
    d = _errors(targets, preds)
    return float(np.sqrt(np.mean(d * d)))
