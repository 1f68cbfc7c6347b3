"""In-batch softmax: accidental-hit masking and the logQ-corrected loss (Yi et al., RecSys 2019)."""

import math

import pytest
import torch

from recolab.samplers import InBatchSoftmax, mask_value


def _hand_loss(user, item, log_q, tau, masked):
    """-mean_i log softmax_i over the unmasked columns, from plain Python floats."""
    losses = []
    for i, u in enumerate(user):
        logits = {
            j: (u[0] * v[0] + u[1] * v[1]) / tau - log_q[j]
            for j, v in enumerate(item)
            if (i, j) not in masked
        }
        log_norm = math.log(sum(math.exp(z) for z in logits.values()))
        losses.append(log_norm - logits[i])
    return sum(losses) / len(losses)


def test_masking_removes_exactly_the_duplicate_items():
    ids = torch.tensor([5, 7, 5, 9, 7, 5])
    torch.manual_seed(0)
    user, item = torch.randn(6, 4), torch.randn(6, 4)
    raw = InBatchSoftmax(temperature=0.5, mask_accidental_hits=False).logits(user, item, ids)
    masked = InBatchSoftmax(temperature=0.5).logits(user, item, ids)

    expected = {(i, j) for i in range(6) for j in range(6) if i != j and ids[i] == ids[j]}
    got = {tuple(x) for x in (masked != raw).nonzero().tolist()}
    assert got == expected
    assert expected == {(0, 2), (0, 5), (2, 0), (2, 5), (5, 0), (5, 2), (1, 4), (4, 1)}
    assert torch.all(masked[tuple(zip(*expected))] == mask_value(torch.float32))
    torch.testing.assert_close(raw, user @ item.T / 0.5)
    # the diagonal (each row's target) is never masked
    torch.testing.assert_close(masked.diagonal(), raw.diagonal())


def test_masked_columns_get_zero_probability_and_no_gradient():
    ids = torch.tensor([1, 1, 2])
    user = torch.randn(3, 2, requires_grad=True)
    item = torch.randn(3, 2, requires_grad=True)
    probs = InBatchSoftmax(temperature=1.0).logits(user, item, ids).softmax(-1)
    assert probs[0, 1] == 0 and probs[1, 0] == 0
    probs[0, 1].backward()
    assert torch.all(user.grad == 0)


def test_corrected_loss_equals_hand_computed_value():
    user = [[1.0, 0.5], [-0.3, 2.0], [0.7, -1.2]]
    item = [[0.2, 1.0], [1.5, -0.4], [-0.6, 0.3]]
    log_q = [math.log(0.5), math.log(0.1), math.log(0.02)]
    tau = 0.5
    ids = torch.tensor([11, 12, 13])

    loss = InBatchSoftmax(temperature=tau).loss(
        torch.tensor(user), torch.tensor(item), ids, log_q=torch.tensor(log_q)
    )
    assert loss.item() == pytest.approx(_hand_loss(user, item, log_q, tau, set()), rel=1e-5)

    # rows 0 and 2 share item 11: each other's column is an accidental hit
    ids = torch.tensor([11, 12, 11])
    loss = InBatchSoftmax(temperature=tau).loss(
        torch.tensor(user), torch.tensor(item), ids, log_q=torch.tensor(log_q)
    )
    expected = _hand_loss(user, item, log_q, tau, {(0, 2), (2, 0)})
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_cosine_similarity_normalizes_both_sides():
    user, item = torch.randn(4, 3), torch.randn(4, 3)
    ids = torch.arange(4)
    logits = InBatchSoftmax(similarity="cosine", temperature=1.0).logits(10 * user, 0.1 * item, ids)
    expected = torch.nn.functional.cosine_similarity(user[:, None], item[None], dim=-1)
    torch.testing.assert_close(logits, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_masking_is_finite_under_half_precision(dtype):
    ids = torch.tensor([3, 3, 4, 3])
    user, item = torch.randn(4, 8, dtype=dtype), torch.randn(4, 8, dtype=dtype)
    loss = InBatchSoftmax().loss(user, item, ids, log_q=torch.full((4,), -3.0, dtype=dtype))
    assert torch.isfinite(loss)


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="item_ids"):
        InBatchSoftmax().loss(torch.randn(3, 2), torch.randn(3, 2), torch.arange(4))
