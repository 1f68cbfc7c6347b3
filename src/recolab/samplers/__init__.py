"""Training softmaxes for retrieval models, as objects a recall pipeline is given (DESIGN.md
sections 2 and 4), chosen by `_target_` in `configs/sampler/`:

- `InBatchSoftmax`: the batch's other positives as negatives, accidental hits masked, optional
  logQ correction from a `StreamingFrequencyEstimator` it owns (Yi et al., RecSys 2019);
- `MixedNegativeSoftmax`: those plus uniform or popularity negatives drawn from the corpus by a
  `CorpusNegativeSampler` (Yang et al., WWW 2020).

Each owns its temperature and similarity, is bound to the data once (`bind(num_items=...,
item_counts=..., seed=...)`) and returns a training step's loss (u, v: (B, D) tower outputs):

    sampler = InBatchSoftmax(temperature=0.05, logq=True).bind(num_items=I, item_counts=counts)
    loss = sampler(u, v, batch["item_id"], model.item_embeddings)

Under DDP every loss runs over the global batch (every rank's positives, one shared set of corpus
negatives), so the loss does not depend on the number of ranks (`recolab.samplers.distributed`).
A new sampler is a subclass with its own `forward` (and `bind`, `summary`) and one YAML file in
`configs/sampler/`.

This package imports nothing else from recolab.
"""

from recolab.samplers.frequency import StreamingFrequencyEstimator
from recolab.samplers.in_batch import (
    InBatchSoftmax,
    accidental_hits,
    mask_value,
    similarity_matrix,
)
from recolab.samplers.negatives import CorpusNegativeSampler, MixedNegativeSoftmax

__all__ = [
    "CorpusNegativeSampler",
    "InBatchSoftmax",
    "MixedNegativeSoftmax",
    "StreamingFrequencyEstimator",
    "accidental_hits",
    "mask_value",
    "similarity_matrix",
]
