"""Input conversion and validation shared by the metric modules, and exact sorting helpers.

Every metric takes 1-D array-likes (numpy arrays or torch tensors, any real dtype) and converts
them here. The sorting helpers turn values into order-preserving unsigned 64-bit keys and sort
`(key, row index)` pairs packed into one word with `np.sort`, which is several times faster than
`np.argsort` and still exact: ties keep row order (a stable sort), and keys too wide to share a
word with the row index are fixed up where their truncated prefixes collide.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_U64 = np.uint64
_SIGN = _U64(1 << 63)


def to_numpy(x: Any) -> np.ndarray:
    """An array-like or a torch tensor (any device, with or without grad) -> a numpy array."""
    if hasattr(x, "detach"):
        t = x.detach().cpu()
        if t.is_floating_point() and t.element_size() < 4:
            t = t.float()  # bfloat16 has no numpy twin
        return t.numpy()
    return np.asarray(x)


def as_1d(name: str, x: Any) -> np.ndarray:
    """`x` as a 1-D real numpy array; ValueError naming `name` and its shape otherwise."""
    a = to_numpy(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise ValueError(f"{name} must hold real numbers, got dtype {a.dtype}")
    if np.iscomplexobj(a):
        raise ValueError(f"{name} must hold real numbers, got dtype {a.dtype}")
    return a


def same_length(names: tuple[str, ...], arrays: tuple[np.ndarray, ...]) -> int:
    """The common length of `arrays`; ValueError quoting every shape if they differ or are empty."""
    shapes = ", ".join(f"{n} {a.shape}" for n, a in zip(names, arrays))
    if len({a.shape[0] for a in arrays}) != 1:
        raise ValueError(f"inputs must have the same length, got shapes {shapes}")
    if arrays[0].shape[0] == 0:
        raise ValueError(f"inputs are empty, got shapes {shapes}")
    return arrays[0].shape[0]


def check_finite(name: str, a: np.ndarray) -> None:
    """ValueError saying how many entries of `a` are NaN or infinite, if any."""
    if a.dtype.kind == "f":
        bad = a.size - int(np.count_nonzero(np.isfinite(a)))
        if bad:
            raise ValueError(f"{name} holds {bad} NaN or infinite values (shape {a.shape})")


def check_binary(name: str, a: np.ndarray) -> np.ndarray:
    """`a` as int8 zeros and ones; ValueError saying how many rows are neither 0 nor 1."""
    if a.dtype == np.bool_:
        return a.view(np.int8)
    bad = a.size - int(np.count_nonzero((a == 0) | (a == 1)))
    if bad:
        raise ValueError(f"{name} must be 0 or 1, got {bad} other values (shape {a.shape})")
    return a.astype(np.int8)


def check_unit_interval(name: str, a: np.ndarray) -> None:
    """ValueError saying how many entries of `a` lie outside [0, 1]."""
    bad = a.size - int(np.count_nonzero((a >= 0) & (a <= 1)))
    if bad:
        raise ValueError(f"{name} must lie in [0, 1], got {bad} values outside (shape {a.shape})")


def sort_keys(a: np.ndarray) -> tuple[np.ndarray, int]:
    """Order-preserving unsigned keys of a real 1-D array, and how many low bits they use.

    Equal values get equal keys (-0.0 and 0.0 included), so ties stay ties. Integers map to
    `value - min` (exact at any magnitude), floats to their IEEE bits with the sign folded in.
    """
    if a.dtype == np.bool_:
        a = a.view(np.uint8)
    if a.dtype.kind in "iu":
        lo, hi = int(a.min()), int(a.max())
        bits = max(1, (hi - lo).bit_length())
        if a.dtype == np.uint64:
            return a - _U64(lo), bits
        if hi - lo < 1 << 63:
            return (a.astype(np.int64, copy=False) - lo).view(_U64), bits
        return a.view(_U64) ^ _SIGN, 64  # int64 spanning the whole range
    if a.dtype.itemsize > 8:  # long double: float64 bits would round distinct values to ties
        codes = np.unique(a, return_inverse=True)[1].reshape(-1)  # dense ranks, exact
        return codes.astype(_U64), max(1, int(codes.max()).bit_length())
    if a.dtype.itemsize <= 4:
        b, sign = np.ascontiguousarray(a, dtype=np.float32).view(np.int32), np.int32(-(1 << 31))
        width, unsigned = 32, np.uint32
    else:
        b, sign = np.ascontiguousarray(a, dtype=np.float64).view(np.int64), np.int64(-(1 << 63))
        width, unsigned = 64, _U64
    # Sign-magnitude to ordered unsigned: x >= 0 -> bits | sign, x < 0 -> ~bits + 1. Both zeros
    # land on `sign`, so -0.0 ties with 0.0.
    m = b >> (width - 1)  # -1 where negative, else 0
    key = b ^ (m | sign)
    key -= m
    return key.view(unsigned).astype(_U64, copy=False), width


def stable_argsort(key: np.ndarray, key_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Stable argsort of unsigned keys, and where each run of equal keys starts.

    Packs `(key >> shift, row)` into one uint64 and sorts it with `np.sort`. When the key is too
    wide to fit beside the row index (`shift > 0`), rows whose truncated keys collide are put in
    order by their full keys afterwards, so the result is always exactly `argsort(key, stable)`.

    Args:
        key: (N,) unsigned integer keys.
        key_bits: an upper bound on the bits `key` uses.

    Returns:
        order: (N,) int64 row indices sorted by (key, row).
        new: (N,) bool, True where the sorted key differs from the previous one (True at 0).
    """
    n = key.shape[0]
    idx_bits = max(1, (n - 1).bit_length())
    shift = max(0, key_bits + idx_bits - 64)
    packed = key.astype(_U64, copy=True) if shift == 0 else key >> _U64(shift)
    packed <<= _U64(idx_bits)
    packed |= np.arange(n, dtype=_U64)
    packed.sort()
    order = (packed & _U64((1 << idx_bits) - 1)).view(np.int64)
    packed >>= _U64(idx_bits)
    new = np.empty(n, dtype=bool)
    new[0] = True
    np.not_equal(packed[1:], packed[:-1], out=new[1:])
    if shift:
        _fix_collisions(key, order, new)
    return order, new


def _fix_collisions(key: np.ndarray, order: np.ndarray, new: np.ndarray) -> None:
    """Order rows whose truncated keys collide by their full keys, in place (see stable_argsort)."""
    same = np.flatnonzero(~new[1:])  # sorted positions k whose truncated key equals k + 1's
    if same.size == 0:
        return
    ka, kb = key[order[same]], key[order[same + 1]]
    bad = same[ka > kb]
    if bad.size:
        # The runs of colliding positions that hold a disorder: re-sort them by (run, key, row).
        in_run = np.zeros(new.shape[0], dtype=bool)
        in_run[same] = True
        in_run[same + 1] = True
        pos = np.flatnonzero(in_run)  # (P,) every colliding run, whole
        run = np.cumsum(new[pos]) - 1  # (P,) a run starts where its truncated key is new
        pick = np.isin(run, run[np.searchsorted(pos, bad)])
        pos, run = pos[pick], run[pick]
        rows = order[pos]
        order[pos] = rows[np.lexsort((rows, key[rows], run))]
        ka, kb = key[order[same]], key[order[same + 1]]
    new[same + 1] = ka != kb


def tied_positions(new: np.ndarray) -> np.ndarray:
    """Sorted positions that lie in a run of two or more equal keys (runs start where `new`)."""
    if new.all():  # no ties, the usual case for float64: skip the boolean passes
        return np.empty(0, dtype=np.int64)
    in_run = ~new
    in_run[:-1] |= ~new[1:]
    return np.flatnonzero(in_run)


def order_ties_by(
    order: np.ndarray, new: np.ndarray, pos: np.ndarray, rank: np.ndarray, ranked: np.ndarray
) -> None:
    """Puts each run of equal keys in order by a second key, a rank, in place.

    `order` and `new` come from `stable_argsort` (rows by first key), `pos` from
    `tied_positions(new)`. Only the tied positions move: `(run, rank)` is packed into one word
    and sorted with `np.sort`, so rare ties cost a small sort, and the heaviest ties about one
    sort of every row.

    Args:
        order: (N,) rows sorted by their first key; rewritten to rows by (first key, rank).
        new: (N,) True where the first key changes.
        pos: (M,) the positions in runs of two or more.
        rank: (N,) int, each row's position in `ranked`, a sort of the rows by another key.
        ranked: (N,) the rows in that order (`ranked[rank[r]] == r`).
    """
    if pos.size == 0:
        return
    n = order.shape[0]
    run = np.cumsum(new[pos])  # (M,) run id: a run starts where its first key is new
    bits = max(1, (n - 1).bit_length())
    if int(run[-1]).bit_length() + bits > 64:  # over 2**32 rows: no room to pack
        rows = order[pos]
        order[pos] = rows[np.lexsort((rank[rows], run))]
        return
    packed = run.astype(_U64) << _U64(bits)
    packed |= rank[order[pos]].astype(_U64, copy=False)
    packed.sort()
    order[pos] = ranked[(packed & _U64((1 << bits) - 1)).view(np.int64)]


def group_keys(name: str, groups: Any, n: int) -> tuple[np.ndarray, int]:
    """Group labels (ints, floats, strings: anything np.unique sorts) -> sort keys and their bits.

    Equal labels get equal keys and the key order follows the label order.

    Raises:
        ValueError: on a shape other than (n,) or on NaN labels.
    """
    g = to_numpy(groups)
    if g.ndim != 1 or g.shape[0] != n:
        raise ValueError(
            f"{name} must be 1-D with one label per row, got shape {g.shape}, ({n},) expected"
        )
    if g.dtype.kind in "biuf":
        check_finite(name, g)
        return sort_keys(g)
    try:
        codes = np.unique(g, return_inverse=True)[1].reshape(-1)
    except TypeError as e:  # e.g. None among strings: no order between them
        raise ValueError(
            f"{name} must hold labels of one sortable kind (numbers or strings, no missing "
            f"values), got dtype {g.dtype} ({e})"
        ) from e
    return codes.astype(_U64), max(1, int(codes.max()).bit_length())


def run_lengths(new: np.ndarray) -> np.ndarray:
    """Lengths of the runs that start where `new` is True."""
    starts = np.flatnonzero(new)
    return np.diff(starts, append=new.shape[0])


def tied_pairs(new: np.ndarray, pos: np.ndarray | None = None) -> int:
    """Pairs of rows inside the same run, runs starting where `new` is True: sum of C(len, 2).

    Counted on the tied positions alone, so rare ties cost two boolean passes, not a run length
    for every row. `pos`: sorted positions made of whole runs that include every run of two or
    more (`tied_positions(new)` when not given; a superset such as the tied positions of a
    coarser key also works).
    """
    if pos is None:
        if new.all():
            return 0
        pos = tied_positions(new)
    if pos.size == 0:
        return 0
    lengths = np.diff(np.flatnonzero(new[pos]), append=pos.size)  # runs of two or more
    return int(np.sum(lengths * (lengths - 1) // 2))


def finite_pair(names: tuple[str, str], a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    """Two 1-D arrays of one length without NaN or inf (`as_1d`, `same_length`, `check_finite`),
    the inputs of every pointwise metric; ValueError naming the offending input."""
    x, y = as_1d(names[0], a), as_1d(names[1], b)
    same_length(names, (x, y))
    check_finite(names[0], x)
    check_finite(names[1], y)
    return x, y
