"""Negatives drawn from the item corpus, and the mixed-negative softmax that uses them.

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
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from recolab.samplers.distributed import GlobalPositives, distributed_world, global_positives
from recolab.samplers.in_batch import (
    Similarity,
    accidental_hits,
    check_positives,
    global_cross_entropy,
    mask_value,
    positive_logits,
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
    as one process holding the global batch would (`mixed_negative_softmax_loss`); every rank
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


def mixed_negative_logits(
    user_emb: Tensor,
    pos_emb: Tensor,
    pos_ids: Tensor,
    neg_emb: Tensor,
    neg_ids: Tensor,
    *,
    pos_log_q: Tensor | None = None,
    neg_log_q: Tensor | None = None,
    temperature: float = 0.05,
    similarity: Similarity = "dot",
    mask_accidental_hits: bool = True,
) -> Tensor:
    """Corrected, masked logits over the `B` in-batch items followed by the `N` corpus items.

    For row `i`, with `s` the similarity and `tau` the temperature:

        logit[i, j]     = s(u_i, v_j) / tau - pos_log_q[j]               j < B   (in-batch)
        logit[i, B + n] = s(u_i, w_n) / tau - (neg_log_q[n] + log N)     n < N   (corpus)

    Both corrections are the log of the expected number of times the column's item is offered by
    its own source: `pos_log_q` is the log probability of appearing in a batch (the streaming
    estimate, about `B * q_batch(j)` for all but the head items), and `N` draws with per-draw
    probability `q(n)` offer item `n` `N * q(n)` times in expectation, hence `+ log N`, which puts
    the two sources on one scale. Accidental hits, a column holding row `i`'s own positive item
    (another row's identical positive, or a corpus draw of it), are set to `mask_value`.

    These are one process's logits. Under DDP the estimate behind `pos_log_q` is the probability
    of appearing in the *global* batch (every rank's rows), so the in-batch columns must be that
    batch's: `mixed_negative_softmax_loss` gathers them (the corrections of both kinds then keep
    the meaning above, whatever the number of ranks).

    Args:
        user_emb: (B, D) user embeddings.
        pos_emb: (B, D) embeddings of each row's positive item.
        pos_ids: (B,) long positive item ids.
        neg_emb: (N, D) embeddings of the corpus negatives, shared by all rows.
        neg_ids: (N,) long ids of the corpus negatives.
        pos_log_q: (B,) log probability that each positive appears in a batch
            (`StreamingFrequencyEstimator.log_q`); None: no correction of in-batch columns.
        neg_log_q: (N,) log per-draw probability of each negative (`CorpusNegativeSampler.sample`'s
            second output); None: no correction of corpus columns.
        temperature: softmax temperature `tau`.
        similarity: "dot" or "cosine".
        mask_accidental_hits: mask the accidental hits described above.

    Returns:
        (B, B + N) logits; row `i`'s target is column `i`.
    """
    check_positives(
        user_emb, pos_emb, pos_ids, pos_log_q, names=("pos_emb", "pos_ids", "pos_log_q")
    )
    return _mixed_logits(
        user_emb,
        GlobalPositives(pos_emb, pos_ids, pos_log_q, offset=0, total=pos_emb.shape[0], world=1),
        neg_emb,
        neg_ids,
        neg_log_q=neg_log_q,
        temperature=temperature,
        similarity=similarity,
        mask_accidental_hits=mask_accidental_hits,
    )


def _mixed_logits(
    user_emb: Tensor,
    pos: GlobalPositives,
    neg_emb: Tensor,
    neg_ids: Tensor,
    *,
    neg_log_q: Tensor | None,
    temperature: float,
    similarity: Similarity,
    mask_accidental_hits: bool,
) -> Tensor:
    """(B, M + N) logits: this rank's rows against the (global) positives, then the corpus."""
    num_neg = neg_emb.shape[0]
    if neg_ids.shape != (num_neg,):
        raise ValueError(f"expected neg_ids ({num_neg},), got {tuple(neg_ids.shape)}")
    if neg_log_q is not None and neg_log_q.shape != (num_neg,):
        raise ValueError(f"expected neg_log_q ({num_neg},), got {tuple(neg_log_q.shape)}")
    in_batch = positive_logits(
        user_emb,
        pos.emb,
        pos.ids,
        pos.log_q,
        offset=pos.offset,
        temperature=temperature,
        similarity=similarity,
        mask_accidental_hits=mask_accidental_hits,
    )  # (B, M)
    corpus = similarity_matrix(user_emb, neg_emb, similarity=similarity) / temperature  # (B, N)
    if neg_log_q is not None:
        correction = neg_log_q.float() + math.log(num_neg)  # (N,)
        corpus = corpus - correction.to(corpus.dtype).unsqueeze(0)
    if mask_accidental_hits:
        rows = torch.arange(user_emb.shape[0], device=corpus.device)  # (B,)
        own = pos.ids[pos.offset + rows]  # (B,) each row's positive
        hits = accidental_hits(own, neg_ids, exclude_diagonal=False)  # (B, N)
        corpus = corpus.masked_fill(hits, mask_value(corpus.dtype))
    return torch.cat([in_batch, corpus], dim=1)  # (B, M + N)


def mixed_negative_softmax_loss(
    user_emb: Tensor,
    pos_emb: Tensor,
    pos_ids: Tensor,
    neg_emb: Tensor,
    neg_ids: Tensor,
    *,
    pos_log_q: Tensor | None = None,
    neg_log_q: Tensor | None = None,
    temperature: float = 0.05,
    similarity: Similarity = "dot",
    mask_accidental_hits: bool = True,
    sync_distributed: bool = True,
) -> Tensor:
    """Mean cross-entropy of the mixed-negative softmax (Yang et al., WWW 2020).

    Arguments as in `mixed_negative_logits`, and:
        sync_distributed: under an initialized `torch.distributed` group, the in-batch columns
            are every rank's positives (gathered with their gradients): `pos_log_q`, the
            streaming estimate, is the probability of appearing in that *global* batch, and a
            rank-local softmax would over-correct its in-batch columns by about `log W` against
            the corpus columns. The corpus negatives must be the same on every rank
            (`CorpusNegativeSampler.sample` broadcasts rank zero's draw), so W ranks of batch B
            compute the loss of one process with batch W * B and the same `N` negatives; the
            loss is scaled so that DDP's gradient average is that process's gradient. False:
            each rank's local batch alone.

    Returns:
        Scalar loss, `mean_i -log softmax(logits[i])[i]` (under DDP: this rank's share of the
        global mean; the ranks' values average to it).
    """
    check_positives(
        user_emb, pos_emb, pos_ids, pos_log_q, names=("pos_emb", "pos_ids", "pos_log_q")
    )
    pos = global_positives(pos_emb, pos_ids, pos_log_q, sync_distributed=sync_distributed)
    logits = _mixed_logits(
        user_emb,
        pos,
        neg_emb,
        neg_ids,
        neg_log_q=neg_log_q,
        temperature=temperature,
        similarity=similarity,
        mask_accidental_hits=mask_accidental_hits,
    )  # (B, M + N)
    return global_cross_entropy(logits, pos)
