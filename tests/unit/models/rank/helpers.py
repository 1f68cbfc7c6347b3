"""`check_model`: what every ranker's test checks (shapes, finite gradients, seeded reproducibility)."""

from __future__ import annotations

from functools import partial

import torch

from recolab.data.schema import DenseFeature, Schema, SequenceFeature, SparseFeature, Task
from recolab.models.blocks import FeatureEmbedding

SCHEMA = Schema(
    sparse=(SparseFeature("user_id", 10), SparseFeature("item_id", 20)),
    dense=(DenseFeature("price"),),
    sequences=(SequenceFeature("hist", 20, 5, vocab_of="item_id"),),
    tasks=(Task("click"), Task("like"), Task("watch_time", kind="regression", transform="log1p")),
)

#: The feature embedding the tests give the rankers (the config's `model.embedding` node).
EMBED8 = partial(FeatureEmbedding, embedding_dim=8)


def tiny_batch(schema: Schema = SCHEMA, batch: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    feats = {f.name: torch.randint(0, f.vocab_size, (batch,), generator=g) for f in schema.sparse}
    feats |= {f.name: torch.randn(batch, generator=g) for f in schema.dense}
    feats |= {
        f.name: torch.randint(0, f.vocab_size, (batch, f.max_len), generator=g)
        for f in schema.sequences
    }
    return feats


def check_model(make, schema: Schema = SCHEMA) -> None:
    torch.manual_seed(0)
    model = make(schema)
    batch = tiny_batch(schema)
    out = model(batch)
    assert set(out) == set(schema.task_names)
    for t, o in out.items():
        assert o.shape == (4,), (t, o.shape)
        assert torch.isfinite(o).all()
    sum(o.sum() for o in out.values()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(p.grad).all(), name
    torch.manual_seed(0)
    again = make(schema)
    for a, b in zip(model(batch).values(), again(batch).values()):
        torch.testing.assert_close(a, b)
