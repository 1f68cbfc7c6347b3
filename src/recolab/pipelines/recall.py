"""The retrieval pipeline: a recaller trained with a sampled softmax, evaluated on the full corpus.

Training: each row of a batch is (user, positive item, history); the softmax's negatives come
from the sampler chosen by config (`Sampler`, `configs/sampler/`): the batch's other positives
(in-batch), optionally corrected by `log p_j` from a `StreamingFrequencyEstimator` updated every
step (logQ, Yi et al. RecSys 2019), optionally mixed with items drawn from the whole corpus
(Yang et al. WWW 2020). Multi-interest recallers are trained through
`training_user_embeddings` (MIND: label-aware attention; ComiRec: the closest interest).

Evaluation (validation and test): every item of the corpus is ranked for every user, no sampled
negatives; the items the user interacted with before the target are excluded (the data module's
`seen` CSR). Validation ranks for each user's validation item and test for the test item (the
data module's leave-second-last-out split, `recolab.data.retrieval`), so a checkpoint, early
stopping, a sweep or `recolab select` chooses on `val/recall_at_K`, `val/ndcg_at_K`,
`val/hit_rate_at_K` or `val/mrr` without reading the test items; the last validation's values
are kept in every checkpoint (`checkpoint["recolab"]["val_metrics"]`). Items are scored as in
training (inner product, or cosine for `similarity=cosine`). Top-k comes from an exact batched
brute-force search (`exact_topk`) by default, or from a faiss index (`index=flat|ivf|hnsw`). A
multi-interest user retrieves the top k with each interest and the lists are merged
(`merge_interest_topk`). Each rank retrieves for its own users; the (user, top-k) rows are
gathered from every rank at the epoch's end and the metrics (`recolab.metrics`) are computed once
on all of them. The test epoch also scores the most-popular and random baselines on the same
users with the same exclusions, the faiss index's recall against the exact top-k, and the mean
popularity of the retrieved items.

Metric names (`@` is spelled `_at_`, which MLflow accepts, see `recall_report.at_k`):
`split/recall_at_K`, `split/ndcg_at_K`, `split/hit_rate_at_K` (K in `ks`), `split/mrr`,
`split/retrieved_popularity_at_50`, `test/index_recall_at_50`, `baseline_popular/...`,
`baseline_random/...`.

Shapes: B batch, D embedding, K interests, I items (+ the padding row 0), N retrieved.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from recolab import metrics as M
from recolab.data.checks import splitmix64
from recolab.index import FaissIndex, exact_topk, recall_against_exact
from recolab.models.recall import merge_interest_topk
from recolab.pipelines.distributed import gather_columns, log_gathered
from recolab.pipelines.flops import TrainingFlops
from recolab.reports.per_user import recall_per_user, user_ids
from recolab.reports.recall_report import (
    POPULARITY_K,
    at_k,
    metric_rows,
    to_markdown,
    write_recall_report,
)
from recolab.run_checks import check_finite_loss
from recolab.samplers import (
    CorpusNegativeSampler,
    StreamingFrequencyEstimator,
    in_batch_softmax_loss,
    mixed_negative_softmax_loss,
)

log = logging.getLogger(__name__)

Batch = dict[str, dict[str, Tensor]]
INDEX_KINDS = ("exact", "flat", "ivf", "hnsw")


@dataclass(frozen=True)
class Sampler:
    """Where the training softmax gets its negatives, and how they are corrected.

    Args:
        kind: "in_batch" (the batch's other positives) or "mixed" (those plus `num_negatives`
            items drawn from the corpus, shared by the batch).
        temperature: softmax temperature `tau`.
        similarity: "dot" or "cosine".
        logq: subtract each candidate's log sampling probability (in-batch: the streaming
            estimate of `p_j`; corpus: the per-draw probability, `+ log N`).
        mask_accidental_hits: mask columns that hold the row's own positive.
        num_negatives: corpus negatives per batch (`mixed` only), shared by every row and, under
            DDP, by every rank.
        distribution: corpus draws "uniform" or by "popularity" (training counts ** power).
        power: the popularity exponent.
        alpha: the estimator's moving-average rate (Yi et al. use 0.01 over millions of steps;
            a short run needs a faster one).
        num_hashes: the estimator's hash functions.
        num_buckets: the estimator's buckets per hash; None: the next power of two >= 4 x items.
    """

    kind: str = "in_batch"
    temperature: float = 0.05
    similarity: str = "dot"
    logq: bool = False
    mask_accidental_hits: bool = True
    num_negatives: int = 0
    distribution: str = "uniform"
    power: float = 0.75
    alpha: float = 0.05
    num_hashes: int = 2
    num_buckets: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("in_batch", "mixed"):
            raise ValueError(
                f"module.sampler.kind must be 'in_batch' or 'mixed', got {self.kind!r}"
            )
        if not self.temperature > 0:
            raise ValueError(f"module.sampler.temperature must be > 0, got {self.temperature}")
        if self.similarity not in ("dot", "cosine"):
            raise ValueError(
                f"module.sampler.similarity must be 'dot' or 'cosine', got {self.similarity!r}"
            )
        if self.kind == "mixed" and self.num_negatives < 1:
            raise ValueError(
                f"module.sampler.num_negatives must be >= 1 for kind=mixed, got {self.num_negatives}"
            )
        if self.distribution not in ("uniform", "popularity"):
            raise ValueError(
                f"module.sampler.distribution must be 'uniform' or 'popularity', got {self.distribution!r}"
            )


def retrieval_metrics(
    topk: np.ndarray, targets: np.ndarray, *, ks: Sequence[int], item_counts: np.ndarray
) -> dict[str, float]:
    """Recall, NDCG and hit rate at each K, MRR, and the retrieved items' popularity.

    Args:
        topk: (U, max(ks)) retrieved ids per user, best first, -1 padded.
        targets: (U, M) held-out ids, -1 padded.
        ks: the cut-offs.
        item_counts: (I,) training interactions per item id.

    Returns:
        `{"recall_at_K", "ndcg_at_K", "hit_rate_at_K", "mrr", "retrieved_popularity_at_P"}`; the last is the
        mean over users of the mean `log(1 + training count)` of their top-P items, P = 50 or
        max(ks) if smaller (named after the P it measured).
    """
    out: dict[str, float] = {}
    for k in ks:
        d = M.retrieval_details(topk, targets, k=k)
        out |= {
            at_k("recall", k): d.recall,
            at_k("ndcg", k): d.ndcg,
            at_k("hit_rate", k): d.hit_rate,
        }
    out["mrr"] = M.mrr(topk, targets)
    p = min(POPULARITY_K, topk.shape[1])
    top = topk[:, :p]
    valid = top > 0
    pop = np.where(valid, np.log1p(item_counts[np.clip(top, 0, None)]), 0.0).sum(1) / np.maximum(
        valid.sum(1), 1
    )
    out[at_k("retrieved_popularity", p)] = (
        float(pop[valid.any(1)].mean()) if valid.any() else float("nan")
    )
    return out


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


class RecallModule(TrainingFlops, pl.LightningModule):
    """Trains a recaller with a sampled softmax; evaluates it by full-corpus retrieval.

    Args:
        model: a recaller (`recolab.models.recall`: `item_embeddings`, `user_embeddings`,
            `training_user_embeddings`, `all_item_embeddings`, `num_interests`).
        num_items: item ids run 1..num_items.
        item_counts: (num_items + 1,) training interactions per item id (the popularity baseline,
            popularity negatives and `retrieved_popularity`).
        sampler: the training softmax (`Sampler`, or a mapping of its fields).
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        ks: the cut-offs K of recall@K, NDCG@K, hit rate@K.
        index: "exact" (batched brute force) or a faiss index kind: "flat", "ivf", "hnsw".
        index_options: further `FaissIndex` arguments (`nlist`, `nprobe`, `ef_search`, ...).
        baselines: score the most-popular and random baselines in the test epoch.
        data_summary: the data module's summary (users, items, filtered users, ...), for reports.
        seed: seeds the random baseline.
        report_bootstrap: resamples B of the report's 95% intervals over users
            (`recolab.reports.per_user`); 0 for none.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        num_items: int,
        item_counts: Tensor,
        sampler: Sampler | Mapping[str, Any] = Sampler(),
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        ks: Sequence[int] = (20, 50, 100),
        index: str = "exact",
        index_options: Mapping[str, Any] | None = None,
        baselines: bool = True,
        data_summary: Mapping[str, Any] | None = None,
        seed: int = 0,
        report_bootstrap: int = 2000,
    ) -> None:
        super().__init__()
        self.report_bootstrap = int(report_bootstrap)
        if not lr > 0:
            raise ValueError(f"module.lr must be > 0, got {lr}")
        if index not in INDEX_KINDS:
            raise ValueError(f"module.index must be one of {INDEX_KINDS}, got {index!r}")
        ks = sorted({int(k) for k in ks})
        if not ks or ks[0] < 1:
            raise ValueError(f"module.ks must be positive cut-offs, got {ks}")
        item_counts = torch.as_tensor(item_counts, dtype=torch.long)
        if item_counts.shape != (num_items + 1,):
            raise ValueError(
                f"item_counts must have shape ({num_items + 1},), got {tuple(item_counts.shape)}"
            )
        self.model = model
        self.num_items = num_items
        self.sampler = sampler if isinstance(sampler, Sampler) else Sampler(**dict(sampler))
        self.lr = lr
        self.weight_decay = weight_decay
        self.ks = ks
        self.index_kind = index
        self.index_options = dict(index_options or {})
        FaissIndex(
            kind="flat" if index == "exact" else index, **self.index_options
        )  # fail on bad options now
        self.baselines = baselines
        self.data_summary = dict(data_summary or {})
        self.seed = seed
        s = self.sampler
        #: The streaming estimate of p_j (a submodule: checkpointed, and synced across DDP ranks).
        self.frequency: StreamingFrequencyEstimator | None = None
        if s.logq:
            buckets = s.num_buckets or max(1024, 1 << math.ceil(math.log2(4 * (num_items + 1))))
            self.frequency = StreamingFrequencyEstimator(
                num_buckets=buckets, num_hashes=s.num_hashes, alpha=s.alpha, seed=seed
            )
        self.corpus: CorpusNegativeSampler | None = None
        if s.kind == "mixed":
            self.corpus = CorpusNegativeSampler(
                num_items=num_items,
                distribution=s.distribution,
                power=s.power,
                item_counts=item_counts if s.distribution == "popularity" else None,
            )
        # Data statistics, not learned: rebuilt from the data each run, so left out of checkpoints.
        self.register_buffer("item_counts", item_counts, persistent=False)
        # The popularity ranking as distinct scores: more training interactions first, ties by lower id.
        order = np.lexsort((np.arange(num_items + 1), -item_counts.numpy()))
        pop_score = np.empty(num_items + 1, dtype=np.float32)
        pop_score[order] = np.arange(num_items + 1, 0, -1, dtype=np.float32)
        self.register_buffer(
            "popularity_score", torch.from_numpy(pop_score).unsqueeze(1), persistent=False
        )  # (I, 1)
        self._rows: list[dict[str, Tensor]] = []
        self._items: Tensor | None = None
        self._index: FaissIndex | None = None
        #: The last test epoch's metrics, baselines and set-up, for the report.
        self.test_summary: dict[str, Any] = {}
        #: The last test epoch's per-user values and their weights (`reports.per_user`).
        self.test_per_user: tuple[Any, dict[str, Any]] | None = None
        #: The last validation epoch's metrics (`val/...`; not the sanity check's), saved in checkpoints.
        self.val_metrics: dict[str, float] = {}
        #: Set by `recolab.train`: saved in checkpoints so `recolab evaluate` can rebuild the run.
        self.run_info: dict[str, Any] = {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Plain strings and tensors only: checkpoints load with torch.load(weights_only=True).
        info = dict(self.run_info)
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None:
            info["data_state"] = datamodule.state_dict()
        # The validation that chose this checkpoint (ModelCheckpoint saves after it): plain floats.
        info["val_metrics"] = dict(self.val_metrics)
        checkpoint["recolab"] = info

    # -- training -----------------------------------------------------------------------------

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        features = batch["features"]
        ids = features["item_id"]  # (B,)
        s = self.sampler
        v = self.model.item_embeddings(ids)  # (B, D)
        u = self.model.training_user_embeddings(features, v)  # (B, D)
        log_q = None
        if self.frequency is not None:
            self.frequency.update(
                ids
            )  # this step's batch first, then its estimates (Yi et al., Alg. 1)
            log_q = self.frequency.log_q(ids)  # (B,)
        common = dict(
            temperature=s.temperature,
            similarity=s.similarity,
            mask_accidental_hits=s.mask_accidental_hits,
        )
        if s.kind == "in_batch":
            loss = in_batch_softmax_loss(u, v, ids, log_q=log_q, **common)
        else:
            neg_ids, neg_log_q = self.corpus.sample(s.num_negatives)  # (N,), (N,)
            w = self.model.item_embeddings(neg_ids)  # (N, D)
            loss = mixed_negative_softmax_loss(
                u,
                v,
                ids,
                w,
                neg_ids,
                pos_log_q=log_q,
                neg_log_q=neg_log_q if s.logq else None,
                **common,
            )
        check_finite_loss(self, loss)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(ids))
        return loss

    def on_train_epoch_start(self) -> None:
        # Reshuffle the columnar batches (they are not driven by a sampler, see data.columnar).
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(self.current_epoch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    # -- retrieval ----------------------------------------------------------------------------

    @property
    def max_k(self) -> int:
        return self.ks[-1]

    def _corpus(self) -> Tensor:
        """(I, D) item vectors, computed once per evaluation epoch (and the faiss index built)."""
        if self._items is None:
            self._items = self._scored(self.model.all_item_embeddings().float())
            if self.index_kind != "exact":
                self._index = FaissIndex(kind=self.index_kind, **self.index_options).build(
                    self._items
                )
        return self._items

    def _scored(self, emb: Tensor) -> Tensor:
        """Vectors whose inner product is the training score: L2-normalized for `similarity=cosine`."""
        return (
            torch.nn.functional.normalize(emb, dim=-1)
            if self.sampler.similarity == "cosine"
            else emb
        )

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
        users = self._scored(self.model.user_embeddings(features).float())  # (B, D) or (B, K, D)
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

    # -- evaluation: retrieve per batch, gather, compute ---------------------------------------

    def _reset(self) -> None:
        self._rows, self._items, self._index = [], None, None

    def on_validation_epoch_start(self) -> None:
        self._reset()

    on_test_epoch_start = on_validation_epoch_start

    def _collect(self, batch: Batch, batch_idx: int, *, test: bool) -> None:
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
        self._rows.append(row)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._collect(batch, batch_idx, test=False)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._collect(batch, batch_idx, test=True)

    def _gathered(self) -> dict[str, np.ndarray]:
        rows, self._rows, self._items, self._index = self._rows, [], None, None
        return {k: v.cpu().numpy() for k, v in gather_columns(rows, self.device).items()}

    def _evaluate(self, split: str) -> dict[str, float]:
        rows = self._gathered()
        if not rows:
            return {}
        counts = self.item_counts.cpu().numpy()
        found = {
            "model": retrieval_metrics(
                rows["model"], rows["targets"], ks=self.ks, item_counts=counts
            )
        }
        values = {f"{split}/{k}": v for k, v in found["model"].items()}
        if "exact" in rows:
            k = min(POPULARITY_K, self.max_k)
            values[f"{split}/{at_k('index_recall', k)}"] = recall_against_exact(
                rows["model"][:, :k], rows["exact"][:, :k]
            )
        for name in ("popular", "random"):
            if name in rows:
                found[name] = retrieval_metrics(
                    rows[name], rows["targets"], ks=self.ks, item_counts=counts
                )
                values |= {f"baseline_{name}/{k}": v for k, v in found[name].items()}
        log_gathered(self, values)  # every rank holds the same gathered rows
        if split == "test":
            datamodule = getattr(self.trainer, "datamodule", None)
            vocab = getattr(datamodule, "vocabs", {}).get("user_id")
            users, kind = user_ids(rows["user"], getattr(vocab, "values", None))
            self.test_per_user = recall_per_user(rows, ks=self.ks, users=users, id_kind=kind)
            self.test_summary = {
                "users": int(len(rows["targets"])),
                "ks": list(self.ks),
                "index": self.index_kind,
                "index_options": self.index_options,
                "sampler": asdict(self.sampler),
                "model": type(self.model).__name__,
                "num_interests": int(getattr(self.model, "num_interests", 1)),
                "values": values,
                "data": self.data_summary,
            }
        return values

    def logged_metric_names(self, split: str) -> list[str]:
        """The metric names this module logs for `split` ("train", "val" or "test"; the test
        epoch's `baseline_*/...` included), as `_evaluate` and `retrieval_metrics` build them.

        `recolab.run_checks` checks a checkpoint's or early stopping's `monitor` and the
        `optimized_metric` against them before training starts.
        """
        if split == "train":
            return ["train/loss"]
        p = min(POPULARITY_K, self.max_k)
        metrics = [at_k(m, k) for k in self.ks for m in ("recall", "ndcg", "hit_rate")]
        metrics += ["mrr", at_k("retrieved_popularity", p)]
        names = [f"{split}/{m}" for m in metrics]
        if split != "test":
            return names
        if self.index_kind != "exact":
            names.append(f"test/{at_k('index_recall', p)}")
        if self.baselines:
            names += [f"baseline_{b}/{m}" for b in ("popular", "random") for m in metrics]
        return names

    def on_validation_epoch_end(self) -> None:
        found = self._evaluate("val")
        if not self.trainer.sanity_checking:
            self.val_metrics = dict(found)

    def on_test_epoch_end(self) -> None:
        self._evaluate("test")

    # -- reporting (rank zero, after testing) -----------------------------------------------

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
