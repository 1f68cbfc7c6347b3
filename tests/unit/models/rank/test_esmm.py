"""ESMM (Ma et al., SIGIR 2018): the product pCTCVR = pCTR x pCVR, the entire-space loss as the
rank pipeline computes it, and that the CVR tower learns only through pCTCVR."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recolab.data.schema import DenseFeature, Schema, SparseFeature, Task
from recolab.models.rank.esmm import ESMM, ctcvr_logit
from recolab.pipelines.rank import RankModule
from tests.unit.models.rank.helpers import EMBED8, check_model, tiny_batch

FEATURES = dict(
    sparse=(SparseFeature("user_id", 10), SparseFeature("item_id", 20)),
    dense=(DenseFeature("price"),),
)
#: The synthetic world's three tasks: click, click-and-purchase, and the weight-0 counterfactual.
SCHEMA = Schema(
    **FEATURES,
    tasks=(Task("click"), Task("purchase"), Task("purchase_if_clicked", weight=0.0)),
)


def make(schema: Schema, **kw) -> ESMM:
    return ESMM(schema, embedding=EMBED8, tower_dims=[8, 4], cvr_task="purchase_if_clicked", **kw)


def test_check_model() -> None:
    check_model(make, SCHEMA)
    # Ali-CCP's tasks: no counterfactual task, so pCVR is not returned as a task.
    check_model(make, Schema(**FEATURES, tasks=(Task("click"), Task("purchase"))))


def test_product_identity_in_probability_and_log_space() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.cat([torch.randn(200, generator=g) * 6, torch.tensor([-80.0, -80, 0, 80, 80, 40])])
    b = torch.cat([torch.randn(200, generator=g) * 6, torch.tensor([-80.0, 80, 0, 80, -80, 40])])
    a, b = a.double(), b.double()
    z = ctcvr_logit(a, b)
    torch.testing.assert_close(torch.sigmoid(z), torch.sigmoid(a) * torch.sigmoid(b))
    # the log of the product and of its complement, exact where either is tiny
    torch.testing.assert_close(F.logsigmoid(z), F.logsigmoid(a) + F.logsigmoid(b))
    complement = torch.log1p(-torch.sigmoid(a) * torch.sigmoid(b))
    exact = complement > -30  # where 1 - p is representable in float64
    torch.testing.assert_close(F.logsigmoid(-z)[exact], complement[exact])
    # a = b = 80: 1 - p = 2 e^-80 (to first order), far below float32's resolution of 1 - p
    z32 = ctcvr_logit(torch.tensor([80.0]), torch.tensor([80.0]))
    assert torch.isfinite(z32).all()
    torch.testing.assert_close(z32, torch.tensor([80.0 - torch.log(torch.tensor(2.0)).item()]))


def test_outputs_are_the_towers_and_their_product() -> None:
    torch.manual_seed(0)
    model = make(SCHEMA)
    batch = tiny_batch(SCHEMA, batch=6)
    out = model(batch)
    z = model.logits(batch)
    torch.testing.assert_close(out["click"], z["ctr"])
    torch.testing.assert_close(out["purchase_if_clicked"], z["cvr"])
    torch.testing.assert_close(out["purchase"], ctcvr_logit(z["ctr"], z["cvr"]))
    p = model.probabilities(batch)
    torch.testing.assert_close(p["ctcvr"], p["ctr"] * p["cvr"])
    torch.testing.assert_close(torch.sigmoid(out["purchase"]), p["ctcvr"])


def _pipeline_loss(model: ESMM, batch, labels) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return RankModule(model, SCHEMA)._loss(model(batch), labels, {})


def test_pipeline_loss_is_the_papers_entire_space_loss() -> None:
    torch.manual_seed(0)
    model = make(SCHEMA)
    batch = tiny_batch(SCHEMA, batch=6)
    click = torch.tensor([1.0, 0, 1, 0, 1, 0])
    conversion = torch.tensor([1.0, 1, 0, 0, 1, 0])  # would convert, had it been clicked
    labels = {"click": click, "purchase": click * conversion, "purchase_if_clicked": conversion}
    total, per_task = _pipeline_loss(model, batch, labels)
    p = model.probabilities(batch)

    def bce(q: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # by hand, on probabilities
        return -(y * torch.log(q) + (1 - y) * torch.log(1 - q)).mean()

    expected = bce(p["ctr"], click) + bce(p["ctr"] * p["cvr"], click * conversion)
    torch.testing.assert_close(total, expected)
    torch.testing.assert_close(per_task["purchase"], bce(p["ctcvr"], click * conversion))


def _grads(model: ESMM, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return {
        n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
        for n, p in model.named_parameters()
    }


def test_cvr_tower_learns_only_through_ctcvr() -> None:
    torch.manual_seed(0)
    model = make(SCHEMA)
    batch = tiny_batch(SCHEMA, batch=8)
    click = torch.tensor([1.0, 0, 1, 0, 1, 0, 0, 1])
    conversion = torch.tensor([1.0, 1, 0, 0, 1, 0, 1, 1])
    labels = {"click": click, "purchase": click * conversion, "purchase_if_clicked": conversion}
    cvr = [n for n, _ in model.named_parameters() if n.startswith("towers.cvr.")]
    assert cvr

    total, per_task = _pipeline_loss(model, batch, labels)
    from_total = _grads(model, total)
    from_click = _grads(model, _pipeline_loss(model, batch, labels)[1]["click"])
    from_ctcvr = _grads(model, _pipeline_loss(model, batch, labels)[1]["purchase"])
    for n in cvr:
        assert torch.all(from_click[n] == 0), f"{n} gets a gradient from the click loss"
        assert from_ctcvr[n].abs().sum() > 0, f"{n} gets no gradient from pCTCVR"
        torch.testing.assert_close(from_total[n], from_ctcvr[n])
    # the weight-0 counterfactual label moves nothing: flip it, every gradient stays
    flipped = labels | {"purchase_if_clicked": 1 - conversion}
    again = _grads(model, _pipeline_loss(model, batch, flipped)[0])
    for n, g in from_total.items():
        torch.testing.assert_close(again[n], g)


def test_bad_tasks_fail_clearly() -> None:
    with pytest.raises(ValueError, match="purchase_if_clicked.*weight 1.0"):
        make(
            Schema(**FEATURES, tasks=(Task("click"), Task("purchase"), Task("purchase_if_clicked")))
        )
    with pytest.raises(ValueError, match="model.ctcvr_task: 'purchase' is not a task"):
        make(Schema(**FEATURES, tasks=(Task("click"), Task("buy"))))
    with pytest.raises(ValueError, match=r"task\(s\) \['like'\] have no output"):
        make(Schema(**FEATURES, tasks=(Task("click"), Task("purchase"), Task("like"))))
    with pytest.raises(ValueError, match="must differ"):
        make(SCHEMA, ctcvr_task="click")
    with pytest.raises(ValueError, match="model.ctr_task: task 'click' must be binary"):
        make(Schema(**FEATURES, tasks=(Task("click", kind="regression"), Task("purchase"))))
    with pytest.raises(ValueError, match="dropout"):
        make(SCHEMA, dropout=1.5)
