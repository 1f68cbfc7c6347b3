"""The retrieval pipeline: a recaller trained with a sampled softmax, evaluated on the full corpus.

Training: each row of a batch is (user, positive item, history); the loss is the sampler's, an
object chosen by `_target_` in `configs/sampler/` (`recolab.samplers`): the in-batch softmax,
optionally corrected by `log p_j` from a streaming estimate (logQ, Yi et al. RecSys 2019), or
mixed with items drawn from the whole corpus (Yang et al. WWW 2020). The pipeline calls the
sampler it is given; the sampler owns its temperature and similarity. Multi-interest recallers are trained through
`training_user_embeddings` (MIND: label-aware attention; ComiRec: the closest interest).

Evaluation (validation and test): every item of the corpus is ranked for every user, no sampled
negatives; the items the user interacted with before the target are excluded (the data module's
`seen` CSR). Validation ranks for each user's validation item and test for the test item (the
data module's leave-second-last-out split, `recolab.data.retrieval`), so a checkpoint, early
stopping, a sweep or `recolab select` chooses on `val/recall_at_K`, `val/ndcg_at_K`,
`val/hit_rate_at_K` or `val/mrr` without reading the test items; the last validation's values
are kept in every checkpoint (`checkpoint["recolab"]["val_metrics"]`). Items are scored as in
training (inner product, or cosine for the sampler's `similarity=cosine`). Top-k comes from an exact batched
brute-force search (`exact_topk`) by default, or from a faiss index (`index=flat|ivf|hnsw`). A
multi-interest user retrieves the top k with each interest and the lists are merged
(`merge_interest_topk`). Each rank retrieves for its own users; the (user, top-k) rows are
gathered from every rank at the epoch's end and the metrics (`recolab.metrics`) are computed once
on all of them. The test epoch also scores the most-popular and random baselines on the same
users with the same exclusions, the faiss index's recall against the exact top-k, and the mean
popularity of the retrieved items.

Metric names (`@` is spelled `_at_`, which MLflow accepts, see `recolab.metrics.registry.at_k`):
the declared set (`module.metrics`, default in `configs/module/recall.yaml`): `split/recall_at_K`,
`split/ndcg_at_K`, `split/hit_rate_at_K` (K in `ks`), `split/mrr`,
`split/retrieved_popularity_at_50`; and `test/index_recall_at_50`, `baseline_popular/...`,
`baseline_random/...`.

Shapes: B batch, D embedding, K interests, I items (+ the padding row 0), N retrieved.
"""

from __future__ import annotations

import logging
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from annotated_types import MinLen
from pydantic import AfterValidator
from torch import Tensor, nn

from recolab.data.checks import splitmix64
from recolab.index import FaissIndex, exact_topk, recall_against_exact
from recolab.metrics.registry import (
    METRICS,
    RetrievalInputs,
    at_k,
    metric_names,
    metric_set,
    popularity_k,
    retrieval_names,
    retrieval_values,
)
from recolab.models.recall import merge_interest_topk
from recolab.params import Count, Count0, NonNegative, Positive, checked
from recolab.pipelines.base import Optimizer, PipelineModule
from recolab.reports.per_user import recall_per_user, user_ids
from recolab.reports.recall_report import metric_rows, to_markdown, write_recall_report
from recolab.run_checks import check_finite_loss
from recolab.samplers import InBatchSoftmax

log = logging.getLogger(__name__)

Batch = dict[str, dict[str, Tensor]]
IndexKind = Literal["exact", "flat", "ivf", "hnsw"]
INDEX_KINDS = typing.get_args(IndexKind)


def repeat_rows_csr(indptr: Tensor, indices: Tensor, repeats: int) -> tuple[Tensor, Tensor]:
    """The CSR with every row repeated `repeats` times in a row (one copy per interest)."""
    lengths = indptr[1:] - indptr[:-1]  # (B,)
    rows = torch.arange(len(lengths), device=indptr.device).repeat_interleave(repeats)  # (B*K,)
    new_lengths = lengths[rows]
    new_ptr = torch.zeros(len(rows) + 1, dtype=torch.long, device=indptr.device)
    new_ptr[1:] = new_lengths.cumsum(0)
    owner = torch.arange(len(rows), device=indptr.device).repeat_interleave(
        new_lengths
    )  # (nnz * K,)
    offset = torch.arange(int(new_ptr[-1]), device=indptr.device) - new_ptr[owner]
    return new_ptr, indices[indptr[rows[owner]] + offset]


def masked_topk(scores: Tensor, indptr: Tensor, indices: Tensor, k: int) -> Tensor:
    """(B, k) ids of the best scores, column 0 (padding) and each row's CSR ids excluded (in place)."""
    scores[:, 0] = float("-inf")
    rows = torch.arange(scores.shape[0], device=scores.device).repeat_interleave(
        indptr[1:] - indptr[:-1]
    )
    scores[rows, indices] = float("-inf")
    top_scores, top_ids = scores.topk(k, dim=1)  # (B, k)
    return top_ids.masked_fill(torch.isneginf(top_scores), -1)


class RecallModule(PipelineModule):
    """Trains a recaller with its sampler's softmax; evaluates it by full-corpus retrieval.

    Args:
        model: a recaller (`recolab.models.recall`: `item_embeddings`, `user_embeddings`,
            `training_user_embeddings`, `all_item_embeddings`, `num_interests`).
        num_items: item ids run 1..num_items.
        item_counts: (num_items + 1,) training interactions per item id (the popularity baseline,
            popularity negatives and `retrieved_popularity`).
        sampler: the training softmax (`recolab.samplers`, `configs/sampler/`), bound here to
            the data; None: `InBatchSoftmax()`.
        lr: the optimizer's learning rate.
        weight_decay: the optimizer's weight decay.
        optimizer: the torch optimizer factory (`module.optimizer`, as `RankModule`'s); None: Adam.
        ks: the cut-offs K of the `at_k` metrics (recall@K, NDCG@K, hit rate@K).
        metrics: the metric set, names of `recolab.metrics.registry`'s retrieval metrics
            (`configs/module/recall.yaml` declares the default); None: every one.
        index: "exact" (batched brute force) or a faiss index kind: "flat", "ivf", "hnsw".
        index_options: further `FaissIndex` arguments (`nlist`, `nprobe`, `ef_search`, ...).
        baselines: score the most-popular and random baselines in the test epoch.
        data_summary: the data module's summary (users, items, filtered users, ...), for reports.
        seed: seeds the random baseline and the sampler's hashing.
        report_bootstrap: resamples B of the report's 95% intervals over users
            (`recolab.reports.per_user`); 0 for none.
    """

    @checked
    def __init__(
        self,
        model: nn.Module,
        *,
        num_items: Count,
        item_counts: Tensor,
        sampler: InBatchSoftmax | None = None,
        lr: Positive = 1e-3,
        weight_decay: NonNegative = 0.0,
        optimizer: Optimizer | None = None,
        ks: Annotated[list[Count], MinLen(1)] = (20, 50, 100),
        metrics: Annotated[list[str], AfterValidator(metric_names("retrieval"))] | None = None,
        index: IndexKind = "exact",
        index_options: Mapping[str, Any] | None = None,
        baselines: bool = True,
        data_summary: Mapping[str, Any] | None = None,
        seed: Count0 = 0,
        report_bootstrap: Count0 = 2000,
    ) -> None:
        super().__init__(
            lr=lr, weight_decay=weight_decay, optimizer=optimizer, report_bootstrap=report_bootstrap
        )
        ks = sorted({int(k) for k in ks})
        #: The declared metric set (`module.metrics`).
        self.metrics = metric_set(
            metrics
            if metrics is not None
            else [m.name for m in METRICS.values() if m.kind == "retrieval"],
            "retrieval",
            key="module.metrics",
        )
        item_counts = torch.as_tensor(item_counts, dtype=torch.long)
        if item_counts.shape != (num_items + 1,):
            raise ValueError(
                f"item_counts must have shape ({num_items + 1},), got {tuple(item_counts.shape)}"
            )
        self.model = model
        self.num_items = num_items
        self.ks = ks
        self.index_kind = index
        self.index_options = dict(index_options or {})
        FaissIndex(
            kind="flat" if index == "exact" else index, **self.index_options
        )  # fail on bad options now
        self.baselines = baselines
        self.data_summary = dict(data_summary or {})
        self.seed = seed
        #: The training softmax, bound to the data (its streaming estimate is checkpointed).
        self.sampler = (sampler if sampler is not None else InBatchSoftmax()).bind(
            num_items=num_items, item_counts=item_counts, seed=seed
        )
        # Checkpoints written before the sampler was an object keep its estimate at `frequency.`.
        self._register_load_state_dict_pre_hook(_moved_estimator)
        # Data statistics, not learned: rebuilt from the data each run, so left out of checkpoints.
        self.register_buffer("item_counts", item_counts, persistent=False)
        # The popularity ranking as distinct scores: more training interactions first, ties by lower id.
        order = np.lexsort((np.arange(num_items + 1), -item_counts.numpy()))
        pop_score = np.empty(num_items + 1, dtype=np.float32)
        pop_score[order] = np.arange(num_items + 1, 0, -1, dtype=np.float32)
        self.register_buffer(
            "popularity_score", torch.from_numpy(pop_score).unsqueeze(1), persistent=False
        )  # (I, 1)
        self._items: Tensor | None = None
        self._index: FaissIndex | None = None
        #: The last test epoch's metrics, baselines and set-up, for the report.
        self.test_summary: dict[str, Any] = {}
        #: The last test epoch's per-user values and their weights (`reports.per_user`).
        self.test_per_user: tuple[Any, dict[str, Any]] | None = None

    # -- training -----------------------------------------------------------------------------

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        features = batch["features"]
        ids = features["item_id"]  # (B,)
        v = self.model.item_embeddings(ids)  # (B, D)
        u = self.model.training_user_embeddings(features, v)  # (B, D)
        loss = self.sampler(u, v, ids, self.model.item_embeddings)
        check_finite_loss(self, loss)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(ids))
        return loss

    # -- retrieval ----------------------------------------------------------------------------

    @property
    def max_k(self) -> int:
        return self.ks[-1]

    def _corpus(self) -> Tensor:
        """(I, D) item vectors, computed once per evaluation epoch (and the faiss index built)."""
        if self._items is None:
            self._items = self.sampler.scored(self.model.all_item_embeddings().float())
            if self.index_kind != "exact":
                self._index = FaissIndex(kind=self.index_kind, **self.index_options).build(
                    self._items
                )
        return self._items

    def retrieve(
        self, features: dict[str, Tensor], seen: tuple[Tensor, Tensor], *, exact: bool | None = None
    ) -> Tensor:
        """(B, max(ks)) item ids per user, best first, seen items and padding excluded, -1 padded.

        Args:
            features: the batch's user features (`user_id`, `hist_items`, ...).
            seen: CSR `(indptr (B + 1,), indices)` of the ids to exclude per user.
            exact: force the exact search (True) or the configured one (None).
        """
        items = self._corpus()
        k = min(self.max_k, self.num_items)
        users = self.sampler.scored(
            self.model.user_embeddings(features).float()
        )  # (B, D) or (B, K, D)
        indptr, indices = seen
        multi = users.dim() == 3
        if multi:
            b, num_interests, d = users.shape
            users = users.reshape(b * num_interests, d)  # (B*K, D): one query per interest
            indptr, indices = repeat_rows_csr(indptr, indices, num_interests)
        if exact or self._index is None:
            scores, ids = exact_topk(users, items, k=k, exclude=(indptr, indices))  # (Q, k)
        else:
            s, i = self._index.search(users, k, exclude=(indptr, indices))
            scores, ids = torch.from_numpy(s).to(users.device), torch.from_numpy(i).to(users.device)
        if multi:
            ids, scores = merge_interest_topk(
                ids.view(b, num_interests, k), scores.view(b, num_interests, k), n=k
            )
        if k < self.max_k:  # a corpus smaller than max(ks): the rest of the list is empty
            ids = torch.nn.functional.pad(ids, (0, self.max_k - k), value=-1)
        return ids

    def popular_topk(self, seen: tuple[Tensor, Tensor], num_users: int) -> Tensor:
        """(B, max(ks)) the most-popular baseline: the most frequent training items not seen."""
        k = min(self.max_k, self.num_items)
        ones = self.popularity_score.new_ones(num_users, 1)
        _, ids = exact_topk(ones, self.popularity_score, k=k, exclude=seen)
        return torch.nn.functional.pad(ids, (0, self.max_k - k), value=-1)

    def random_topk(
        self,
        seen: tuple[Tensor, Tensor],
        users: Tensor,
        *,
        chunk: int = 256,
    ) -> Tensor:
        """(B, max(ks)) the random baseline: a uniform random order of the unseen items per user.

        Item i's score for user u is a hash of (the run's seed, u, i) (splitmix64, 24 bits kept):
        each user's order depends on nothing else, so it is the same whichever rows share its
        batch: under any evaluation batch size, on one process or gathered from several DDP
        ranks, in `train` and in `recolab evaluate`.
        """
        k = min(self.max_k, self.num_items)
        indptr, indices = seen
        with np.errstate(over="ignore"):
            items = splitmix64(np.arange(self.num_items + 1, dtype=np.uint64))  # (I + 1,)
            keys = splitmix64(
                splitmix64(np.full(len(users), self.seed, dtype=np.uint64))
                ^ users.cpu().numpy().astype(np.int64).view(np.uint64)
            )  # (B,)
        out = []
        for start in range(0, len(users), chunk):
            end = min(start + chunk, len(users))
            with np.errstate(over="ignore"):
                bits = splitmix64(keys[start:end, None] ^ items[None, :]) >> np.uint64(40)
            scores = torch.from_numpy(bits.astype(np.float32)).to(indptr.device)
            sub_ptr = indptr[start : end + 1] - indptr[start]
            out.append(masked_topk(scores, sub_ptr, indices[indptr[start] : indptr[end]], k))
        if not out:
            return torch.full((0, self.max_k), -1, dtype=torch.long, device=indptr.device)
        return torch.nn.functional.pad(torch.cat(out), (0, self.max_k - k), value=-1)

    # -- evaluation: retrieve per batch, gather, compute (`PipelineModule`) ---------------------

    def reset(self) -> None:
        super().reset()
        self._items, self._index = None, None

    def collect(self, batch: Batch, *, test: bool) -> dict[str, Tensor]:
        seen = (batch["seen"]["indptr"], batch["seen"]["indices"])
        features = batch["features"]
        row = {"targets": batch["targets"]["item_id"], "model": self.retrieve(features, seen)}
        if test:
            row["user"] = features["user_id"]  # (B,) encoded ids, for the per-user file
        if test and self._index is not None:
            row["exact"] = self.retrieve(features, seen, exact=True)
        if test and self.baselines:
            b = len(row["targets"])
            row["popular"] = self.popular_topk(seen, b)
            row["random"] = self.random_topk(seen, features["user_id"])
        return row

    def _values(self, topk: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        inputs = RetrievalInputs(topk, targets, self.item_counts.cpu().numpy())
        return retrieval_values(self.metrics, inputs, self.ks)

    def compute(self, split: str, rows: dict[str, Tensor]) -> dict[str, float]:
        rows = {k: v.cpu().numpy() for k, v in rows.items()}
        values = {
            f"{split}/{k}": v for k, v in self._values(rows["model"], rows["targets"]).items()
        }
        if "exact" in rows:
            k = popularity_k(self.max_k)
            values[f"{split}/{at_k('index_recall', k)}"] = recall_against_exact(
                rows["model"][:, :k], rows["exact"][:, :k]
            )
        for name in ("popular", "random"):
            if name in rows:
                found = self._values(rows[name], rows["targets"])
                values |= {f"baseline_{name}/{k}": v for k, v in found.items()}
        if split == "test":
            datamodule = getattr(self.trainer, "datamodule", None)
            vocab = getattr(datamodule, "vocabs", {}).get("user_id")
            users, kind = user_ids(rows["user"], getattr(vocab, "values", None))
            self.test_per_user = recall_per_user(rows, ks=self.ks, users=users, id_kind=kind)
            self.test_summary = {
                "users": int(len(rows["targets"])),
                "ks": list(self.ks),
                "metrics": [m.name for m in self.metrics],
                "index": self.index_kind,
                "index_options": self.index_options,
                "sampler": dict(self.sampler.summary()),
                "model": type(self.model).__name__,
                "num_interests": int(getattr(self.model, "num_interests", 1)),
                "values": values,
                "data": self.data_summary,
            }
        return values

    def logged_metric_names(self, split: str) -> list[str]:
        """The metric names this module logs for `split` ("train", "val" or "test"; the test
        epoch's `baseline_*/...` included), as `compute` builds them.

        `recolab.run_checks` checks a checkpoint's or early stopping's `monitor` and the
        `optimized_metric` against them before training starts.
        """
        if split == "train":
            return ["train/loss"]
        metrics = retrieval_names(self.metrics, self.ks, self.max_k)
        names = [f"{split}/{m}" for m in metrics]
        if split != "test":
            return names
        if self.index_kind != "exact":
            names.append(f"test/{at_k('index_recall', popularity_k(self.max_k))}")
        if self.baselines:
            names += [f"baseline_{b}/{m}" for b in ("popular", "random") for m in metrics]
        return names

    # -- reporting (`Reporting`: rank zero, after testing) --------------------------------------

    def write_report(
        self, out_dir: str | Path, *, title: str, metrics: dict[str, float], context: dict[str, Any]
    ) -> list[Path]:
        """`report.md` and `metrics.json` for the last test run (see `recolab.reports.recall_report`)."""
        return write_recall_report(
            out_dir,
            title=title,
            metrics=metrics,
            summary=self.test_summary,
            context=context,
            per_user=self.test_per_user,
            bootstrap_samples=self.report_bootstrap,
        )

    def metrics_markdown(self, metrics: dict[str, float]) -> str:
        return to_markdown(metric_rows(metrics, self.test_summary))


def _moved_estimator(state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Load hook: a checkpoint written before samplers were objects holds the sampler's streaming
    estimate at `frequency.*`; it lives at `sampler.frequency.*` now."""
    for key in [k for k in state_dict if k.startswith(prefix + "frequency.")]:
        state_dict[prefix + "sampler." + key[len(prefix) :]] = state_dict.pop(key)
