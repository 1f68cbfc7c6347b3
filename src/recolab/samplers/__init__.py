"""Negatives and losses for training retrieval models (DESIGN.md sections 2 and 4).

- `in_batch_softmax_loss`: the batch's other positives as negatives, accidental hits masked,
  optional logQ correction (Yi et al., RecSys 2019).
- `StreamingFrequencyEstimator`: the streaming estimate of `p_j` (probability that item `j`
  appears in a batch) behind that correction, synced across ranks under DDP.
- `CorpusNegativeSampler` and `mixed_negative_softmax_loss`: uniform or popularity negatives from
  the corpus, mixed with the in-batch ones (Yang et al., WWW 2020).
- Under DDP both losses run over the global batch (every rank's positives, one shared set of
  corpus negatives), so the loss does not depend on the number of ranks
  (`recolab.samplers.distributed`).

A training step with logQ-corrected in-batch negatives (u, v: (B, D) tower outputs):

    estimator.update(batch["item_id"])
    log_q = estimator.log_q(batch["item_id"])                           # (B,)
    loss = in_batch_softmax_loss(u, v, batch["item_id"], log_q=log_q, temperature=0.05)

and with mixed negatives (w: (N, D) item-tower output for the sampled ids):

    neg_ids, neg_log_q = sampler.sample(N)                              # (N,), (N,)
    loss = mixed_negative_softmax_loss(u, v, batch["item_id"], w, neg_ids,
                                       pos_log_q=log_q, neg_log_q=neg_log_q)

This package imports nothing else from recolab.
"""

from recolab.samplers.frequency import StreamingFrequencyEstimator
from recolab.samplers.in_batch import (
    accidental_hits,
    in_batch_logits,
    in_batch_softmax_loss,
    mask_value,
    similarity_matrix,
)
from recolab.samplers.negatives import (
    CorpusNegativeSampler,
    mixed_negative_logits,
    mixed_negative_softmax_loss,
)

__all__ = [
    "CorpusNegativeSampler",
    "StreamingFrequencyEstimator",
    "accidental_hits",
    "in_batch_logits",
    "in_batch_softmax_loss",
    "mask_value",
    "mixed_negative_logits",
    "mixed_negative_softmax_loss",
    "similarity_matrix",
]
