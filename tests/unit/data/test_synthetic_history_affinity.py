"""The synthetic world's opt-in history affinity (`data.history_affinity`): off, the world is the
one recolab generated before it (every column, bit for bit, and the cache key); on, relevance
depends on the clicked history item by item, drawn request by request as a plain loop would."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest

from recolab.data.synthetic_video import WorldParams, _affine_clicks, _click_history, generate

SMALL = WorldParams(num_users=300, num_items=200, num_impressions=20_000, world_seed=3)


def digest(t: pa.Table) -> str:
    h = hashlib.sha256()
    for name in t.column_names:
        h.update(name.encode())
        col = t[name].combine_chunks()
        if name == "hist_items":
            col = col.flatten()
        h.update(np.ascontiguousarray(col.to_numpy(zero_copy_only=False)).tobytes())
    return h.hexdigest()


def test_the_default_world_is_unchanged():
    # Written by the generator before history_affinity existed (recolab at 8e19b6c).
    t = generate(SMALL)
    assert digest(t) == "4a10e7d136f745c144af5ef9371d4326cf99607b4769999cc471f1b78ac060a7"
    assert SMALL.key() == "c1a300899a23" and WorldParams().key() == "4c78b6928dd7"
    assert replace(SMALL, history_affinity=1.0).key() != SMALL.key()


def loop_clicks(affinity, item_vec, req_user, req_time, cand, rel_logit, examined, draw, L):
    """Request by request in time order: the history is the user's last L clicks strictly
    before the request's second (what `_click_history` writes into the log)."""
    unit = item_vec / np.linalg.norm(item_vec, axis=1, keepdims=True)
    logit, click = rel_logit.copy(), np.zeros_like(examined)
    seen: list[tuple[int, int, int]] = []  # (user, time, item) of every click so far
    histories = []
    for r in range(len(req_user)):
        hist = [i for u, t, i in seen if u == req_user[r] and t < req_time[r]][-L:]
        histories.append([0] * (L - len(hist)) + [i + 1 for i in hist])
        for p in range(cand.shape[1]):
            if hist:
                s = [float(unit[cand[r, p]] @ unit[i]) for i in hist]
                logit[r, p] += affinity * (max(s) - sum(s) / len(s))
            click[r, p] = examined[r, p] and draw[r, p] < 1 / (1 + np.exp(-logit[r, p]))
            if click[r, p]:
                seen.append((req_user[r], req_time[r], cand[r, p]))
    return logit, click, np.array(histories)


def test_clicks_are_drawn_as_a_request_by_request_loop_draws_them():
    rng = np.random.default_rng(0)
    R, P, I, U, L = 400, 4, 30, 12, 3
    req_user = rng.integers(0, U, size=R)
    req_time = np.sort(rng.integers(0, 150, size=R))  # many requests share a second
    args = dict(
        item_vec=rng.normal(size=(I, 5)),
        req_user=req_user,
        req_time=req_time,
        cand=rng.integers(0, I, size=(R, P)),
        rel_logit=rng.normal(size=(R, P)),
        examined=rng.random((R, P)) < 0.8,
        click_draw=rng.random((R, P)),
    )
    p = WorldParams(num_users=U, num_items=I, history_len=L, history_affinity=1.5)
    logit, click = _affine_clicks(p, **args)
    want_logit, want_click, histories = loop_clicks(1.5, *args.values(), L)
    np.testing.assert_allclose(logit, want_logit, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(click, want_click)
    assert click.any() and (logit != args["rel_logit"]).any()
    # the histories the loop read are the ones the log records
    items = (args["cand"] + 1).reshape(-1)
    log_hist = _click_history(
        np.repeat(req_user + 1, P), np.repeat(req_time, P), items, click.reshape(-1), L
    )
    np.testing.assert_array_equal(log_hist.reshape(R, P, L)[:, 0], histories)


def test_relevance_depends_on_the_history_only_with_affinity():
    # Over the impressions of one (user, item) pair the histories differ; the relevance logit
    # varies with them only when history_affinity is on.
    spreads = {}
    for a in (0.0, 2.0):
        t = generate(replace(SMALL, history_affinity=a))
        rel = t["gt_relevance"].to_numpy().astype(float)
        z = np.log(rel / (1 - rel))
        pair = t["user_id"].to_numpy().astype(np.int64) * 10_000 + t["item_id"].to_numpy()
        _, inverse = np.unique(pair, return_inverse=True)
        mean = np.bincount(inverse, z) / np.bincount(inverse)
        spreads[a] = np.abs(z - mean[inverse]).max()
        exam = t["gt_examination"].to_numpy()
        np.testing.assert_allclose(t["gt_click_prob"].to_numpy(), exam * rel, rtol=1e-6)
    assert spreads[0.0] < 1e-5 < 0.1 < spreads[2.0]


def test_affinity_needs_a_history():
    with pytest.raises(ValueError, match="data.history_len must be >= 1"):
        WorldParams(history_affinity=1.0, history_len=0)
