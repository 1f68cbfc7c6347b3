"""DIN's target attention (Zhou et al., KDD 2018): the activation unit computed by hand, raw
(unnormalized) weights, padding without effect, and under every ranker through the embedding."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from recolab.data.schema import DenseFeature, Schema, SequenceFeature, SparseFeature, Task
from recolab.models.blocks import FeatureEmbedding, masked_mean
from recolab.models.din import TargetAttention
from recolab.models.rank.cgc import CGC, PLE
from recolab.models.rank.mmoe import MMoE
from recolab.models.rank.shared_bottom import SharedBottom
from recolab.models.rank.single_task import SingleTask
from recolab.params import ArgumentError

from .rank.helpers import SCHEMA, check_model, tiny_batch

D = 2


def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    history = torch.tensor(
        [[[0.0, 0.0], [1.0, -0.5], [0.25, 2.0]], [[0.5, 0.5], [-1.0, 1.5], [2.0, 0.0]]]
    )  # (B=2, L=3, D=2); row 0's first position is padding
    candidate = torch.tensor([[0.5, 1.0], [-0.25, 0.75]])  # (B, D)
    mask = torch.tensor([[False, True, True], [True, True, True]])  # (B, L)
    return history, candidate, mask


def unit_by_hand(att: TargetAttention, e: list[float], v: list[float]) -> float:
    """a(e, v): [e, v, e - v, e * v] -> Linear -> PReLU -> Linear, element by element."""
    z = e + v + [a - b for a, b in zip(e, v)] + [a * b for a, b in zip(e, v)]
    first, prelu, last = att.unit
    h = [
        sum(w * x for w, x in zip(row, z)) + b
        for row, b in zip(first.weight.tolist(), first.bias.tolist())
    ]
    h = [x if x >= 0 else slope * x for x, slope in zip(h, prelu.weight.tolist())]
    return sum(w * x for w, x in zip(last.weight[0].tolist(), h)) + last.bias.item()


def test_pooling_is_the_raw_weighted_sum_of_the_paper():
    # v_U(a) = sum_j a(e_j, v_a) e_j over the history's items, a(.) used without softmax.
    torch.manual_seed(0)
    att = TargetAttention(D, hidden_dims=[3])
    with torch.no_grad():
        att.unit[1].weight.copy_(torch.tensor([0.1, 0.3, 0.5]))  # distinct PReLU slopes
    history, candidate, mask = inputs()
    weights, pooled = att.weights(history, candidate, mask), att(history, candidate, mask)
    for b in range(2):
        v = candidate[b].tolist()
        want_w = [
            unit_by_hand(att, history[b, j].tolist(), v) if mask[b, j] else 0.0 for j in range(3)
        ]
        torch.testing.assert_close(weights[b], torch.tensor(want_w))
        want = [sum(want_w[j] * history[b, j, d].item() for j in range(3)) for d in range(D)]
        torch.testing.assert_close(pooled[b], torch.tensor(want))
    # not normalized: the weights of a row do not sum to 1
    assert not torch.allclose(weights.sum(1), torch.ones(2))


def test_padding_has_no_effect():
    torch.manual_seed(1)
    att = TargetAttention(D, hidden_dims=[4])
    history, candidate, mask = inputs()
    history.requires_grad_(True)
    out = att(history, candidate, mask)
    other = history.detach().clone()
    other[0, 0] = torch.tensor([7.0, -3.0])  # whatever sits at the padded position
    torch.testing.assert_close(att(other, candidate, mask), out)
    out.sum().backward()
    assert (history.grad[0, 0] == 0).all()  # and it gets no gradient
    # a history of padding only pools to zeros
    empty = att(history, candidate, torch.zeros_like(mask))
    assert (empty == 0).all()


def test_weights_depend_on_the_candidate():
    torch.manual_seed(2)
    att = TargetAttention(D)
    history, candidate, mask = inputs()
    assert not torch.allclose(
        att.weights(history, candidate, mask), att.weights(history, -candidate, mask)
    )


def test_the_embedding_pools_histories_with_a_candidate_and_keeps_the_mean_elsewhere():
    schema = Schema(
        sparse=(SparseFeature("user_id", 10), SparseFeature("item_id", 20)),
        dense=(DenseFeature("price"),),
        sequences=(
            SequenceFeature("hist", 20, 5, vocab_of="item_id"),
            SequenceFeature("tags", 6, 3),  # no candidate: mean pooling
        ),
        tasks=(Task("click"),),
    )
    torch.manual_seed(3)
    embed = FeatureEmbedding(schema, embedding_dim=4, pooling=partial(TargetAttention))
    assert list(embed.pooling) == ["hist"]
    batch = tiny_batch(schema)
    batch["item_id"] = batch["item_id"].clamp_min(1)
    batch["hist"][:, :2] = 0  # left padding
    out = embed(batch)  # (B, 4 * 4 + 1): user, item, hist, tags, price
    items = embed.tables["item_id"]
    want_hist = embed.pooling["hist"](
        items(batch["hist"]), items(batch["item_id"]), batch["hist"] > 0
    )
    torch.testing.assert_close(out[:, 8:12], want_hist)
    tags = batch["tags"]
    torch.testing.assert_close(out[:, 12:16], masked_mean(embed.tables["tags"](tags), tags > 0))
    # padding rows (item 0) have no effect on the pooled history
    with torch.no_grad():
        items.weight[0] += 5.0
    torch.testing.assert_close(embed(batch)[:, 8:12], want_hist)


def test_pooling_needs_a_history_with_a_candidate():
    schema = Schema(sparse=(SparseFeature("user_id", 10),), tasks=(Task("click"),))
    with pytest.raises(ValueError, match="model.embedding.pooling: target attention needs"):
        FeatureEmbedding(schema, pooling=TargetAttention)
    with pytest.raises(ValueError, match="model.embedding.sparse=false"):
        FeatureEmbedding(SCHEMA, sparse=True, pooling=TargetAttention)
    with pytest.raises(ArgumentError, match="hidden_dims"):
        TargetAttention(4, hidden_dims=[])


@pytest.mark.parametrize(
    "make",
    [
        lambda e: MMoE(SCHEMA, embedding=e, num_experts=2, expert_dims=[8, 4], tower_dims=[4]),
        lambda e: SharedBottom(SCHEMA, embedding=e, bottom_dims=[8], tower_dims=[4]),
        lambda e: CGC(SCHEMA, embedding=e, expert_dims=[8], tower_dims=[4]),
        lambda e: PLE(SCHEMA, embedding=e, expert_dims=[8], tower_dims=[4]),
        lambda e: SingleTask(SCHEMA, embedding=e, hidden_dims=[8]),
    ],
    ids=["mmoe", "shared_bottom", "cgc", "ple", "single_task"],
)
def test_every_ranker_takes_target_attention_by_its_embedding(make):
    pooling = partial(TargetAttention, hidden_dims=[6])
    check_model(lambda s: make(partial(FeatureEmbedding, embedding_dim=4, pooling=pooling)))


def test_din_and_the_cross_network_together():
    from recolab.models.cross import CrossNetwork

    embedding = partial(
        FeatureEmbedding,
        embedding_dim=4,
        batch_norm=True,
        pooling=TargetAttention,
        interaction=partial(CrossNetwork, num_layers=2, low_rank=3),
    )
    check_model(
        lambda s: MMoE(s, embedding=embedding, num_experts=2, expert_dims=[8], tower_dims=[4])
    )
