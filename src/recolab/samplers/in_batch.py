"""In-batch softmax with sampling-bias (logQ) correction and accidental-hit masking.

Yi et al., "Sampling-bias-corrected neural modeling for large corpus item recommendations",
RecSys 2019 (DESIGN.md section 4). Each row `i` of a batch is a (user, positive item) pair; the
other rows' positives serve as row `i`'s negatives, so the candidate set is the batch's items:

    logit[i, j] = s(q_i, v_j) / tau - log p_j          (log p_j only when `log_q` is given)

where `p_j` is the probability that item `j` appears in a batch (a popular item shows up as a
negative far more often than a rare one; subtracting `log p_j` undoes that bias). The target of
row `i` is column `i`. A column `j != i` holding the same item id as row `i`'s positive is an
*accidental hit*: it is the positive again, not a negative, and is masked out of the softmax.

`InBatchSoftmax` is the sampler object a recall pipeline is given (`configs/sampler/in_batch.yaml`):
it owns the temperature, the similarity, the masking and, with `logq=True`, the streaming estimate
of `p_j` (`StreamingFrequencyEstimator`). Under DDP (`sync_distributed=True`, the default) the
candidate set is the global batch, every rank's positives, on which the streaming `p_j` is
estimated: W ranks of batch B compute the loss and gradient of one process of batch W * B.

Shapes: B batch, D embedding, N corpus negatives.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from annotated_types import Gt, Le
from torch import Tensor, nn

from recolab.params import Count, Positive, checked
from recolab.samplers.distributed import GlobalPositives, global_positives
from recolab.samplers.frequency import StreamingFrequencyEstimator

Similarity = Literal["dot", "cosine"]


def mask_value(dtype: torch.dtype) -> float:
    """The large negative that stands for "-inf" in masked logits.

    Half of the dtype's lowest finite value: `exp` of it is exactly 0, yet it stays finite under
    fp16/bf16 after the small shifts a softmax applies, and never produces NaN (unlike -inf times
    a zero weight, or a row of all -inf).
    """
    return torch.finfo(dtype).min / 2


def similarity_matrix(
    user_emb: Tensor, item_emb: Tensor, *, similarity: Similarity = "dot"
) -> Tensor:
    """Scores of every user row against every item row.

    Args:
        user_emb: (B, D) query embeddings.
        item_emb: (M, D) item embeddings.
        similarity: "dot" (inner product) or "cosine" (inner product of L2-normalized vectors).

    Returns:
        (B, M) similarity scores.
    """
    if user_emb.dim() != 2 or item_emb.dim() != 2 or user_emb.shape[1] != item_emb.shape[1]:
        raise ValueError(
            f"expected user_emb (B, D) and item_emb (M, D), got {tuple(user_emb.shape)} "
            f"and {tuple(item_emb.shape)}"
        )
    if similarity == "cosine":
        user_emb = F.normalize(user_emb, dim=-1)
        item_emb = F.normalize(item_emb, dim=-1)
    elif similarity != "dot":
        raise ValueError(f"similarity must be 'dot' or 'cosine', got {similarity!r}")
    return user_emb @ item_emb.T  # (B, M)


def accidental_hits(row_ids: Tensor, col_ids: Tensor, *, exclude_diagonal: bool) -> Tensor:
    """Where a candidate column holds the row's own positive item.

    Args:
        row_ids: (B,) each row's positive item id.
        col_ids: (M,) the item id of each candidate column.
        exclude_diagonal: True when the columns are the batch's own positives (M == B), so that
            column `i` of row `i`, the target itself, is not reported as a hit.

    Returns:
        (B, M) bool, True at the accidental hits.
    """
    hits = row_ids.unsqueeze(1) == col_ids.unsqueeze(0)  # (B, M)
    if exclude_diagonal:
        hits.fill_diagonal_(False)
    return hits


def positive_logits(
    user_emb: Tensor,
    item_emb: Tensor,
    item_ids: Tensor,
    log_q: Tensor | None,
    *,
    offset: int,
    temperature: float,
    similarity: Similarity,
    mask_accidental_hits: bool,
) -> Tensor:
    """In-batch logits of `B` rows against `M >= B` positives, row `i`'s own at `offset + i`.

    `M > B` under DDP: the columns are the global batch's positives (`global_positives`) and the
    rows this rank's; `InBatchSoftmax.logits` is the one-process case, `M == B`, `offset == 0`.

    Returns:
        (B, M) logits, corrected by `log_q` (M,) when given, accidental hits masked.
    """
    logits = similarity_matrix(user_emb, item_emb, similarity=similarity) / temperature  # (B, M)
    if log_q is not None:
        logits = logits - log_q.to(logits.dtype).unsqueeze(0)  # (B, M)
    if mask_accidental_hits:
        rows = torch.arange(user_emb.shape[0], device=logits.device)  # (B,)
        hits = accidental_hits(item_ids[offset + rows], item_ids, exclude_diagonal=False)
        hits[rows, offset + rows] = False  # each row's target is not a hit
        logits = logits.masked_fill(hits, mask_value(logits.dtype))
    return logits


def global_cross_entropy(logits: Tensor, pos: GlobalPositives) -> Tensor:
    """Cross-entropy of this rank's rows, row `i`'s target column `pos.offset + i`, as its share
    of the global batch's mean (the plain mean on one process)."""
    target = pos.offset + torch.arange(logits.shape[0], device=logits.device)  # (B,)
    if pos.world == 1:
        return F.cross_entropy(logits.float(), target)
    return F.cross_entropy(logits.float(), target, reduction="sum") * pos.loss_scale


def check_positives(
    user_emb: Tensor,
    item_emb: Tensor,
    item_ids: Tensor,
    log_q: Tensor | None,
    *,
    names: tuple[str, str, str] = ("item_emb", "item_ids", "log_q"),
) -> None:
    """Raises ValueError unless the positives and their corrections have one row per user row."""
    batch = user_emb.shape[0]
    if item_emb.shape[0] != batch or item_ids.shape != (batch,):
        raise ValueError(
            f"expected {names[0]} ({batch}, D) and {names[1]} ({batch},), got "
            f"{tuple(item_emb.shape)} and {tuple(item_ids.shape)}"
        )
    if log_q is not None and log_q.shape != (batch,):
        raise ValueError(f"expected {names[2]} ({batch},), got {tuple(log_q.shape)}")


#: `embed_items(ids (N,)) -> (N, D)`: the item tower, for negatives a sampler draws itself.
ItemTower = Callable[[Tensor], Tensor]
#: Corpus negatives: `(neg_emb (N, D), neg_ids (N,), neg_log_q (N,) or None)`, the draws and
#: their log per-draw probability (None: no correction).
Negatives = tuple[Tensor, Tensor, Tensor | None]


class InBatchSoftmax(nn.Module):
    """The in-batch sampled softmax: the batch's other positives are each row's negatives.

    A recall pipeline is given one (`module.sampler`, `configs/sampler/`), binds it to the data
    (`bind`) and calls it once per training step: `loss = sampler(u, v, ids, item_tower)`. It
    owns everything the softmax is: the temperature, the similarity (which the pipeline's
    retrieval scores with too, `scored`), accidental-hit masking and, with `logq`, the streaming
    estimate of `p_j` (a submodule: checkpointed, and synced across DDP ranks).

    Args:
        temperature: softmax temperature `tau`; scores are divided by it.
        similarity: "dot" (inner product) or "cosine" (of L2-normalized vectors).
        mask_accidental_hits: replace `logit[i, j]` by `mask_value` where `j != i` holds row
            `i`'s own positive item.
        logq: subtract each candidate's log sampling probability, the streaming estimate of
            `p_j` (Yi et al.'s correction).
        alpha: the estimator's moving-average rate (Yi et al. use 0.01 over millions of steps;
            a short run needs a faster one).
        num_hashes: the estimator's hash functions.
        num_buckets: the estimator's buckets per hash; None: the next power of two >= 4 x items.
        sync_distributed: under an initialized `torch.distributed` group, each rank's rows run
            their softmax over every rank's positives (gathered with their gradients), the batch
            on which the streaming `p_j` is estimated; the loss is then scaled so that DDP's
            gradient average is the gradient of one process holding the global batch (see
            `recolab.samplers.distributed`). False: each rank's local batch alone.
    """

    kind = "in_batch"

    @checked
    def __init__(
        self,
        *,
        temperature: Positive = 0.05,
        similarity: Similarity = "dot",
        mask_accidental_hits: bool = True,
        logq: bool = False,
        alpha: Annotated[float, Gt(0), Le(1)] = 0.05,
        num_hashes: Count = 2,
        num_buckets: Count | None = None,
        sync_distributed: bool = True,
    ) -> None:
        super().__init__()
        self.temperature = float(temperature)
        self.similarity: Similarity = similarity
        self.mask_accidental_hits = bool(mask_accidental_hits)
        self.logq = bool(logq)
        self.alpha = alpha
        self.num_hashes = num_hashes
        self.num_buckets = num_buckets
        self.sync_distributed = sync_distributed
        #: The streaming estimate of p_j, made by `bind` when `logq`.
        self.frequency: StreamingFrequencyEstimator | None = None

    def bind(self, *, num_items: int, item_counts: Tensor, seed: int = 0) -> InBatchSoftmax:
        """Size what depends on the data: the estimator's buckets (items 1..num_items)."""
        if self.logq:
            buckets = self.num_buckets or max(1024, 1 << math.ceil(math.log2(4 * (num_items + 1))))
            self.frequency = StreamingFrequencyEstimator(
                num_buckets=buckets,
                num_hashes=self.num_hashes,
                alpha=self.alpha,
                seed=seed,
                sync_distributed=self.sync_distributed,
            )
        return self

    def scored(self, emb: Tensor) -> Tensor:
        """Vectors whose inner product is the training score: L2-normalized for `cosine`."""
        return F.normalize(emb, dim=-1) if self.similarity == "cosine" else emb

    def batch_log_q(self, item_ids: Tensor) -> Tensor | None:
        """(B,) this step's `log p_j` of the positives, the estimate updated with the batch first
        (Yi et al., Algorithm 1); None without `logq`."""
        if self.frequency is None:
            return None
        self.frequency.update(item_ids)
        return self.frequency.log_q(item_ids)

    def forward(
        self, user_emb: Tensor, item_emb: Tensor, item_ids: Tensor, item_tower: ItemTower
    ) -> Tensor:
        """One training step's loss: (B, D) users, (B, D) their positives, (B,) ids."""
        return self.loss(user_emb, item_emb, item_ids, log_q=self.batch_log_q(item_ids))

    def loss(
        self,
        user_emb: Tensor,
        item_emb: Tensor,
        item_ids: Tensor,
        *,
        log_q: Tensor | None = None,
        negatives: Negatives | None = None,
    ) -> Tensor:
        """Mean cross-entropy, each row's own item its target (under DDP: this rank's share of
        the global batch's mean; the ranks' values average to it).

        Args:
            user_emb: (B, D) user (query) embeddings.
            item_emb: (B, D) embeddings of each row's positive item.
            item_ids: (B,) long, the positive item ids (accidental hits are found by id).
            log_q: (B,) each positive's log probability of appearing in a batch, subtracted from
                its column (the diagonal included, as in Yi et al.); None: no correction.
            negatives: the corpus draws of a sampler that has them (`MixedNegativeSoftmax`),
                appended as columns.
        """
        check_positives(user_emb, item_emb, item_ids, log_q)
        pos = global_positives(item_emb, item_ids, log_q, sync_distributed=self.sync_distributed)
        return global_cross_entropy(self._logits(user_emb, pos, negatives), pos)

    def logits(self, user_emb: Tensor, item_emb: Tensor, item_ids: Tensor, **inputs: Any) -> Tensor:
        """(B, B [+ N]) one process's corrected, masked logits of `loss`'s softmax (no DDP
        gather); row `i`'s target is column `i`. Arguments (`log_q`, `negatives`) as in `loss`."""
        if unknown := sorted(set(inputs) - {"log_q", "negatives"}):
            raise TypeError(f"logits() got unexpected keyword arguments {unknown}")
        log_q, negatives = inputs.get("log_q"), inputs.get("negatives")
        check_positives(user_emb, item_emb, item_ids, log_q)
        local = GlobalPositives(item_emb, item_ids, log_q, offset=0, total=len(item_ids), world=1)
        return self._logits(user_emb, local, negatives)

    def _logits(
        self, user_emb: Tensor, pos: GlobalPositives, negatives: Negatives | None
    ) -> Tensor:
        """(B, M [+ N]): this rank's rows against the (global) positives [then the corpus]."""
        if negatives is not None:
            raise ValueError(f"{type(self).__name__} draws no corpus negatives; got some")
        return positive_logits(
            user_emb,
            pos.emb,
            pos.ids,
            pos.log_q,
            offset=pos.offset,
            temperature=self.temperature,
            similarity=self.similarity,
            mask_accidental_hits=self.mask_accidental_hits,
        )  # (B, M)

    def summary(self) -> Mapping[str, Any]:
        """The settings, for reports."""
        return {
            "kind": self.kind,
            "temperature": self.temperature,
            "similarity": self.similarity,
            "logq": self.logq,
            "mask_accidental_hits": self.mask_accidental_hits,
            "alpha": self.alpha,
            "num_hashes": self.num_hashes,
            "num_buckets": self.num_buckets,
        }

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.summary().items())
