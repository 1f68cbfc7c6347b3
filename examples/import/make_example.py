"""Write examples/import/log.csv: a small short-video log in a user's own column names.

Seeded, so the file is the same on every run: python examples/import/make_example.py
Then: python -m recolab data import path=examples/import/log.csv schema=examples/import/schema.yaml
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

ROWS, USERS, ITEMS, SLOTS = 800, 60, 100, 8
CATEGORIES = ["news", "music", "sports", "comedy", "food"]
DEVICES = ["ios", "android", "web"]


def make(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    taste = rng.normal(size=(USERS, 4))
    style = rng.normal(size=(ITEMS, 4))
    popularity = 1.0 / np.arange(1, ITEMS + 1) ** 0.8
    user = rng.integers(0, USERS, ROWS)
    item = rng.choice(ITEMS, ROWS, p=popularity / popularity.sum())
    slot = rng.integers(1, SLOTS + 1, ROWS)
    seconds = np.round(np.exp(rng.normal(3.3, 0.6, ITEMS)), 1)  # about 27 s
    relevance = 1 / (1 + np.exp(-(taste[user] * style[item]).sum(1)))
    clicked = rng.random(ROWS) < relevance * 0.9 ** (slot - 1)
    liked = clicked & (rng.random(ROWS) < relevance * 0.5)
    watch = np.where(clicked, np.round(seconds[item] * rng.beta(2, 2, ROWS), 1), 0.0)
    start = np.datetime64("2024-05-01T00:00:00")
    ts = start + np.sort(rng.integers(0, 14 * 86400, ROWS)).astype("timedelta64[s]")
    return pd.DataFrame({
        "uid": [f"u{u:03d}" for u in user],
        "video_id": 1000 + item,
        "ts": pd.to_datetime(ts).strftime("%Y-%m-%dT%H:%M:%S"),
        "slot": slot,
        "video_seconds": seconds[item],
        "clicked": clicked.astype(int),
        "liked": liked.astype(int),
        "watch_seconds": watch,
        "category": np.array(CATEGORIES)[item % len(CATEGORIES)],
        "device": np.array(DEVICES)[user % len(DEVICES)],
        "user_age": 18 + (user * 7) % 50,
    })


if __name__ == "__main__":
    out = Path(__file__).with_name("log.csv")
    make().to_csv(out, index=False)
    print(f"wrote {out}")
