"""D2Q, Res-D2Q and the watch-time baselines: the label transform the paper defines, its
inverse, the equal-frequency groups, and saving and loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recolab.data.schema import Task
from recolab.heads.duration import D2Q, ResD2Q, WatchTimeRegression

WATCH = Task("watch_time", kind="regression")


def world(
    n: int = 20_000, seed: int = 0, zeros: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Durations, interests and watch times with duration bias: longer videos, longer watch."""
    rng = np.random.default_rng(seed)
    d = rng.lognormal(np.log(30), 0.8, n)
    interest = rng.normal(size=n)
    ratio = 1 / (1 + np.exp(-(interest - 0.5 * np.log(d / 30) + 0.3 * rng.normal(size=n))))
    y = d * ratio * (rng.random(n) >= zeros)
    return torch.tensor(d), torch.tensor(interest), torch.tensor(y)


def fitted(head, d, y):
    head.bind(WATCH, ("duration",))
    head.fit(y, {"duration": d})
    return head


def test_group_edges_are_equal_frequency() -> None:
    d, _, y = world()
    head = fitted(D2Q(num_groups=30), d, y)
    counts = torch.bincount(head.group(d), minlength=30)
    assert int(head.groups_used) == 30
    assert counts.max() - counts.min() <= 1, counts


def test_tied_durations_merge_groups_and_every_used_group_is_filled() -> None:
    rng = np.random.default_rng(0)
    d = torch.tensor(rng.permutation(np.repeat([10.0, 20.0, 60.0], [1500, 900, 600])))
    y = d * torch.tensor(rng.random(3000))
    head = fitted(D2Q(num_groups=10), d, y)
    used = int(head.groups_used)
    assert used == 3
    counts = torch.bincount(head.group(d), minlength=10)
    assert (counts[:used] > 0).all() and (counts[used:] == 0).all()


@pytest.mark.parametrize("zeros", [0.0, 0.4])
def test_quantile_labels_are_uniform_within_each_group(zeros: float) -> None:
    d, _, y = world(zeros=zeros)
    head = fitted(D2Q(num_groups=10), d, y)
    g = head.group(d)
    u = head.to_quantile(y, g)
    assert ((u >= 0) & (u <= 1)).all()
    for k in range(10):
        ug = np.sort(u[g == k].numpy())
        assert abs(ug.mean() - 0.5) < 0.01  # mid-ranks average 1/2 even with tied zeros
        if zeros == 0.0:  # continuous watch times: the labels' CDF is the uniform one
            ecdf = np.arange(1, len(ug) + 1) / len(ug)
            assert np.abs(ecdf - ug).max() < 0.01


def test_mapping_back_inverts_the_label_transform_on_training_data() -> None:
    d, _, y = world(zeros=0.3)
    head = fitted(D2Q(num_groups=30), d, y)
    g = head.group(d)
    back = head.from_quantile(head.to_quantile(y, g), g)
    np.testing.assert_allclose(back.numpy(), y.numpy(), rtol=1e-5, atol=1e-4)


def test_the_quantile_label_removes_duration_and_keeps_interest() -> None:
    """The paper's point: within duration groups, watch time's quantile no longer grows with duration."""
    d, interest, y = world(50_000)
    head = fitted(D2Q(num_groups=30), d, y)
    u = head.to_quantile(y, head.group(d))

    def spearman(a, b) -> float:
        ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
        return float(np.corrcoef(ra, rb)[0, 1])

    assert spearman(y.numpy(), d.numpy()) > 0.7
    assert abs(spearman(u.numpy(), d.numpy())) < 0.05
    assert spearman(u.numpy(), interest.numpy()) > spearman(y.numpy(), interest.numpy()) + 0.3


def test_predictions_map_quantiles_back_to_seconds_and_clip() -> None:
    d, _, y = world()
    head = fitted(D2Q(num_groups=5, num_quantiles=101), d, y)
    meta = {"duration": torch.tensor([5.0, 5.0, 5.0, 300.0])}
    pred = head.predict(torch.tensor([-1.0, 0.0, 1.5, 0.5]), meta)
    g0, g4 = head.quantiles[0], head.quantiles[4]
    torch.testing.assert_close(pred, torch.stack([g0[0], g0[0], g0[-1], g4[50]]).float())
    torch.testing.assert_close(
        head.debiased(torch.tensor([-1.0, 2.0]), {"duration": torch.ones(2)}),
        torch.tensor([-1.0, 2.0]),
    )


def test_d2q_loss_is_squared_error_on_the_quantile_label_or_bce() -> None:
    d, _, y = world(2000)
    meta = {"duration": d[:16]}
    out = torch.rand(16)
    mse = fitted(D2Q(num_groups=4), d, y)
    u = mse.to_quantile(y[:16], mse.group(d[:16])).float()
    torch.testing.assert_close(mse.loss(out, y[:16], meta), ((out - u) ** 2).mean())
    bce = fitted(D2Q(num_groups=4, loss="bce"), d, y)
    torch.testing.assert_close(
        bce.loss(out, y[:16], meta), torch.nn.functional.binary_cross_entropy_with_logits(out, u)
    )
    torch.testing.assert_close(
        bce.predict(torch.full((2,), 50.0), {"duration": d[:2]}),
        bce.from_quantile(torch.ones(2), bce.group(d[:2])),
    )


def test_res_d2q_adds_a_duration_group_term_that_debiased_leaves_out() -> None:
    d, _, y = world(4000)
    head = fitted(ResD2Q(num_groups=4), d, y)
    meta = {"duration": torch.tensor([5.0, 300.0])}
    out = torch.tensor([0.4, 0.4])
    torch.testing.assert_close(head.quantile_output(out, meta), out)  # zero at initialization
    with torch.no_grad():
        head.group_bias.weight[:, 0] = torch.tensor([0.0, 0.1, 0.2, 0.3])
    torch.testing.assert_close(head.quantile_output(out, meta), torch.tensor([0.4, 0.7]))
    torch.testing.assert_close(head.debiased(out, meta), out)
    label = torch.tensor([1.0, 2.0])
    head.loss(out.requires_grad_(), label, meta).backward()
    assert head.group_bias.weight.grad.abs().sum() > 0 and head.group_slope.weight.grad is not None


@pytest.mark.parametrize("make", [lambda: D2Q(num_groups=8), lambda: ResD2Q(num_groups=8)])
def test_saved_head_loads_back_identical(make) -> None:
    d, _, y = world(3000)
    head = fitted(make(), d, y)
    if isinstance(head, ResD2Q):
        with torch.no_grad():
            head.group_bias.weight.normal_()
    again = make()
    again.bind(WATCH, ("duration",))
    again.load_state_dict(head.state_dict())
    for name, buf in head.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], buf)
    out, meta = torch.rand(100), {"duration": d[:100]}
    torch.testing.assert_close(again.predict(out, meta), head.predict(out, meta))


@pytest.mark.parametrize("target", WatchTimeRegression.TARGETS)
def test_regression_baselines_serve_in_seconds(target: str) -> None:
    d, _, y = world(3000)
    head = fitted(WatchTimeRegression(target=target), d, y)
    meta = {"duration": d[:50]}
    # The output that makes the loss zero is served back as the label itself.
    exact = {
        "watch_time": y[:50] / head.scale,
        "log_watch_time": torch.log1p(y[:50]),
        "watch_ratio": y[:50] / d[:50] / head.scale,
    }[target].float()
    assert float(head.loss(exact, y[:50].float(), meta)) < 1e-10
    np.testing.assert_allclose(
        head.predict(exact, meta).numpy(), y[:50].numpy(), rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(
        head.debiased(exact, meta).numpy(), (y[:50] / d[:50]).numpy(), rtol=1e-4, atol=1e-4
    )


def test_bad_input_fails_clearly() -> None:
    head = D2Q()
    head.bind(WATCH, ("duration",))
    with pytest.raises(RuntimeError, match="not fitted"):
        head.predict(torch.zeros(2), {"duration": torch.ones(2)})
    with pytest.raises(ValueError, match=r"meta column 'duration' has 1 non-positive"):
        head.fit(torch.ones(3), {"duration": torch.tensor([1.0, 0.0, 2.0])})
    with pytest.raises(ValueError, match="1 negative or non-finite watch time"):
        head.fit(torch.tensor([1.0, -1.0, 2.0]), {"duration": torch.ones(3)})
    with pytest.raises(ValueError, match=r"applies to regression tasks"):
        D2Q().bind(Task("click"), ("duration",))
    with pytest.raises(ValueError, match=r"needs meta column\(s\) \['duration'\]"):
        D2Q().bind(WATCH, ("position",))
    with pytest.raises(ValueError, match="target='ratio': expected one of 'watch_time'"):
        WatchTimeRegression(target="ratio")
