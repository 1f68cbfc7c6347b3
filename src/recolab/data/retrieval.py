"""Retrieval data: interactions -> (user, positive item, the history before it), split in time.

A source (`recolab.data.source.Source`, composed as `self.source`) gives one row per positive
interaction with `user_id`, `item_id` and `timestamp` (plus any user or item feature columns).
Everything else is shared:

1. validation (`recolab.data.validation`, as the ranking modules run it): the columns exist, ids
   and timestamps are integers without nulls, within int64 (a `DataError` names the source, the
   column and the first bad rows);
2. each user's interactions are ordered by time, ties kept in the source's row order; a repeated
   (user, item) pair keeps its first occurrence only, so a held-out item is never also a
   training item;
3. users with fewer than `min_interactions` interactions are left out (the count is logged and
   kept in `summary`);
4. leave-second-last-out per user (DESIGN.md sections 2 and 6): the last interaction is the test
   target, the one before it the validation target, the rest is training. Training sees neither
   held-out item (not as a row, not in a history); validation sees the training items only (its
   history and exclusions end before it), so the test item never enters a choice made on
   validation (early stopping, checkpoints, sweeps, `recolab select`); test sees the validation
   item as what it is, the user's interaction before the test one: in its history and among the
   items left out of its ranking. After step 2 the two held-out items of a user are always two
   different items, and every user with `min_interactions` (>= 3) has one of each;
5. vocabularies (users, items, each feature) are fitted on the training split; ids unseen there
   map to 0 (out of vocabulary): such an item is not in the corpus, so a held-out target that
   is OOV can never be retrieved and counts as a miss (their number is in `summary`);
6. every row's history is the last `history_len` items of the same user strictly before it in
   that order (most recent last, left-padded with 0; OOV items read as padding).

Training batches are `ColumnarBatches` of `{"features": {user_id, item_id, hist_items, <user
features>}}`; evaluation batches hold one row per user, the user's target item and the items to
leave out of the ranking: everything the user interacted with before the target (the training
items for validation; training items and the validation item for test), as a CSR pair in the
batch's `seen` group (`recolab.index` format).

Shapes: B batch, L history length, U users, I items.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytorch_lightning as pl
import torch
from annotated_types import Ge
from pydantic import StrictBool
from torch.utils.data import DataLoader

from recolab.data import validation
from recolab.data.checks import DataError
from recolab.data.columnar import (
    ColumnarBatches,
    Columns,
    Vocabulary,
    resolve_pin_memory,
    shard_of,
    vocabs_from_state,
    vocabs_state,
)
from recolab.data.schema import Schema, SequenceFeature, SparseFeature
from recolab.data.source import Sourced
from recolab.data.synthetic_video import WorldParams, WorldSource
from recolab.params import Count, Count0, Probability, checked

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
ID_COLUMNS = ("user_id", "item_id", "timestamp")


class SequenceBatches(ColumnarBatches):
    """Columnar batches of interactions whose histories and exclusions are cut from the user sequences.

    Only per-row scalars are stored; a batch's `hist_items` (B, L) and, for evaluation, its
    `seen` CSR are built from the flat user-time ordered item sequence when the batch is made,
    so memory stays O(interactions) rather than O(interactions x L).

    Args:
        columns: `{"features": {...}, ...}` per-row tensors, plus `{"position": {"row": (N,)}}`:
            each row's position in the flat sequence.
        sequence_items: (S,) long item ids of all interactions, ordered by user, then time.
        sequence_start: (S,) long position of each interaction's user's first interaction.
        history_len: L.
        with_seen: add `batch["seen"] = {"indptr": (B + 1,), "indices": (nnz,)}`, every item of
            the row's user before the row (OOV ids left out): the items to exclude from its ranking.
        **kwargs: `ColumnarBatches` arguments.
    """

    def __init__(
        self,
        columns: Columns,
        *,
        sequence_items: torch.Tensor,
        sequence_start: torch.Tensor,
        history_len: int,
        with_seen: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(columns, **kwargs)
        self.sequence_items = sequence_items
        self.sequence_start = sequence_start
        self.history_len = history_len
        self.with_seen = with_seen

    def __getitem__(self, i: int) -> Columns:
        batch = super().__getitem__(i)
        rows = batch.pop("position")["row"]  # (B,)
        start = self.sequence_start[rows]  # (B,)
        idx = rows.unsqueeze(1) - torch.arange(self.history_len, 0, -1).unsqueeze(0)  # (B, L)
        hist = self.sequence_items[idx.clamp_min(0)].masked_fill(
            idx < start.unsqueeze(1), 0
        )  # (B, L)
        batch["features"]["hist_items"] = hist
        if self.with_seen:
            lengths = rows - start  # (B,)
            owner = torch.repeat_interleave(torch.arange(len(rows)), lengths)  # (nnz,)
            offset = torch.arange(int(lengths.sum())) - (lengths.cumsum(0) - lengths)[owner]
            items = self.sequence_items[start[owner] + offset]  # (nnz,)
            kept = items > 0
            indptr = torch.zeros(len(rows) + 1, dtype=torch.long)
            indptr[1:] = torch.bincount(owner[kept], minlength=len(rows)).cumsum(0)
            batch["seen"] = {"indptr": indptr, "indices": items[kept]}
        return batch


class RetrievalDataModule(Sourced, pl.LightningDataModule):
    """Shared machinery of the retrieval data sets (see the module docstring).

    Args:
        history_len: L, the most recent earlier items kept per row.
        min_interactions: users with fewer (distinct) interactions are left out; at least 3
            (one test, one validation, one training interaction).
        user_features: per-user categorical columns given to the user tower (e.g. `user_age`).
        item_features: per-item categorical columns given to the item tower (e.g. `category`);
            each becomes a `(num_items + 1,)` lookup table (`model_inputs()["item_features"]`).
        batch_size: training rows per batch.
        eval_batch_size: users per evaluation batch.
        pin_memory: pin batches for host-to-GPU copies; `auto` pins when training on a GPU.
        seed: seeds the shuffling of training rows.
    """

    @checked
    def __init__(
        self,
        *,
        history_len: Count = 50,
        min_interactions: Annotated[int, Ge(3)] = 5,
        user_features: Sequence[str] = (),
        item_features: Sequence[str] = (),
        batch_size: Count = 1024,
        eval_batch_size: Count = 2048,
        pin_memory: StrictBool | Literal["auto"] = "auto",
        seed: Count0 = 0,
    ) -> None:
        super().__init__()
        self.history_len, self.min_interactions = history_len, min_interactions
        self.user_feature_names = list(user_features)
        self.item_feature_names = list(item_features)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.pin_memory, self.seed = pin_memory, seed
        self.vocabs: dict[str, Vocabulary] = {}
        self.data: dict[str, Columns] = {}
        self.sequence: tuple[torch.Tensor, torch.Tensor] | None = None
        self.item_feature_tables: dict[str, torch.Tensor] = {}
        self.item_counts: torch.Tensor | None = None
        self.summary: dict[str, Any] = {}
        self.schema: Schema | None = None
        self.source_path = "<unset>"

    @property
    def required_columns(self) -> list[str]:
        return list(
            dict.fromkeys([*ID_COLUMNS, *self.user_feature_names, *self.item_feature_names])
        )

    # -- Lightning hooks ----------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        if self.data:
            return
        self.source_path, table = self._load()
        self._build(self._validate(table))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True, batch_size=self.batch_size, with_seen=False)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def state_dict(self) -> dict[str, Any]:
        return {"vocabs": vocabs_state(self.vocabs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.vocabs = vocabs_from_state(state["vocabs"])

    def model_inputs(self) -> dict[str, Any]:
        """What a recaller may take (see `recolab.train.build` and `recolab.models.recall`): the
        schema's feature specs by role, the user tower's (`user_features`: name -> vocabulary)
        and the item tower's (`item_features`: name -> (each item's id in it, vocabulary)), the
        ids themselves apart."""
        user, item = (
            [f for f in self.schema.features_of(role) if isinstance(f, SparseFeature)]
            for role in ("user", "item")
        )
        return {
            "num_users": self.vocabs["user_id"].size - 1,
            "num_items": self.num_items,
            "history_len": self.history_len,
            "user_features": {f.name: f.vocab_size for f in user if f.name != "user_id"},
            "item_features": {
                f.name: (self.item_feature_tables[f.name], f.vocab_size)
                for f in item
                if f.name != "item_id"
            },
        }

    def module_inputs(self) -> dict[str, Any]:
        """What the recall pipeline may take (see `recolab.pipelines.recall.RecallModule`)."""
        return {
            "num_items": self.num_items,
            "item_counts": self.item_counts,
            "data_summary": dict(self.summary),
        }

    @property
    def num_items(self) -> int:
        return self.vocabs["item_id"].size - 1

    # -- internals ----------------------------------------------------------------------------

    def _validate(self, table: pa.Table) -> pa.Table:
        """`recolab.data.validation.validate`, as the ranking modules run it: ids (and the
        timestamp) are integers, without nulls, within int64; the special columns' checks. A
        repeated interaction is no bad row here: `_build` keeps its first occurrence. Returns
        the table with dictionaries decoded."""
        validation.check_columns(self.source_path, table.column_names, self.required_columns)
        if table.num_rows == 0:
            raise DataError(f"{self.source_path}: no interactions (after selecting the positives)")
        spec = validation.TableSpec(
            required=self.required_columns,
            sparse=[c for c in self.required_columns if c != "timestamp"],
            integers=ID_COLUMNS,
            duplicates=False,
            fix="Fix the data.",
        )
        return validation.validate(table, spec, self.source_path)[0]

    def _build(self, table: pa.Table) -> None:
        col = {
            name: table.column(name).to_numpy(zero_copy_only=False)
            for name in self.required_columns
        }
        users, items, ts = (col[c].astype(np.int64) for c in ID_COLUMNS)
        n_raw = len(users)
        # Order by user, then time; ties keep the source's row order (lexsort is stable).
        order = np.lexsort((np.arange(n_raw), ts, users))
        # A repeated (user, item) keeps its earliest occurrence.
        _, user_code = np.unique(users[order], return_inverse=True)
        _, item_code = np.unique(items[order], return_inverse=True)
        pair = user_code.astype(np.int64) * (int(item_code.max()) + 1) + item_code
        _, first = np.unique(pair, return_index=True)
        keep = order[np.sort(first)]  # rows of the source, in (user, time) order
        n_distinct = len(keep)
        # The minimum-interactions filter (rows are grouped by user, users ascending).
        uniq_users, counts = np.unique(users[keep], return_counts=True)
        enough = counts >= self.min_interactions
        row_ok = np.repeat(enough, counts)
        keep = keep[row_ok]
        if len(keep) == 0:
            raise DataError(
                f"{self.source_path}: no user has {self.min_interactions} or more distinct interactions "
                f"(data.min_interactions); {len(uniq_users)} users, {n_raw} interactions"
            )
        self.summary = {
            "source": self.source_path,
            "interactions_read": int(n_raw),
            "duplicate_interactions_dropped": int(n_raw - n_distinct),
            "users_read": int(len(uniq_users)),
            "users_filtered": int((~enough).sum()),
            "interactions_filtered": int(counts[~enough].sum()),
            "min_interactions": self.min_interactions,
        }
        log.info(
            "%s: %d of %d users have fewer than %d interactions and are left out (%d interactions)",
            self.source_path,
            self.summary["users_filtered"],
            len(uniq_users),
            self.min_interactions,
            self.summary["interactions_filtered"],
        )
        col = {name: values[keep] for name, values in col.items()}
        users = col["user_id"].astype(np.int64)
        n = len(users)
        # Position of each row within its user's sequence, counted from the start and from the end.
        boundaries = np.flatnonzero(
            np.r_[True, users[1:] != users[:-1]]
        )  # (U,) first row of each user
        lengths = np.diff(np.r_[boundaries, n])
        user_start = np.repeat(boundaries, lengths)  # (N,)
        from_end = np.repeat(boundaries + lengths, lengths) - 1 - np.arange(n)  # 0 = last
        split = np.where(from_end == 0, 2, np.where(from_end == 1, 1, 0))  # train 0, val 1, test 2
        train = split == 0

        if not self.vocabs:  # a checkpoint's vocabularies win (see load_state_dict)
            for name in ["user_id", "item_id", *self.user_feature_names]:
                self.vocabs[name] = Vocabulary.fit(col[name][train])
            for name in self.item_feature_names:
                self.vocabs[name] = Vocabulary.fit(col[name][train])
        item_ids = self.vocabs["item_id"].encode(col["item_id"])  # (N,) 0 = OOV
        user_ids = self.vocabs["user_id"].encode(col["user_id"])
        num_items = self.num_items

        # Static item features: the value on the item's first training row.
        for name in self.item_feature_names:
            lookup = np.zeros(num_items + 1, dtype=np.int64)
            rows = np.flatnonzero(train & (item_ids > 0))
            ids_, first_row = np.unique(item_ids[rows], return_index=True)
            lookup[ids_] = self.vocabs[name].encode(col[name][rows[first_row]])
            self.item_feature_tables[name] = torch.from_numpy(lookup)
        counts_ = np.bincount(item_ids[train], minlength=num_items + 1).astype(np.int64)
        counts_[0] = 0
        self.item_counts = torch.from_numpy(counts_)

        # Histories and exclusions are cut from this sequence per batch (`SequenceBatches`).
        self.sequence = (torch.from_numpy(item_ids), torch.from_numpy(user_start.astype(np.int64)))
        user_feats = {name: self.vocabs[name].encode(col[name]) for name in self.user_feature_names}
        for s, name in enumerate(SPLITS):
            rows = np.flatnonzero(split == s)
            group: Columns = {"features": {"user_id": torch.from_numpy(user_ids[rows])}}
            if name == "train":
                group["features"]["item_id"] = torch.from_numpy(item_ids[rows])
            group["features"].update({k: torch.from_numpy(v[rows]) for k, v in user_feats.items()})
            if name != "train":
                group["targets"] = {"item_id": torch.from_numpy(item_ids[rows][:, None])}  # (U, 1)
            group["position"] = {"row": torch.from_numpy(rows.astype(np.int64))}
            self.data[name] = group
        self.schema = self._schema()
        oov_val = int((item_ids[split == 1] == 0).sum())
        oov_test = int((item_ids[split == 2] == 0).sum())
        self.summary.update(
            users=int(len(boundaries)),
            items=num_items,
            train_interactions=int(train.sum()),
            val_users=int((split == 1).sum()),
            test_users=int((split == 2).sum()),
            val_targets_out_of_vocabulary=oov_val,
            test_targets_out_of_vocabulary=oov_test,
            history_len=self.history_len,
        )
        log.info(
            "data %s: %d users, %d items, %d training interactions; %d test targets are not training items (misses)",
            self.source_path,
            len(boundaries),
            num_items,
            int(train.sum()),
            oov_test,
        )

    def _schema(self) -> Schema:
        """The features as specs with their roles: the user tower's (`user_id`, the user
        features, the history of items) and the item tower's (`item_id`, the item features)."""
        user = list(dict.fromkeys(["user_id", *self.user_feature_names]))
        item = [n for n in dict.fromkeys(["item_id", *self.item_feature_names]) if n not in user]
        return Schema(
            sparse=tuple(SparseFeature(n, self.vocabs[n].size) for n in [*user, *item]),
            sequences=(
                SequenceFeature(
                    "hist_items", self.vocabs["item_id"].size, self.history_len, "item_id"
                ),
            ),
            user=(*user, "hist_items"),
            item=tuple(item),
        )

    def _eval_loader(self, split: str) -> DataLoader:
        return self._loader(split, shuffle=False, batch_size=self.eval_batch_size, with_seen=True)

    def _loader(self, split: str, *, shuffle: bool, batch_size: int, with_seen: bool) -> DataLoader:
        rank, world = shard_of(self.trainer)
        items, start = self.sequence
        dataset = SequenceBatches(
            self.data[split],
            sequence_items=items,
            sequence_start=start,
            history_len=self.history_len,
            with_seen=with_seen,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=self.seed,
            rank=rank,
            world_size=world,
        )
        pin = resolve_pin_memory(self.pin_memory, self.trainer)
        return DataLoader(dataset, batch_size=None, shuffle=False, pin_memory=bool(pin))


class SyntheticRetrievalDataModule(RetrievalDataModule):
    """The retrieval view of the synthetic short-video world (DESIGN.md section 5).

    A positive is a click watched for at least `min_watch_ratio` of the video's duration
    (`click == 1` and `watch_time / duration >= min_watch_ratio`, 0.3 by default). Item feature:
    `category`; user feature: `user_age`. `zipf_exponent` sets the popularity skew of the world
    (and of the logging policy that chose what users saw).

    Args:
        cache_dir: where generated worlds are cached (shared with the ranking view).
        min_watch_ratio: the watch-ratio threshold of a positive, in [0, 1].
        **kwargs: `WorldParams` fields (`num_users`, `num_items`, `num_impressions`,
            `zipf_exponent`, ..., `world_seed`; the world's own `history_len` stays at its
            default, so the cache is shared with the ranking view) and `RetrievalDataModule`
            arguments (`history_len` is the retrieval history).
    """

    kwargs_fields = WorldParams  # the **kwargs it takes are WorldParams fields, then its parent's

    @checked
    def __init__(
        self, *, cache_dir: str, min_watch_ratio: Probability = 0.3, **kwargs: Any
    ) -> None:
        # `history_len` is the retrieval history here, not the world's (ranking) history column.
        fields = set(WorldParams.__dataclass_fields__) - {"history_len"}
        self.params = WorldParams(**{k: kwargs.pop(k) for k in list(kwargs) if k in fields})
        super().__init__(**kwargs)
        self.source = WorldPositives(self.params, cache_dir, min_watch_ratio)


class WorldPositives(WorldSource):
    """The world's positives: clicks watched for at least `min_watch_ratio` of the video."""

    def __init__(self, params: WorldParams, cache_dir: str, min_watch_ratio: float) -> None:
        super().__init__(params, cache_dir)
        self.min_watch_ratio = min_watch_ratio

    def load(self, columns: list[str]) -> tuple[str, pa.Table]:
        extra = [c for c in columns if c not in ID_COLUMNS]
        path, table = super().load([*ID_COLUMNS, "click", "watch_time", "duration", *extra])
        ratio = pc.divide(
            pc.cast(table["watch_time"], pa.float64()), pc.cast(table["duration"], pa.float64())
        )
        positive = pc.and_(
            pc.equal(table["click"], 1.0), pc.greater_equal(ratio, self.min_watch_ratio)
        )
        return path, table.filter(positive).select([*ID_COLUMNS, *extra])
