"""The synthetic short-video world (DESIGN.md section 5): a log that knows its own truth.

Users and items have latent vectors; items have Zipf popularity, log-normal durations and a
category. A logging policy that favours popular (and somewhat relevant) items fills slates of
`slate_size` positions. Then, per impression:

    examined   ~ Bernoulli(gt_examination = position ** -examination_power)
    click      = examined * Bernoulli(gt_relevance = sigmoid(relevance logit))
    like       = click * Bernoulli(sigmoid(like logit))
    watch_time = examined * duration * sigmoid(interest logit - duration_bias * log(duration / 30) + noise)
    purchase   = click * Bernoulli(gt_purchase_given_click)    (opt-in, `purchase=true`: `_purchases`)

`task_correlation` is the correlation of the like logit with the user-item *taste* term of the
relevance logit, not with the relevance logit itself, which also holds the item's quality: over
the impressions of the default world, corr(like logit, relevance logit) measures 0.544 at
`task_correlation=0.7` (world_seed 0; 0.569 and 0.555 at seeds 1 and 2, 0.78 at 1.0, 0.00 at 0.0):

    python -c "
    import numpy as np; from recolab.data.synthetic_video import WorldParams, generate
    t = generate(WorldParams(task_correlation=0.7)); g = lambda c: t[c].to_numpy().astype(float)
    rel = g('gt_relevance'); like = g('gt_like_prob') / (g('gt_examination') * rel)
    print(np.corrcoef(np.log(like / (1 - like)), np.log(rel / (1 - rel)))[0, 1])"

`gt_interest = sigmoid(interest logit)` is the watch ratio without duration bias or noise. The
`gt_*` columns are truth for reports; data configs list them under `meta`, never as features.

History. In the default world relevance is a function of the (user, item) pair alone: the click
history is a noisy view of the user's taste, which a mean over its items summarizes as well as
anything can, so target attention over it (DIN, `+pooling=din`) has nothing item-specific to find.
Measured: over the impressions of one (user, item) pair, whose histories differ, the relevance
logit does not vary (root-mean-square deviation from the pair's mean 2e-16, rounding; the logit's
standard deviation is 1.46). The opt-in `history_affinity` (default 0, the world unchanged bit for
bit) adds `history_affinity * (max_j s_j - mean_j s_j)` to the relevance logit, s_j the cosine of
the candidate and history item j on the second taste axis (`_affine_clicks`): the part of the
candidate's similarity to the history that its mean over the history misses. Clicks are then
drawn in time order, so the log's `hist_items` are exactly the histories relevance read, and
`gt_relevance` is still the true click probability given examination. At `history_affinity=2.0`
(default world otherwise) the within-pair deviation is 0.289, the logit's standard deviation 1.63,
and the click rate rises from 0.168 to 0.205:

    python -c "
    import numpy as np; from recolab.data.synthetic_video import WorldParams, generate
    for a in (0.0, 2.0):
        t = generate(WorldParams(history_affinity=a)); g = lambda c: t[c].to_numpy().astype(float)
        z = np.log(g('gt_relevance') / (1 - g('gt_relevance'))); pair = g('user_id') * 1e4 + g('item_id')
        _, k = np.unique(pair, return_inverse=True); m = np.bincount(k, z) / np.bincount(k)
        print(a, np.sqrt(np.mean((z - m[k]) ** 2)), z.std(), g('click').mean())"
Everything is vectorized numpy: a million impressions generate in a few seconds.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ConfigDict
from pydantic.dataclasses import dataclass as pydantic_dataclass

from recolab.data.datamodule import RankDataModule
from recolab.data.selection import RowSelection, select_rows_spec
from recolab.data.source import cache_key, cached_parquet
from recolab.params import Correlation, Count, Count0, Positive

log = logging.getLogger(__name__)

#: Bump when the generator's output changes, so caches regenerate.
GENERATOR_VERSION = 1
DAY = 86_400
#: The opt-in purchase parameters (`WorldParams.identity` leaves them out while it is off).
PURCHASE_FIELDS = ("purchase", "purchase_relevance", "purchase_price", "purchase_bias")


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class WorldParams:
    """The world's parameters (the fields' order is the config's; see the module docstring), each
    with its constraint (`recolab.params`), checked when the world is made and in the config."""

    # Size: users, items, impressions (rows), positions per slate.
    num_users: Count = 20_000
    num_items: Count = 5_000
    num_impressions: Count = 1_000_000
    slate_size: Count = 10
    # Items: latent dimension, categories, Zipf popularity skew.
    latent_dim: Count = 16
    num_categories: Count = 20
    zipf_exponent: Positive = 1.1
    # The logging policy: weights of log popularity and of the relevance logit.
    popularity_weight: float = 1.0
    policy_relevance_weight: float = 0.5
    # Behaviour: position bias, like-vs-taste correlation, watch-time duration bias.
    examination_power: float = 0.8
    task_correlation: Correlation = 0.7
    duration_bias: float = 0.5
    # The log: clicked items in `hist_items`, days spanned, the generator's seed.
    history_len: Count0 = 20
    days: Count = 30
    world_seed: Count0 = 0
    # Opt-in post-click purchase (ESMM's conversion; `_purchases`): off, the world is unchanged.
    purchase: bool = False
    purchase_relevance: float = 1.5
    purchase_price: float = 1.0
    purchase_bias: float = 0.0
    # Opt-in history affinity (`_affine_clicks`): 0, the world is unchanged.
    history_affinity: float = 0.0

    def __post_init__(self) -> None:
        if self.history_affinity and self.history_len < 1:
            raise ValueError(
                f"data.history_affinity={self.history_affinity} needs a history: "
                f"data.history_len must be >= 1, got {self.history_len}"
            )

    def key(self) -> str:
        """The world's cache key (`recolab.data.source.cache_key` of these parameters)."""
        return cache_key([], self.identity(), GENERATOR_VERSION)

    def identity(self) -> dict[str, Any]:
        """The parameters that key the world's cache: all of them, but the opt-in purchase
        parameters only where `purchase` is on, so the default world keeps its cache key."""
        fields = asdict(self)
        if not self.purchase:
            for name in PURCHASE_FIELDS:
                fields.pop(name)
        if not self.history_affinity:
            fields.pop("history_affinity")
        return fields


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _standardize(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-12)


def generate(p: WorldParams) -> pa.Table:
    """Generate the world's impression log as an Arrow table (one row per impression)."""
    rng = np.random.default_rng(p.world_seed)
    d, U, I, P = p.latent_dim, p.num_users, p.num_items, p.slate_size
    R = max(1, p.num_impressions // P)  # requests (slates)

    # Items: category, latent vector around the category's, Zipf popularity, log-normal duration.
    category = rng.integers(0, p.num_categories, size=I)
    cat_vec = rng.normal(0, 1, size=(p.num_categories, d))
    item_vec = (cat_vec[category] + 0.7 * rng.normal(0, 1, size=(I, d))) / np.sqrt(d)  # (I, D)
    item_vec2 = rng.normal(0, 1, size=(I, d)) / np.sqrt(d)  # second taste axis (like, interest)
    pop_rank = rng.permutation(I) + 1
    popularity = pop_rank**-p.zipf_exponent
    popularity /= popularity.sum()
    quality = 0.3 * _standardize(np.log(popularity)) + 0.3 * rng.normal(
        size=I
    )  # popular items are a bit better
    duration = np.clip(rng.lognormal(np.log(30.0), 0.8, size=I), 3.0, 600.0)

    # Users: latent vectors, an age bucket that shifts taste, and an activity level.
    age = rng.integers(0, 7, size=U)
    age_vec = rng.normal(0, 0.5, size=(7, d))
    user_vec = (rng.normal(0, 1, size=(U, d)) + age_vec[age]) * 1.5  # (U, D)
    user_vec2 = rng.normal(0, 1, size=(U, d)) * 1.5
    activity = rng.lognormal(0.0, 1.0, size=U)
    activity /= activity.sum()

    # Requests: an active user at a time; a slate of candidates drawn by popularity.
    req_user = rng.choice(U, size=R, p=activity)
    req_time = np.sort(rng.integers(0, p.days * DAY, size=R))
    cand = rng.choice(I, size=(R, P), p=popularity)  # (R, P)
    users = np.repeat(req_user, P).reshape(R, P)

    def logit(uv: np.ndarray, iv: np.ndarray) -> np.ndarray:
        return np.einsum("rpd,rpd->rp", uv[users], iv[cand])  # (R, P)

    z_rel = logit(user_vec, item_vec)
    z_other = logit(user_vec2, item_vec2)
    rel_logit = 1.2 * _standardize(z_rel) + quality[cand] - 2.0
    like_logit = (
        1.2
        * (
            p.task_correlation * _standardize(z_rel)
            + np.sqrt(1 - p.task_correlation**2) * _standardize(z_other)
        )
        - 1.0
    )
    interest_logit = 0.8 * _standardize(z_rel) + 0.6 * _standardize(z_other) - 0.3

    # The logging policy orders the slate by popularity and a noisy view of relevance.
    policy = (
        p.popularity_weight * np.log(popularity[cand])
        + p.policy_relevance_weight * rel_logit
        + rng.gumbel(size=(R, P))
    )
    order = np.argsort(-policy, axis=1)
    take = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
    cand, rel_logit, like_logit, interest_logit = map(
        take, (cand, rel_logit, like_logit, interest_logit)
    )
    position = np.broadcast_to(np.arange(1, P + 1), (R, P))

    gt_examination = position**-p.examination_power
    gt_relevance = _sigmoid(rel_logit)
    gt_like_given_click = _sigmoid(like_logit)
    gt_interest = _sigmoid(interest_logit)
    dur = duration[cand]
    watch_noise = 0.5
    ratio_logit = interest_logit - p.duration_bias * np.log(dur / 30.0)

    examined = rng.random((R, P)) < gt_examination
    click_draw = rng.random((R, P))
    if p.history_affinity:  # relevance depends on the clicks before: drawn request by request
        rel_logit, click = _affine_clicks(
            p, item_vec2, users[:, 0], req_time, cand, rel_logit, examined, click_draw
        )
        gt_relevance = _sigmoid(rel_logit)
    else:
        click = examined & (click_draw < gt_relevance)
    like = click & (rng.random((R, P)) < gt_like_given_click)
    ratio = _sigmoid(ratio_logit + watch_noise * rng.normal(size=(R, P)))
    watch_time = examined * dur * ratio
    # E[sigmoid(m + s*eps)] by the probit approximation (MacKay 1992).
    expected_ratio = _sigmoid(ratio_logit / np.sqrt(1 + np.pi * watch_noise**2 / 8))

    flat = lambda a: np.ascontiguousarray(a).reshape(-1)  # noqa: E731
    user_id = flat(users) + 1
    item_id = flat(cand) + 1
    timestamp = np.repeat(req_time, P)
    hist = _click_history(user_id, timestamp, item_id, flat(click), p.history_len)

    columns: dict[str, Any] = {
        "request_id": np.repeat(np.arange(R), P),
        "timestamp": timestamp,
        "user_id": user_id,
        "item_id": item_id,
        "category": category[flat(cand)] + 1,
        "user_age": age[flat(users)] + 1,
        "user_activity": np.log(activity * U)[flat(users)].astype(np.float32),
        "log_duration": np.log(flat(dur)).astype(np.float32),
        "hist_items": pa.FixedSizeListArray.from_arrays(
            pa.array(hist.reshape(-1), pa.int32()), p.history_len
        ),
        "position": flat(position).astype(np.int32),
        "duration": flat(dur).astype(np.float32),
        "click": flat(click).astype(np.float32),
        "like": flat(like).astype(np.float32),
        "watch_time": flat(watch_time).astype(np.float32),
        "gt_relevance": flat(gt_relevance).astype(np.float32),
        "gt_examination": flat(gt_examination).astype(np.float32),
        "gt_interest": flat(gt_interest).astype(np.float32),
        "gt_click_prob": flat(gt_examination * gt_relevance).astype(np.float32),
        "gt_like_prob": flat(gt_examination * gt_relevance * gt_like_given_click).astype(
            np.float32
        ),
        "gt_watch_time": flat(gt_examination * dur * expected_ratio).astype(np.float32),
    }
    if p.purchase:
        columns |= {
            k: flat(v)
            for k, v in _purchases(
                p, quality, users, cand, rel_logit, gt_examination * gt_relevance, click
            ).items()
        }
    return pa.table(columns)


def _purchases(
    p: WorldParams,
    quality: np.ndarray,
    users: np.ndarray,
    cand: np.ndarray,
    rel_logit: np.ndarray,
    click_prob: np.ndarray,
    click: np.ndarray,
) -> dict[str, np.ndarray]:
    """The opt-in post-click purchase, the conversion of ESMM (Ma et al., SIGIR 2018): (R, P)
    columns in slate order, from the items' `quality` (I,), the slates' `users` and `cand`, their
    relevance logits, click probabilities and clicks.

        log price  = 0.5 * standardized quality + sqrt(0.75) * noise, per item (better items cost more)
        buyer      ~ Normal(0, 0.5), per user
        purchase logit = purchase_relevance * relevance logit - purchase_price * log price
                         + buyer + purchase_bias
        purchase_if_clicked ~ Bernoulli(gt_purchase_given_click = sigmoid(purchase logit))
        purchase   = click * purchase_if_clicked

    The purchase happens only after a click; `purchase_if_clicked` is the counterfactual (whether
    the impression would have converted had it been clicked), which no real log has: it scores a
    CVR estimate over the entire space. The draws come from their own generator, seeded by
    (world_seed, 24), so every column of the world without purchases is unchanged.
    """
    rng = np.random.default_rng([p.world_seed, 24])
    log_price = 0.5 * _standardize(quality) + np.sqrt(0.75) * rng.normal(size=len(quality))
    buyer = rng.normal(0, 0.5, size=p.num_users)
    purchase_logit = (
        p.purchase_relevance * rel_logit
        - p.purchase_price * log_price[cand]
        + buyer[users]
        + p.purchase_bias
    )  # (R, P)
    gt_given_click = _sigmoid(purchase_logit)
    if_clicked = rng.random(purchase_logit.shape) < gt_given_click
    return {
        "purchase": (click & if_clicked).astype(np.float32),
        "purchase_if_clicked": if_clicked.astype(np.float32),
        "gt_purchase_given_click": gt_given_click.astype(np.float32),
        "gt_purchase_prob": (click_prob * gt_given_click).astype(np.float32),
    }


def _click_history(
    user_id: np.ndarray, timestamp: np.ndarray, item_id: np.ndarray, click: np.ndarray, L: int
) -> np.ndarray:
    """The user's last `L` clicked items strictly before each impression's request time, (N, L), left-padded with 0."""
    span = int(timestamp.max()) + 1
    key = user_id.astype(np.int64) * span + timestamp  # orders by user, then time
    ck = np.flatnonzero(click)
    order = np.argsort(key[ck], kind="stable")
    click_key, click_item = key[ck][order], item_id[ck][order]
    before = np.searchsorted(click_key, key, side="left")  # (N,) clicks of earlier (user, time)
    user_start = np.searchsorted(click_key, user_id.astype(np.int64) * span, side="left")  # (N,)
    idx = before[:, None] - np.arange(L, 0, -1)[None, :]  # (N, L)
    valid = idx >= user_start[:, None]
    return np.where(valid, click_item[np.clip(idx, 0, None)] if len(click_item) else 0, 0).astype(
        np.int32
    )


def _affine_clicks(
    p: WorldParams,
    item_vec: np.ndarray,
    req_user: np.ndarray,
    req_time: np.ndarray,
    cand: np.ndarray,
    rel_logit: np.ndarray,
    examined: np.ndarray,
    click_draw: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The opt-in history affinity: relevance logits and clicks, (R, P) each, when relevance
    depends on the items the user clicked before (`history_affinity` != 0).

    With s_j the cosine of the candidate's and history item j's `item_vec` (I, D) (the world's
    second taste axis, which owes nothing to the category), over the `history_len` items the user
    clicked strictly before the request (the `hist_items` of the log):

        relevance logit += history_affinity * (max_j s_j - mean_j s_j)     (0 for an empty history)

    the part of the candidate's similarity to the history that its mean over the history does not
    hold. Clicks then depend on earlier clicks, so they are drawn in time order: round k draws
    every user's k-th request at once (one user's requests are the only ones that shape its
    history), from the same uniforms `click_draw` as the world without affinity, and no new
    randomness. A request at the same second as the user's previous one reads the history from
    before that second, as `_click_history` does.
    """
    L, U = p.history_len, p.num_users
    unit = item_vec / np.linalg.norm(item_vec, axis=1, keepdims=True)  # (I, D)
    by_user = np.argsort(req_user, kind="stable")  # requests of a user in time order
    first = np.searchsorted(req_user[by_user], req_user[by_user], side="left")
    rank = np.empty(len(req_user), dtype=np.int64)
    rank[by_user] = np.arange(len(req_user)) - first  # k: the request's place among its user's
    logit, click = rel_logit.copy(), np.zeros_like(examined)
    buf = np.full((U, L), -1, dtype=np.int64)  # each user's last L clicks, oldest first; -1 none
    stamp_buf, stamp_time = buf.copy(), np.full(U, -1, dtype=np.int64)
    for k in range(int(rank.max()) + 1 if len(rank) else 0):
        idx = np.flatnonzero(rank == k)  # (n,) requests, one per user
        u, t = req_user[idx], req_time[idx]
        later = t > stamp_time[u]  # a new second: the history is the buffer as it is now
        stamp_buf[u[later]], stamp_time[u] = buf[u[later]], t
        hist = stamp_buf[u]  # (n, L)
        valid = hist >= 0
        s = np.einsum("npd,nld->npl", unit[cand[idx]], unit[np.maximum(hist, 0)])  # (n, P, L)
        count = valid.sum(1)[:, None]  # (n, 1)
        top = np.where(valid[:, None, :], s, -np.inf).max(-1, initial=-np.inf)  # (n, P)
        mean = (s * valid[:, None, :]).sum(-1) / np.maximum(count, 1)  # (n, P)
        logit[idx] += p.history_affinity * np.where(count > 0, top - mean, 0.0)
        click[idx] = examined[idx] & (click_draw[idx] < _sigmoid(logit[idx]))
        # append this request's clicks, in slate order, keeping the last L
        both = np.concatenate([buf[u], np.where(click[idx], cand[idx], -1)], axis=1)  # (n, L + P)
        order = np.argsort(both >= 0, axis=1, kind="stable")  # the empty slots first
        buf[u] = np.take_along_axis(both, order, axis=1)[:, -L:]
    return logit, click


def cached_world(params: WorldParams, cache_dir: str | Path) -> Path:
    """The world's parquet file under `cache_dir`, generated once per parameter set."""
    return cached_parquet(
        "synthetic_video",
        lambda: generate(params),
        cache_dir=cache_dir,
        params=params.identity(),
        version=GENERATOR_VERSION,
        row_group_size=256_000,
    )


class SyntheticVideoDataModule(RowSelection, RankDataModule):
    """The synthetic world as a ranking data set.

    Args:
        cache_dir: where generated worlds are cached, one parquet file per parameter set.
        select_rows: opt-in, `{where: <binary column>, splits: [train, val]}`: those splits keep
            only the rows where the column is 1, e.g. a CVR model on the clicked impressions
            alone (`recolab.data.selection`); None keeps every row.
        **kwargs: `WorldParams` fields (`num_users`, `num_items`, `num_impressions`, ...,
            `world_seed`) and `RankDataModule` arguments.
    """

    kwargs_fields = WorldParams  # the **kwargs it takes are WorldParams fields, then its parent's

    def __init__(
        self, *, cache_dir: str, select_rows: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        fields = WorldParams.__dataclass_fields__
        self.params = WorldParams(**{k: kwargs.pop(k) for k in list(kwargs) if k in fields})
        super().__init__(**kwargs)
        self.select_rows = select_rows_spec(select_rows, self.required_columns)
        self.source = WorldSource(self.params, cache_dir)


class WorldSource:
    """The generated world's impressions (one cached parquet file per parameter set)."""

    def __init__(self, params: WorldParams, cache_dir: str) -> None:
        self.params, self.cache_dir = params, cache_dir

    def prepare(self) -> None:
        cached_world(self.params, self.cache_dir)

    def load(self, columns: list[str]) -> tuple[str, pa.Table]:
        path = cached_world(self.params, self.cache_dir)
        return str(path), pq.read_table(path, columns=columns)
