"""Capsule routing (MIND, ComiRec-DR), label-aware attention, ComiRec-SA attention: paper equations."""

import math

import pytest
import torch

from recolab.models.recall import MIND, ComiRecDR, ComiRecSA
from recolab.models.recall._blocks import capsule_routing, label_aware_attention

# K = 2 interests, L = 3 behaviors, D = 2
BEHAVIORS = [[1.0, 0.0], [0.5, 0.5], [-0.2, 1.0]]
INIT = [[0.3, -0.1, 0.2], [-0.5, 0.4, 0.0]]  # b[j][i]: interest j, behavior i


def _loop_routing(predictions, init, iterations, *, softmax_over="interests"):
    """Algorithm 1 of MIND with explicit loops; predictions[j][i] is u_hat[j|i]."""
    num_interests, length, dim = len(predictions), len(predictions[0]), len(predictions[0][0])
    b = [row[:] for row in init]
    for it in range(iterations):
        w = [[0.0] * length for _ in range(num_interests)]
        for j in range(num_interests):
            for i in range(length):
                if softmax_over == "interests":
                    w[j][i] = math.exp(b[j][i]) / sum(
                        math.exp(b[k][i]) for k in range(num_interests)
                    )
                else:
                    w[j][i] = math.exp(b[j][i]) / sum(math.exp(b[j][k]) for k in range(length))
        capsules = []
        for j in range(num_interests):
            z = [sum(w[j][i] * predictions[j][i][d] for i in range(length)) for d in range(dim)]
            norm2 = sum(x * x for x in z)
            capsules.append([norm2 / (1 + norm2) * x / math.sqrt(norm2) for x in z])
        if it < iterations - 1:
            for j in range(num_interests):
                for i in range(length):
                    b[j][i] += sum(predictions[j][i][d] * capsules[j][d] for d in range(dim))
    return torch.tensor(capsules)


def _routing(predictions, init, iterations):
    return capsule_routing(
        torch.tensor(predictions).unsqueeze(0),
        torch.ones(1, 3, dtype=torch.bool),
        torch.tensor(init),
        iterations=iterations,
    )[0]


@pytest.mark.parametrize("iterations", [1, 3])
def test_routing_matches_the_loop_with_shared_identity_map(iterations):
    predictions = [BEHAVIORS, BEHAVIORS]  # S = identity: u_hat[j|i] = e_i for every j
    expected = _loop_routing(predictions, INIT, iterations)
    torch.testing.assert_close(_routing(predictions, INIT, iterations), expected)
    # the test discriminates: the other softmax axis gives other capsules
    other_axis = _loop_routing(predictions, INIT, iterations, softmax_over="behaviors")
    assert not torch.allclose(expected, other_axis, atol=1e-3)


def test_iterations_matter():
    predictions = [BEHAVIORS, BEHAVIORS]
    one, three = _routing(predictions, INIT, 1), _routing(predictions, INIT, 3)
    assert not torch.allclose(one, three, atol=1e-3)


def test_padded_behaviors_route_nothing():
    predictions = torch.tensor([BEHAVIORS, BEHAVIORS]).unsqueeze(0)  # (1, K, L, D)
    mask = torch.tensor([[False, True, True]])
    got = capsule_routing(predictions, mask, torch.tensor(INIT), iterations=3)[0]
    expected = _loop_routing([BEHAVIORS[1:], BEHAVIORS[1:]], [row[1:] for row in INIT], 3)
    torch.testing.assert_close(got, expected)


def _set_history_embeddings(model):
    with torch.no_grad():
        model.item.ids.weight[1:4] = torch.tensor(BEHAVIORS)
    return {"user_id": torch.tensor([1]), "hist_items": torch.tensor([[1, 2, 3]])}


def test_mind_routes_with_its_fixed_random_logits():
    model = MIND(num_items=5, dim=2, num_interests=2, history_len=3, dynamic_interests=False)
    with torch.no_grad():
        model.bilinear.weight.copy_(torch.eye(2))
        model.routing_logits.copy_(torch.tensor(INIT))
    batch = _set_history_embeddings(model)
    capsules, active = model.interest_capsules(batch)
    torch.testing.assert_close(capsules[0], _loop_routing([BEHAVIORS, BEHAVIORS], INIT, 3))
    assert active.all()
    # fixed: a second call routes from the same logits; a buffer, not a parameter
    torch.testing.assert_close(model.interest_capsules(batch)[0], capsules)
    assert "routing_logits" in model.state_dict()
    assert all("routing" not in name for name, _ in model.named_parameters())


def test_comirec_dr_routes_from_zero_logits_with_per_position_maps():
    model = ComiRecDR(num_items=5, dim=2, num_interests=2, history_len=3)
    scales = [[1.0, 2.0], [0.5, -1.0], [1.5, 0.3]]  # W_ij = scales[i][j] * identity
    with torch.no_grad():
        for i in range(3):
            for j in range(2):
                model.transforms[i, j] = scales[i][j] * torch.eye(2)
    batch = _set_history_embeddings(model)
    predictions = [[[scales[i][j] * x for x in BEHAVIORS[i]] for i in range(3)] for j in range(2)]
    expected = _loop_routing(predictions, [[0.0] * 3, [0.0] * 3], 3)
    torch.testing.assert_close(model.user_embeddings(batch)[0], expected)


def test_mind_dynamic_number_of_interests():
    model = MIND(num_items=20, dim=4, num_interests=4, history_len=10).eval()
    lengths = [0, 1, 3, 4, 7, 8, 10]
    hist = torch.zeros(len(lengths), 10, dtype=torch.long)
    for row, n in enumerate(lengths):
        if n:
            hist[row, -n:] = torch.arange(1, n + 1)
    batch = {"user_id": torch.zeros(len(lengths), dtype=torch.long), "hist_items": hist}
    # K'_u = max(1, min(K, floor(log2 n)))
    assert model.num_active_interests(hist > 0).tolist() == [1, 1, 1, 2, 2, 3, 3]
    capsules, active = model.interest_capsules(batch)
    assert active.sum(1).tolist() == [1, 1, 1, 2, 2, 3, 3]
    assert torch.all(capsules[~active] == 0)
    users = model.user_embeddings(batch)
    for row in range(len(lengths)):
        for k in range(4):
            if not active[row, k]:
                torch.testing.assert_close(users[row, k], users[row, 0])


def test_label_aware_attention_power():
    interests = torch.tensor([[[1.5, 0.0], [0.0, 3.0], [2.0, 2.0]]])  # (1, K=3, D=2)
    target = torch.tensor([[1.0, 1.0]])  # scores 1.5, 3.0, 4.0
    uniform = label_aware_attention(interests, target, pow_p=0)
    torch.testing.assert_close(uniform, interests.mean(dim=1))
    hard = label_aware_attention(interests, target, pow_p=16)
    torch.testing.assert_close(hard, interests[:, 2], atol=1e-5, rtol=0)
    soft = label_aware_attention(interests, target, pow_p=1)
    weights = torch.tensor([1.5, 3.0, 4.0]).softmax(0)
    torch.testing.assert_close(soft[0], (weights.unsqueeze(1) * interests[0]).sum(0))
    # a switched-off interest takes no part
    masked = label_aware_attention(
        interests, target, pow_p=0, interest_mask=torch.tensor([[True, True, False]])
    )
    torch.testing.assert_close(masked, interests[:, :2].mean(dim=1))


def test_mind_rejects_fractional_power():
    with pytest.raises(ValueError, match="pow_p"):
        MIND(num_items=5, pow_p=1.5)


def test_comirec_sa_attention_normalizes_over_the_sequence_and_skips_padding():
    torch.manual_seed(0)
    model = ComiRecSA(num_items=20, dim=4, num_interests=3, history_len=8).eval()
    hist = torch.tensor(
        [[0, 0, 0, 0, 0, 4, 9, 2], [0, 0, 0, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7, 8]]
    )
    batch = {"user_id": torch.zeros(3, dtype=torch.long), "hist_items": hist}
    weights, _ = model.attention(batch)  # (B, K, L)
    assert weights.shape == (3, 3, 8)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(3, 3))
    assert torch.all(weights[0, :, :5] == 0)
    torch.testing.assert_close(weights[1], torch.full((3, 8), 1 / 8))  # no behavior: no NaN
    # more left padding changes nothing (positions are right-aligned)
    short = {"user_id": batch["user_id"][:1], "hist_items": hist[:1, -4:]}
    torch.testing.assert_close(model.user_embeddings(short)[0], model.user_embeddings(batch)[0])
