"""The Open Bandit Dataset (Saito, Aihara, Matsutani and Narita, "Open Bandit Dataset and
Pipeline: Towards Realistic and Reproducible Off-Policy Evaluation", NeurIPS 2021 Datasets and
Benchmarks), small version: ZOZOTOWN fashion recommendations shown at three positions.

`data.path` (null: `../shared/data/open-bandit-dataset-small` beside the repository) is the
dataset folder, holding `{bts,random}/{all,men,women}/{campaign}.csv` (the
impression logs) and `item_context.csv` beside each. Two logging policies: `bts` (Bernoulli
Thompson sampling, which places items where it expects clicks) and `random` (items and positions
drawn uniformly at random). Models train on the `bts` log and are tested on the `random` log,
where the position carries no information about the item: the test a position-bias head must
pass. The last `val_fraction` of the `bts` log (by time) is the validation split.

The logs are converted once to parquet under `cache_dir` (`recolab.data.source`: a changed
file is converted again). Columns of the cached table:

- `policy`, `campaign` (strings); `timestamp` (int64 microseconds since the epoch);
- `item_id` (int64, `campaign index * 1000 + item id`: items of different campaigns stay
  distinct), `position` (1 left, 2 center, 3 right), `click` (0/1), `propensity_score`;
- `user_feature_0..3` and `item_feature_1..3` (the hashed categorical features as int64 codes,
  0 for a missing value), `item_feature_0` (numeric), `affinity` (the user's affinity to the
  shown item: the log's `user-item_affinity_<item id>` column);
- `user_id` (int64 code of the four user features together: the log has no user id, so this
  pseudo-user groups GAUC).

`max_rows` keeps the earliest rows of each (policy, campaign) log, for quick runs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from annotated_types import Gt, Lt

from recolab.data.datamodule import DataError, RankDataModule
from recolab.data.source import cached_parquet, check_max_rows, read_csv, require
from recolab.data.validation import check_columns
from recolab.params import Count, checked

log = logging.getLogger(__name__)

#: Bump when the converted table changes, so caches are converted again.
LOADER_VERSION = 1
POLICIES = ("bts", "random")
CAMPAIGNS = ("all", "men", "women")
USER_FEATURES = tuple(f"user_feature_{i}" for i in range(4))
ITEM_CATEGORICAL = tuple(f"item_feature_{i}" for i in range(1, 4))
LOG_COLUMNS = ("timestamp", "item_id", "position", "click", "propensity_score", *USER_FEATURES)
ITEM_COLUMNS = ("item_id", "item_feature_0", *ITEM_CATEGORICAL)
#: Where `path: null` points: ../shared/data/open-bandit-dataset-small beside the repository (src layout).
DEFAULT_PATH = (
    Path(__file__).resolve().parents[3].parent / "shared" / "data" / "open-bandit-dataset-small"
)


def source_files(root: Path, campaigns: list[str]) -> list[tuple[str, str, Path, Path]]:
    """(policy, campaign, log csv, item_context csv) for each log, or a DataError naming what is missing."""
    hint = "; expected the Open Bandit Dataset with bts/ and random/"
    require(root, "folder", hint=hint)
    out = []
    for policy in POLICIES:
        for campaign in campaigns:
            folder = root / policy / campaign
            log_csv, items_csv = folder / f"{campaign}.csv", folder / "item_context.csv"
            for f in (log_csv, items_csv):
                require(f, "file", f"data.path={root}, data.campaigns={campaigns}")
            out.append((policy, campaign, log_csv, items_csv))
    return out


def _numeric(
    path: Path, frame: pd.DataFrame, name: str, *, allowed: tuple[float, ...] | None = None
) -> np.ndarray:
    """Column `name` as float64, or a DataError quoting the first bad value and its row."""
    values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if allowed is not None:
        bad |= ~np.isin(values, allowed)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        expect = f"one of {list(allowed)}" if allowed is not None else "finite numbers"
        raise DataError(
            f"{path}: column {name!r} must hold {expect}; row {i} has {str(frame[name].iloc[i])!r} "
            f"({int(bad.sum())} bad value(s) in the column)"
        )
    return values


def read_log(path: Path, items_path: Path, campaign_index: int) -> pd.DataFrame:
    """One (policy, campaign) log joined with its item features, checked column by column."""
    frame = read_csv(path, LOG_COLUMNS, what="the CSV", shown=12, index_col=0)
    items = read_csv(items_path, ITEM_COLUMNS, what="the CSV", shown=12, index_col=0)
    item = _numeric(path, frame, "item_id").astype(np.int64)
    item_ids = _numeric(items_path, items, "item_id").astype(np.int64)
    unknown = ~np.isin(item, item_ids)
    if unknown.any():
        raise DataError(
            f"{path}: column 'item_id' holds {int(unknown.sum())} id(s) missing from {items_path}, e.g. {int(item[unknown][0])}"
        )
    affinity_cols = [f"user-item_affinity_{i}" for i in np.unique(item)]
    missing = [c for c in affinity_cols if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing[:5]} (the affinity to each shown item)"
        )
    affinity = frame[affinity_cols].to_numpy(dtype=np.float64)  # (N, shown items)
    column_of = {int(i): k for k, i in enumerate(np.unique(item))}
    out = pd.DataFrame(
        {
            "timestamp": _timestamps(path, frame),
            "item_id": campaign_index * 1000 + item,
            "position": _numeric(path, frame, "position", allowed=(1.0, 2.0, 3.0)).astype(np.int32),
            "click": _numeric(path, frame, "click", allowed=(0.0, 1.0)).astype(np.float32),
            "propensity_score": _numeric(path, frame, "propensity_score").astype(np.float32),
            "affinity": affinity[np.arange(len(item)), [column_of[int(i)] for i in item]].astype(
                np.float32
            ),
        }
    )
    for name in USER_FEATURES:
        out[name] = frame[name].astype("string").to_numpy(dtype=object)
    if len(np.unique(item_ids)) != len(item_ids):
        raise DataError(f"{items_path}: column 'item_id' repeats ids; each item needs one row")
    by_id = items.set_index(pd.Index(item_ids))
    by_id["item_feature_0"] = _numeric(items_path, items, "item_feature_0")
    out["item_feature_0"] = by_id["item_feature_0"].loc[item].to_numpy(dtype=np.float32)
    for name in ITEM_CATEGORICAL:
        out[name] = by_id[name].loc[item].astype("string").to_numpy(dtype=object)
    return out


def _timestamps(path: Path, frame: pd.DataFrame) -> np.ndarray:
    parsed = pd.to_datetime(frame["timestamp"], errors="coerce", utc=True)
    bad = parsed.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}: column 'timestamp' must hold dates; row {i} has {frame['timestamp'].iloc[i]!r}"
        )
    return (parsed.astype("int64") // 1000).to_numpy()  # microseconds


def convert(files: list[tuple[str, str, Path, Path]]) -> pa.Table:
    """The cached table (see the module docstring) from the source logs."""
    frames = []
    for policy, campaign, log_csv, items_csv in files:
        f = read_log(log_csv, items_csv, CAMPAIGNS.index(campaign))
        f.insert(0, "campaign", campaign)
        f.insert(0, "policy", policy)
        frames.append(f)
    table = pd.concat(frames, ignore_index=True)
    # Hashed categorical features -> int64 codes (1.., 0 for missing), shared by every log.
    for name in (*USER_FEATURES, *ITEM_CATEGORICAL):
        codes, _ = pd.factorize(table[name], use_na_sentinel=True)
        table[name] = codes.astype(np.int64) + 1
    table["user_id"] = table.groupby(list(USER_FEATURES), sort=True).ngroup().astype(np.int64) + 1
    return pa.Table.from_pandas(table, preserve_index=False)


def cached_open_bandit(path: str | Path, campaigns: list[str], cache_dir: str | Path) -> Path:
    """The parquet conversion of the logs under `cache_dir`, converting on first use."""
    files = source_files(Path(path), campaigns)
    return cached_parquet(
        f"open_bandit-{'_'.join(campaigns)}",
        lambda: convert(files),
        cache_dir=cache_dir,
        files=[f for _, _, a, b in files for f in (a, b)],
        params={"campaigns": list(campaigns)},
        version=LOADER_VERSION,
    )


class OpenBanditDataModule(RankDataModule):
    """Open Bandit as a ranking data set: train on the `bts` log, test on the `random` log.

    Args:
        path: the dataset folder (holding `bts/` and `random/`); None for `DEFAULT_PATH`.
        cache_dir: where the parquet conversion goes.
        campaigns: which campaigns to read (`all`, `men`, `women`); their items stay distinct.
        val_fraction: the last share of the `bts` log, by time, held out for validation.
        max_rows: keep at most this many rows (the earliest) of each (policy, campaign) log.
        **kwargs: `RankDataModule` arguments (features, tasks, meta, batch sizes, seed); the
            split is fixed by the policies (`split` must be left out).
    """

    @checked
    def __init__(
        self,
        *,
        path: str | None = None,
        cache_dir: str,
        campaigns: list[str] = CAMPAIGNS,
        val_fraction: Annotated[float, Gt(0), Lt(1)] = 0.1,
        max_rows: Count | None = None,
        **kwargs: Any,
    ) -> None:
        if "split" in kwargs and kwargs["split"] not in (None, {}):
            raise ValueError(
                "data.split: the Open Bandit split is fixed (train/val: the bts log, test: the random log); remove data.split"
            )
        kwargs["split"] = {"kind": "column", "column": "split"}
        super().__init__(**kwargs)
        self.campaigns = list(campaigns)
        unknown = [c for c in self.campaigns if c not in CAMPAIGNS]
        if unknown or not self.campaigns:
            raise ValueError(
                f"data.campaigns: expected a non-empty subset of {list(CAMPAIGNS)}, got {self.campaigns}"
            )
        path = str(DEFAULT_PATH) if path is None else path
        max_rows = check_max_rows(max_rows)
        self.source = OpenBanditSource(path, self.campaigns, cache_dir, val_fraction, max_rows)


class OpenBanditSource:
    """The cached logs with a `split` column: test is the `random` log, validation the last
    `val_fraction` of each campaign's `bts` log by time, training the rest of it; at most
    `max_rows` (the earliest) of each (policy, campaign) log."""

    def __init__(
        self,
        path: str,
        campaigns: list[str],
        cache_dir: str,
        val_fraction: float,
        max_rows: int | None,
    ) -> None:
        self.path, self.campaigns, self.cache_dir = path, campaigns, cache_dir
        self.val_fraction, self.max_rows = val_fraction, max_rows

    def prepare(self) -> None:
        cached_open_bandit(self.path, self.campaigns, self.cache_dir)

    def load(self, required: list[str]) -> tuple[str, pa.Table]:
        out = cached_open_bandit(self.path, self.campaigns, self.cache_dir)
        columns = [c for c in required if c != "split"]
        table = pq.read_table(
            out, columns=list(dict.fromkeys([*columns, "policy", "campaign", "timestamp"]))
        )
        check_columns(str(out), [*table.column_names, "split"], required)
        frame = table.to_pandas()
        frame = frame.sort_values(["policy", "campaign", "timestamp"], kind="stable")
        if self.max_rows is not None:
            frame = frame.groupby(["policy", "campaign"], sort=False).head(self.max_rows)
        # Validation: the last val_fraction of each campaign's bts log, by time.
        rank = frame.groupby(["policy", "campaign"]).cumcount().to_numpy()
        size = frame.groupby(["policy", "campaign"])["timestamp"].transform("size").to_numpy()
        bts = (frame["policy"] == "bts").to_numpy()
        split = np.where(
            ~bts, "test", np.where(rank >= np.ceil(size * (1 - self.val_fraction)), "val", "train")
        )
        frame = frame.assign(split=split)
        # The timestamp stays: two impressions alike in every feature are still two events.
        keep = list(dict.fromkeys([*required, "timestamp"]))
        return str(self.path), pa.Table.from_pandas(frame[keep], preserve_index=False)
