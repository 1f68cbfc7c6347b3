"""The synthetic short-video world (DESIGN.md section 5): a log that knows its own truth.

Users and items have latent vectors; items have Zipf popularity, log-normal durations and a
category. A logging policy that favours popular (and somewhat relevant) items fills slates of
`slate_size` positions. Then, per impression:

    examined   ~ Bernoulli(gt_examination = position ** -examination_power)
    click      = examined * Bernoulli(gt_relevance = sigmoid(relevance logit))
    like       = click * Bernoulli(sigmoid(like logit))
    watch_time = examined * duration * sigmoid(interest logit - duration_bias * log(duration / 30) + noise)

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
Everything is vectorized numpy: a million impressions generate in a few seconds.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recolab.data.datamodule import RankDataModule
from recolab.data.source import cache_key, cached_parquet

log = logging.getLogger(__name__)

#: Bump when the generator's output changes, so caches regenerate.
GENERATOR_VERSION = 1
DAY = 86_400


@dataclass(frozen=True)
class WorldParams:
    """The world's parameters (the fields' order is the config's; see the module docstring)."""

    # Size: users, items, impressions (rows), positions per slate.
    num_users: int = 20_000
    num_items: int = 5_000
    num_impressions: int = 1_000_000
    slate_size: int = 10
    # Items: latent dimension, categories, Zipf popularity skew.
    latent_dim: int = 16
    num_categories: int = 20
    zipf_exponent: float = 1.1
    # The logging policy: weights of log popularity and of the relevance logit.
    popularity_weight: float = 1.0
    policy_relevance_weight: float = 0.5
    # Behaviour: position bias, like-vs-taste correlation, watch-time duration bias.
    examination_power: float = 0.8
    task_correlation: float = 0.7
    duration_bias: float = 0.5
    # The log: clicked items in `hist_items`, days spanned, the generator's seed.
    history_len: int = 20
    days: int = 30
    world_seed: int = 0

    def __post_init__(self) -> None:
        positive = "num_users num_items num_impressions slate_size latent_dim num_categories days"
        for name in positive.split():
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if not -1.0 <= self.task_correlation <= 1.0:
            raise ValueError(
                f"data.task_correlation must be in [-1, 1], got {self.task_correlation}"
            )

    def key(self) -> str:
        """The world's cache key (`recolab.data.source.cache_key` of these parameters)."""
        return cache_key([], asdict(self), GENERATOR_VERSION)


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
    click = examined & (rng.random((R, P)) < gt_relevance)
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
    return pa.table(columns)


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


def cached_world(params: WorldParams, cache_dir: str | Path) -> Path:
    """The world's parquet file under `cache_dir`, generated once per parameter set."""
    return cached_parquet(
        "synthetic_video",
        lambda: generate(params),
        cache_dir=cache_dir,
        params=asdict(params),
        version=GENERATOR_VERSION,
        row_group_size=256_000,
    )


class SyntheticVideoDataModule(RankDataModule):
    """The synthetic world as a ranking data set.

    Args:
        cache_dir: where generated worlds are cached, one parquet file per parameter set.
        **kwargs: `WorldParams` fields (`num_users`, `num_items`, `num_impressions`, ...,
            `world_seed`) and `RankDataModule` arguments.
    """

    def __init__(self, *, cache_dir: str, **kwargs: Any) -> None:
        fields = WorldParams.__dataclass_fields__
        self.params = WorldParams(**{k: kwargs.pop(k) for k in list(kwargs) if k in fields})
        super().__init__(**kwargs)
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
