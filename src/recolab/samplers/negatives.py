"""Negatives drawn from the item corpus, and the mixed-negative softmax that uses them
(`MixedNegativeSoftmax`, `configs/sampler/mixed.yaml`).

Mixed Negative Sampling (MNS): Yang et al., "Mixed Negative Sampling for Learning Two-tower
Neural Networks in Recommendations", WWW 2020 (companion). In-batch negatives follow the
training data's item distribution, so long-tail and fresh items are rarely, if ever, negatives;
MNS adds `N` items sampled from the whole corpus (uniformly, or by a smoothed popularity) and
shares them among all rows of the batch. The softmax of row `i` runs over the `B` in-batch items
and the `N` corpus items; each column is corrected for how likely its own source was to offer it
(Yi et al., RecSys 2019, generalized to two sources). Under DDP the softmax runs over the
global batch's positives and one shared set of corpus negatives, so that both corrections hold
whatever the number of ranks (`recolab.samplers.distributed`).

Shapes: B batch, D embedding, N corpus negatives, I items.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from recolab.params import Count, checked
from recolab.samplers.distributed import GlobalPositives, distributed_world
from recolab.samplers.in_batch import (
    InBatchSoftmax,
    ItemTower,
    Negatives,
    accidental_hits,
    mask_value,
    similarity_matrix,
)


class CorpusNegativeSampler(nn.Module):
    """Samples item ids from `1..num_items` with replacement, uniformly or by popularity.

    `distribution="popularity"` draws item `j` with probability proportional to
    `item_counts[j] ** power` (word2vec's smoothing: `power=0.75` flattens the head; 1 is the raw
    unigram distribution, 0 uniform over items with a nonzero count). Id 0 (padding/OOV) is never
    drawn. The distribution is kept in buffers, so the sampler follows the model's device.

    Distributed training: when `torch.distributed` is initialized (and `sync_distributed`),
    `sample` hands every rank rank zero's draw, so all ranks share one set of corpus negatives,
    as one process holding the global batch would (`MixedNegativeSoftmax`); every rank
    still draws, so the ranks' random streams stay in step.

    Args:
        num_items: the number of real items; ids run 1..num_items.
        distribution: "uniform" or "popularity".
        power: exponent applied to the counts (popularity only).
        item_counts: (num_items + 1,) counts indexed by item id, entry 0 ignored; required for
            "popularity". Items with count 0 are never drawn.
        sync_distributed: share rank zero's draw under `torch.distributed` (see above).
    """

    def __init__(
        self,
        *,
        num_items: int,
        distribution: Literal["uniform", "popularity"] = "uniform",
        power: float = 0.75,
        item_counts: Tensor | None = None,
        sync_distributed: bool = True,
    ) -> None:
        super().__init__()
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        if distribution == "uniform":
            weights = torch.ones(num_items + 1, dtype=torch.float64)
        elif distribution == "popularity":
            if item_counts is None or item_counts.shape != (num_items + 1,):
                shape = None if item_counts is None else tuple(item_counts.shape)
                raise ValueError(
                    f"popularity sampling needs item_counts of shape ({num_items + 1},), got {shape}"
                )
            counts = item_counts.detach().to(torch.float64)
            if bool((counts < 0).any()):
                raise ValueError("item_counts must be non-negative")
            weights = torch.where(counts > 0, counts.pow(power), torch.zeros_like(counts))
        else:
            raise ValueError(
                f"distribution must be 'uniform' or 'popularity', got {distribution!r}"
            )
        weights[0] = 0.0
        total = weights.sum()
        if total <= 0:
            raise ValueError("item_counts give every item a zero probability")
        probs = weights / total  # (I + 1,)
        self.num_items = num_items
        self.distribution = distribution
        self.power = power
        self.sync_distributed = sync_distributed
        # float64 cumulative sums keep the tail items' probabilities exact for large corpora.
        self.register_buffer("probs", probs, persistent=False)
        self.register_buffer("cdf", probs.cumsum(0), persistent=False)

    def log_prob(self, item_ids: Tensor) -> Tensor:
        """Log of the per-draw probability of each id (-inf for ids that are never drawn).

        Args:
            item_ids: (N,) long ids.

        Returns:
            (N,) float32.
        """
        return self.probs[item_ids].log().float()

    @torch.no_grad()
    def sample(self, num: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draws `num` ids with replacement by inverting the cumulative distribution.

        Args:
            num: the number of ids `N`.
            generator: a `torch.Generator` on the buffers' device, for reproducible draws.

        Returns:
            ids: (N,) long in 1..num_items.
            log_q: (N,) float32, the log per-draw probability of each drawn id.
        """
        device = self.cdf.device
        if self.distribution == "uniform":
            ids = torch.randint(1, self.num_items + 1, (num,), generator=generator, device=device)
        else:
            u = torch.rand(num, generator=generator, device=device, dtype=torch.float64)  # (N,)
            u = u * self.cdf[-1]
            # right=True skips the zero-probability ids, whose cdf equals their predecessor's.
            ids = torch.searchsorted(self.cdf, u, right=True).clamp_(1, self.num_items)  # (N,)
        if distributed_world(self.sync_distributed) > 1:
            dist.broadcast(ids, src=0)  # one shared set of negatives (see the class doc)
        return ids, self.log_prob(ids)

    def extra_repr(self) -> str:
        return f"num_items={self.num_items}, distribution={self.distribution!r}, power={self.power}"


class MixedNegativeSoftmax(InBatchSoftmax):
    """The mixed-negative softmax (Yang et al., WWW 2020): the in-batch negatives plus
    `num_negatives` items drawn from the corpus, shared by every row (and, under DDP, every rank).

    For row `i`, with `s` the similarity and `tau` the temperature:

        logit[i, j]     = s(u_i, v_j) / tau - pos_log_q[j]               j < B   (in-batch)
        logit[i, B + n] = s(u_i, w_n) / tau - (neg_log_q[n] + log N)     n < N   (corpus)

    Both corrections are the log of the expected number of times the column's item is offered by
    its own source: `pos_log_q` is the log probability of appearing in a batch (the streaming
    estimate, about `B * q_batch(j)` for all but the head items), and `N` draws with per-draw
    probability `q(n)` offer item `n` `N * q(n)` times in expectation, hence `+ log N`, which puts
    the two sources on one scale; both apply with `logq=True`. Accidental hits, a column holding
    row `i`'s own positive item (another row's identical positive, or a corpus draw of it), are
    set to `mask_value`.

    Under DDP the estimate behind `pos_log_q` is the probability of appearing in the *global*
    batch, so the in-batch columns are every rank's positives (gathered with their gradients): a
    rank-local softmax would over-correct its in-batch columns by about `log W` against the
    corpus columns. The corpus negatives are the same on every rank
    (`CorpusNegativeSampler.sample` broadcasts rank zero's draw), so W ranks of batch B compute
    the loss of one process with batch W * B and the same `N` negatives.

    Args:
        num_negatives: corpus negatives `N` per batch, shared by every row.
        distribution: corpus draws "uniform" or by "popularity" (training counts ** power).
        power: the popularity exponent.
        **kwargs: as `InBatchSoftmax` (temperature, similarity, logq, the estimator's settings).
    """

    kind = "mixed"

    @checked
    def __init__(
        self,
        *,
        num_negatives: Count = 512,
        distribution: Literal["uniform", "popularity"] = "uniform",
        power: float = 0.75,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_negatives = int(num_negatives)
        self.distribution = distribution
        self.power = power
        #: The corpus draws, made by `bind`.
        self.corpus: CorpusNegativeSampler | None = None

    def bind(self, *, num_items: int, item_counts: Tensor, seed: int = 0) -> MixedNegativeSoftmax:
        super().bind(num_items=num_items, item_counts=item_counts, seed=seed)
        self.corpus = CorpusNegativeSampler(
            num_items=num_items,
            distribution=self.distribution,
            power=self.power,
            item_counts=item_counts if self.distribution == "popularity" else None,
            sync_distributed=self.sync_distributed,
        )
        return self

    def forward(
        self, user_emb: Tensor, item_emb: Tensor, item_ids: Tensor, item_tower: ItemTower
    ) -> Tensor:
        log_q = self.batch_log_q(item_ids)
        neg_ids, neg_log_q = self.corpus.sample(self.num_negatives)  # (N,), (N,)
        neg_emb = item_tower(neg_ids)  # (N, D)
        return self.loss(
            user_emb,
            item_emb,
            item_ids,
            log_q=log_q,
            negatives=(neg_emb, neg_ids, neg_log_q if self.logq else None),
        )

    def _logits(
        self, user_emb: Tensor, pos: GlobalPositives, negatives: Negatives | None
    ) -> Tensor:
        """(B, M + N): the (B, M) in-batch logits followed by the corpus columns."""
        in_batch = super()._logits(user_emb, pos, None)  # (B, M)
        if negatives is None:
            return in_batch
        neg_emb, neg_ids, neg_log_q = negatives
        num_neg = neg_emb.shape[0]
        if neg_ids.shape != (num_neg,):
            raise ValueError(f"expected neg_ids ({num_neg},), got {tuple(neg_ids.shape)}")
        if neg_log_q is not None and neg_log_q.shape != (num_neg,):
            raise ValueError(f"expected neg_log_q ({num_neg},), got {tuple(neg_log_q.shape)}")
        corpus = similarity_matrix(user_emb, neg_emb, similarity=self.similarity)
        corpus = corpus / self.temperature  # (B, N)
        if neg_log_q is not None:
            correction = neg_log_q.float() + math.log(num_neg)  # (N,)
            corpus = corpus - correction.to(corpus.dtype).unsqueeze(0)
        if self.mask_accidental_hits:
            rows = torch.arange(user_emb.shape[0], device=corpus.device)  # (B,)
            own = pos.ids[pos.offset + rows]  # (B,) each row's positive
            hits = accidental_hits(own, neg_ids, exclude_diagonal=False)  # (B, N)
            corpus = corpus.masked_fill(hits, mask_value(corpus.dtype))
        return torch.cat([in_batch, corpus], dim=1)  # (B, M + N)

    def summary(self) -> Mapping[str, Any]:
        return {
            **super().summary(),
            "num_negatives": self.num_negatives,
            "distribution": self.distribution,
            "power": self.power,
        }
