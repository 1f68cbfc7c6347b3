"""PAL and the shallow tower: the losses the papers define, serving without the position, and
recovering a known position effect from simulated clicks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recolab.data.schema import Task
from recolab.heads.position import PAL, ShallowTower

CLICK = Task("click")
P = 5


def bound(head):
    head.bind(CLICK, ("position", "user_id"))
    return head


def test_pal_loss_is_logloss_of_the_product_and_serving_ignores_the_position() -> None:
    torch.manual_seed(0)
    head = bound(PAL(num_positions=P))
    out = torch.randn(8)
    pos = torch.arange(8) % P + 1
    y = (torch.arange(8) % 3 == 0).float()
    seen = head.examination({"position": pos})
    expected = F.binary_cross_entropy(torch.sigmoid(out) * seen, y)
    torch.testing.assert_close(head.loss(out, y, {"position": pos}), expected)
    served_a = head.predict(out, {"position": pos})
    served_b = head.predict(out, {"position": torch.full_like(pos, P)})
    torch.testing.assert_close(served_a, torch.sigmoid(out))
    torch.testing.assert_close(served_a, served_b)


def test_pal_loss_is_finite_for_extreme_logits_and_trains_both_towers() -> None:
    head = bound(PAL(num_positions=P))
    out = torch.tensor([-40.0, 40.0, 0.0, 25.0], requires_grad=True)
    y = torch.tensor([1.0, 0.0, 1.0, 1.0])
    loss = head.loss(out, y, {"position": torch.tensor([1, 2, 3, 4])})
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(out.grad).all()
    assert (
        head.tower.position.weight.grad is not None
        and torch.isfinite(head.tower.position.weight.grad).all()
    )


def test_shallow_tower_adds_a_logit_in_training_and_the_unknown_position_at_serving() -> None:
    torch.manual_seed(0)
    head = bound(ShallowTower(num_positions=P, position_dropout=0.1, context={"user_id": 4}))
    out = torch.randn(6)
    pos = torch.tensor([1, 2, 3, 4, 5, 1])
    users = torch.tensor([0, 1, 2, 3, 0, 1])
    y = torch.tensor([1.0, 0, 0, 1, 0, 1])
    head.eval()  # no position dropout: the loss reads every row's position
    meta = {"position": pos, "user_id": users}
    bias = head.bias_logit(meta)
    torch.testing.assert_close(
        head.loss(out, y, meta), F.binary_cross_entropy_with_logits(out + bias, y)
    )
    # Served as Zhao et al. do: the position set to missing (index 0), the context kept; the
    # position column is not read at serving.
    unknown = head.tower(torch.zeros(6, dtype=torch.long), {"user_id": users})
    assert unknown.unique().numel() > 1  # the context matters
    torch.testing.assert_close(head.predict(out, {"user_id": users}), torch.sigmoid(out + unknown))
    torch.testing.assert_close(head.predict(out, meta), head.predict(out, {"user_id": users}))


def test_shallow_tower_without_position_dropout_serves_without_the_tower() -> None:
    # With no dropout the unknown-position row is never trained: it carries no meaning.
    torch.manual_seed(0)
    head = bound(ShallowTower(num_positions=P, position_dropout=0.0))
    out = torch.randn(6)
    torch.testing.assert_close(head.predict(out, {}), torch.sigmoid(out))


def test_served_shallow_tower_is_calibrated_like_a_model_without_a_head() -> None:
    """Trained with 10% position dropout, the served probabilities (position unknown) fit the
    clicks as well as a model trained without any head; dropping the tower offsets them."""
    items, pos, y, _ = click_table(additive=True)

    def train(head: ShallowTower | None) -> torch.Tensor:
        relevance = torch.nn.Embedding(30, 1)
        params = [*relevance.parameters(), *(head.parameters() if head is not None else [])]
        opt = torch.optim.Adam(params, lr=0.05)
        for _ in range(600):
            opt.zero_grad()
            out = relevance(items).squeeze(-1)
            if head is None:
                loss = F.binary_cross_entropy_with_logits(out, y)
            else:
                loss = head.loss(out, y, {"position": pos})
            loss.backward()
            opt.step()
        return relevance(items).squeeze(-1).detach()

    torch.manual_seed(0)
    no_head = F.binary_cross_entropy_with_logits(train(None), y)
    head = bound(ShallowTower(num_positions=P, position_dropout=0.1))
    out = train(head)
    head.eval()
    served = F.binary_cross_entropy(head.predict(out, {}), y)
    assert served <= no_head + 2e-3, (float(served), float(no_head))
    dropped = F.binary_cross_entropy(torch.sigmoid(out), y)  # the tower left out whole
    assert dropped > no_head + 0.05, (float(dropped), float(no_head))


def test_shallow_tower_drops_positions_at_the_configured_rate_in_training_only() -> None:
    torch.manual_seed(0)
    head = bound(ShallowTower(num_positions=P, position_dropout=0.3))
    with torch.no_grad():
        head.tower.position.weight.zero_()
        head.tower.position.weight[0] = 1.0  # only the "unknown" row is non-zero
        for m in head.tower.mlp:
            if isinstance(m, torch.nn.Linear):
                m.weight.fill_(1.0)
                m.bias.zero_()
    pos = torch.full((20000,), 3)
    head.train()
    dropped = (head.bias_logit({"position": pos}) != 0).float().mean()
    assert abs(float(dropped) - 0.3) < 0.02
    head.eval()
    assert (head.bias_logit({"position": pos}) == 0).all()


def test_context_columns_feed_the_tower() -> None:
    torch.manual_seed(0)
    head = bound(ShallowTower(num_positions=P, position_dropout=0.0, context={"user_id": 4}))
    pos = torch.tensor([2, 2])
    a = head.bias_logit({"position": pos, "user_id": torch.tensor([1, 2])})
    assert a[0] != a[1]
    b = head.bias_logit({"position": pos, "user_id": torch.tensor([5, 6])})  # ids modulo 4
    torch.testing.assert_close(a, b)


def click_table(*, additive: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (item, position) cell once, labelled with its click probability (a soft label: the
    logloss of a cell's click rate is that of its impressions, up to a constant)."""
    items = torch.arange(30).repeat_interleave(P)  # (150,)
    pos = torch.arange(1, P + 1).repeat(30)  # (150,)
    rel_logit = torch.linspace(-2.5, 0.5, 30)[items]
    truth = torch.arange(1, P + 1, dtype=torch.float32) ** -0.9  # examination by position
    if additive:
        p = torch.sigmoid(rel_logit + torch.log(truth)[pos - 1])
    else:
        p = torch.sigmoid(rel_logit) * truth[pos - 1]
    return items, pos, p, truth


@pytest.mark.parametrize(
    ("make", "additive"),
    [
        (lambda: PAL(num_positions=P), False),
        (lambda: ShallowTower(num_positions=P, position_dropout=0.0), True),
    ],
)
def test_recovers_the_position_effect_from_clicks(make, additive: bool) -> None:
    torch.manual_seed(0)
    items, pos, y, truth = click_table(additive=additive)
    head = bound(make())
    relevance = torch.nn.Embedding(30, 1)  # a per-item relevance logit: the "ranker"
    opt = torch.optim.Adam([*relevance.parameters(), *head.parameters()], lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        head.loss(relevance(items).squeeze(-1), y, {"position": pos}).backward()
        opt.step()
    learned = torch.tensor(head.summary()["relative_examination"])
    assert torch.allclose(learned, truth / truth[0], atol=0.03), (learned, truth)
    # Served relevance orders the items as their true relevance does, whatever their positions.
    served = head.predict(
        relevance.weight.squeeze(-1), {"position": torch.ones(30, dtype=torch.long)}
    )
    assert (served.diff() > 0).all(), served


def test_bad_configuration_fails_clearly() -> None:
    with pytest.raises(
        ValueError, match=r"module.heads.watch_time \(PAL\): applies to binary tasks"
    ):
        PAL(num_positions=3).bind(Task("watch_time", kind="regression"), ("position",))
    with pytest.raises(ValueError, match=r"needs meta column\(s\) \['position'\]"):
        PAL(num_positions=3).bind(CLICK, ("user_id",))
    with pytest.raises(ValueError, match=r"needs meta column\(s\) \['device'\]"):
        ShallowTower(num_positions=3, context={"device": 3}).bind(CLICK, ("position",))
    with pytest.raises(ValueError, match="position_dropout"):
        ShallowTower(num_positions=3, position_dropout=1.0)
    head = bound(PAL(num_positions=3))
    with pytest.raises(ValueError, match=r"positions 1..7 .* num_positions=3"):
        head.fit(torch.zeros(4), {"position": torch.tensor([1, 2, 7, 3])})


def test_saved_position_head_loads_back_identical() -> None:
    torch.manual_seed(0)
    head = bound(PAL(num_positions=P, hidden_dims=[4]))
    again = bound(PAL(num_positions=P, hidden_dims=[4]))
    again.load_state_dict(head.state_dict())
    meta = {"position": torch.arange(1, P + 1)}
    torch.testing.assert_close(again.examination(meta), head.examination(meta))
