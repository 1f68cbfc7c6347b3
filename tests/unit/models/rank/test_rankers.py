import pytest
import torch

from recolab.models.blocks import FeatureEmbedding
from recolab.models.rank.mmoe import MMoE
from recolab.models.rank.shared_bottom import SharedBottom

from .helpers import EMBED8, SCHEMA, check_model, tiny_batch


def test_shared_bottom():
    check_model(lambda s: SharedBottom(s, embedding=EMBED8, bottom_dims=[16], tower_dims=[8]))


def test_mmoe():
    check_model(
        lambda s: MMoE(s, embedding=EMBED8, num_experts=2, expert_dims=[16, 8], tower_dims=[8])
    )


def test_mmoe_with_batch_norm_in_the_experts():
    check_model(
        lambda s: MMoE(
            s, embedding=EMBED8, num_experts=3, expert_dims=[16, 8], tower_dims=[4], batch_norm=True
        )
    )


def test_mmoe_gates_are_per_task_softmax():
    model = MMoE(SCHEMA, embedding=EMBED8, num_experts=3, expert_dims=[8])
    gates = model.gate_weights(tiny_batch())
    for g in gates.values():
        assert g.shape == (4, 3)
        torch.testing.assert_close(g.sum(-1), torch.ones(4))
    assert not torch.allclose(gates["click"], gates["like"])  # separate gates


def test_mmoe_computes_the_papers_formula():
    # Ma et al., KDD 2018: y_k = h^k(f^k(x)), f^k(x) = sum_e g^k(x)_e f_e(x) (eq. 4),
    # g^k(x) = softmax(W_gk x) (eq. 5), computed here expert by expert from the parameters.
    torch.manual_seed(0)
    model = MMoE(SCHEMA, embedding=EMBED8, num_experts=3, expert_dims=[16, 8], tower_dims=[8])
    batch = tiny_batch()
    x = model.embed(batch)  # (B, F)

    def expert(e: int) -> torch.Tensor:  # f_e(x): Linear -> ReLU per layer
        h = x
        for w, b in zip(model.experts.weights, model.experts.biases):
            h = torch.relu(h @ w[e] + b[e])
        return h

    experts = [expert(e) for e in range(3)]
    out = model(batch)
    for t in SCHEMA.task_names:
        gate = torch.softmax(x @ model.gates[t].weight.t() + model.gates[t].bias, dim=-1)  # (B, E)
        mixture = sum(gate[:, e : e + 1] * experts[e] for e in range(3))  # (B, H)
        torch.testing.assert_close(out[t], model.towers[t](mixture).squeeze(-1))
        torch.testing.assert_close(model.gate_weights(batch)[t], gate)


def test_mmoe_with_one_expert_is_a_shared_bottom():
    # E = 1: every gate is 1, so each task reads the single expert, as a shared bottom does.
    torch.manual_seed(0)
    mmoe = MMoE(SCHEMA, embedding=EMBED8, num_experts=1, expert_dims=[16], tower_dims=[8])
    sb = SharedBottom(SCHEMA, embedding=EMBED8, bottom_dims=[16], tower_dims=[8])
    sb.embed.load_state_dict(mmoe.embed.state_dict())
    sb.bottom.load_state_dict(mmoe.experts.expert(0).state_dict())
    sb.towers.load_state_dict(mmoe.towers.state_dict())
    batch = tiny_batch()
    for t in SCHEMA.task_names:
        torch.testing.assert_close(mmoe(batch)[t], sb(batch)[t])


def test_sequence_embedding_ignores_padding():
    emb = FeatureEmbedding(SCHEMA, embedding_dim=4)
    batch = tiny_batch()
    batch["hist"] = torch.tensor([[0, 0, 0, 3, 5]] * 4)
    a = emb(batch)
    batch["hist"] = torch.tensor([[0, 0, 0, 0, 3]] * 4)
    batch["hist"][:, :4] = 0
    batch["hist"] = torch.tensor([[3, 5, 0, 0, 0]] * 4)  # same items, other padding layout
    torch.testing.assert_close(emb(batch), a)


def test_zero_experts_is_refused():
    with pytest.raises(ValueError, match="num_experts"):
        MMoE(SCHEMA, num_experts=0)
