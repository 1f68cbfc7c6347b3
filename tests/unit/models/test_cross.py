"""DCN-V2's cross network (Wang et al., WWW 2021) against its equations, computed element by
element on tiny dimensions, and under every ranker through the feature embedding."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from recolab.models.blocks import FeatureEmbedding
from recolab.models.cross import CrossNetwork
from recolab.models.rank.cgc import CGC, PLE
from recolab.models.rank.mmoe import MMoE
from recolab.models.rank.shared_bottom import SharedBottom
from recolab.models.rank.single_task import SingleTask
from recolab.params import ArgumentError

from .rank.helpers import SCHEMA, check_model, tiny_batch

D = 3


def x0() -> torch.Tensor:
    return torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]])  # (B=2, d=3)


def matvec(m, v):  # m: rows of a matrix, v: a list
    return [sum(a * b for a, b in zip(row, v)) for row in m]


def test_full_rank_layers_are_equation_1():
    # x_{l+1} = x_0 * (W_l x_l + b_l) + x_l, element by element.
    torch.manual_seed(0)
    net = CrossNetwork(D, num_layers=2)
    got = net(x0())
    for b, row in enumerate(x0().tolist()):
        x = row
        for layer in net.w:
            W, bias = layer.weight.tolist(), layer.bias.tolist()
            wx = matvec(W, x)
            x = [row[i] * (wx[i] + bias[i]) + x[i] for i in range(D)]
        torch.testing.assert_close(got[b], torch.tensor(x))


def test_low_rank_layers_are_equation_3():
    # x_{l+1} = x_0 * (U_l (V_l^T x_l) + b_l) + x_l with U_l (d, r), V_l (d, r): here the
    # stored v is V (d, r) and u is U^T (r, d).
    torch.manual_seed(1)
    net = CrossNetwork(D, num_layers=2, low_rank=2)
    with torch.no_grad():
        for b in net.b:
            b.uniform_(-1, 1)  # zero at initialization: make the test see it
    got = net(x0())
    for n, row in enumerate(x0().tolist()):
        x = row
        for v, u, bias in zip(net.v, net.u, net.b):
            V, Ut, bias = v[0].tolist(), u[0].tolist(), bias.tolist()
            vx = [sum(V[i][k] * x[i] for i in range(D)) for k in range(2)]  # V^T x, (r,)
            uvx = [sum(Ut[k][i] * vx[k] for k in range(2)) for i in range(D)]  # U V^T x, (d,)
            x = [row[i] * (uvx[i] + bias[i]) + x[i] for i in range(D)]
        torch.testing.assert_close(got[n], torch.tensor(x))


def test_mixture_of_low_rank_experts_is_equation_4():
    # x_{l+1} = sum_i G_i(x_l) E_i(x_l) + x_l, E_i(x) = x_0 * (U_i g(C_i g(V_i^T x)) + b),
    # G = softmax over the experts of a linear map of x_l; g = ReLU here.
    torch.manual_seed(2)
    K, r = 2, 2
    net = CrossNetwork(D, num_layers=1, low_rank=r, num_experts=K, activation="relu")
    with torch.no_grad():
        net.b[0].uniform_(-1, 1)
    got = net(x0())
    relu = lambda z: max(z, 0.0)  # noqa: E731
    for n, x in enumerate(x0().tolist()):
        logits = matvec(net.gates[0].weight.tolist(), x)
        gate = [math.exp(z) / sum(math.exp(y) for y in logits) for z in logits]
        mix = [0.0] * D
        for i in range(K):
            V, C, Ut = net.v[0][i].tolist(), net.c[0][i].tolist(), net.u[0][i].tolist()
            h = [relu(sum(V[j][k] * x[j] for j in range(D))) for k in range(r)]  # g(V^T x)
            h = [relu(sum(h[k] * C[k][m] for k in range(r))) for m in range(r)]  # g(C g(V^T x))
            e = [
                x[j] * (sum(h[k] * Ut[k][j] for k in range(r)) + net.b[0][j].item())
                for j in range(D)
            ]
            mix = [mix[j] + gate[i] * e[j] for j in range(D)]
        torch.testing.assert_close(got[n], torch.tensor([mix[j] + x[j] for j in range(D)]))


def test_parallel_concatenates_the_cross_output_and_a_deep_mlp():
    torch.manual_seed(3)
    net = CrossNetwork(D, num_layers=2, structure="parallel", deep_dims=[4, 5])
    assert net.output_dim == D + 5
    out = net(x0())
    torch.testing.assert_close(out[:, :D], net.cross(x0()))
    torch.testing.assert_close(out[:, D:], net.deep(x0()))
    assert (out[:, D:] >= 0).all()  # the deep MLP's last hidden layer is a ReLU


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_experts": 2}, "num_experts=2 needs low_rank"),
        ({"structure": "parallel"}, "structure='parallel' needs deep_dims"),
        ({"deep_dims": [4]}, r"deep_dims=\[4\] is for structure='parallel'"),
        ({"num_layers": 0}, "num_layers=0"),
        ({"low_rank": 0}, "low_rank=0"),
        ({"structure": "side"}, "structure='side'"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises((ValueError, ArgumentError), match=message):
        CrossNetwork(D, **kwargs)


def test_the_feature_embedding_feeds_its_normalized_vector_through_the_interaction():
    torch.manual_seed(4)
    embed = FeatureEmbedding(
        SCHEMA, embedding_dim=4, batch_norm=True, interaction=partial(CrossNetwork, num_layers=2)
    )
    cross = embed.interaction
    assert cross.input_dim == 4 * 3 + 1 == embed.output_dim  # 2 ids, 1 history, 1 dense value
    batch = tiny_batch()
    got = embed(batch)
    embed.interaction = None  # the embedding's vector as it was before the interaction
    torch.testing.assert_close(got, cross(embed(batch)))


def test_the_parallel_structure_widens_the_embedding():
    embed = FeatureEmbedding(
        SCHEMA,
        embedding_dim=4,
        interaction=partial(CrossNetwork, structure="parallel", deep_dims=[7]),
    )
    assert embed.output_dim == 13 + 7
    assert embed(tiny_batch()).shape == (4, 20)


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
@pytest.mark.parametrize(
    "cross",
    [
        partial(CrossNetwork, num_layers=2),
        partial(CrossNetwork, num_layers=2, low_rank=2, num_experts=2, activation="relu"),
        partial(CrossNetwork, num_layers=1, structure="parallel", deep_dims=[6]),
    ],
    ids=["full", "mixture", "parallel"],
)
def test_every_ranker_takes_the_cross_network_by_its_embedding(make, cross):
    check_model(lambda s: make(partial(FeatureEmbedding, embedding_dim=4, interaction=cross)))
