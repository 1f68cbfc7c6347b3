"""Shared checks for every recaller: the interface's shapes, gradients, seeded reproducibility."""

from __future__ import annotations

from collections.abc import Callable, Collection

import torch
from torch import Tensor, nn

from recolab.samplers import InBatchSoftmax

NUM_USERS, NUM_ITEMS, HISTORY_LEN = 6, 20, 6


def make_batch(*, seed: int = 0) -> dict[str, Tensor]:
    """4 users: an empty history, a short one, a full one, a single item; a user feature `age`."""
    generator = torch.Generator().manual_seed(seed)
    hist = torch.randint(1, NUM_ITEMS + 1, (4, HISTORY_LEN), generator=generator)
    hist[0] = 0  # no behavior at all
    hist[1, :3] = 0  # left-padded
    hist[3, :-1] = 0
    return {
        "user_id": torch.tensor([1, 2, 0, 6]),
        "hist_items": hist,
        "age": torch.tensor([1, 2, 3, 0]),
        "item_id": torch.tensor([3, 7, 3, 12]),
    }


def check_model(
    build: Callable[[], nn.Module],
    batch: dict[str, Tensor],
    *,
    seed: int = 0,
    allow_zero_grad: Collection[str] = (),
) -> nn.Module:
    """Builds the model twice under one seed and checks the recaller interface.

    - the same seed gives the same parameters and outputs; eval outputs are deterministic;
    - shapes: user (B, D) or (B, K, D) per `num_interests`, items (N, D), all items
      (num_items + 1, D) agreeing with `item_embeddings`, training vectors (B, D);
    - one in-batch softmax step gives every parameter a finite gradient, not all zeros unless
      named in `allow_zero_grad`.

    Returns:
        The model (in train mode, gradients populated) for model-specific checks.
    """
    torch.manual_seed(seed)
    model = build()
    torch.manual_seed(seed)
    twin = build()
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs under the same seed"

    model.eval()
    twin.eval()
    batch_size = batch["item_id"].shape[0]
    users = model.user_embeddings(batch)
    torch.testing.assert_close(users, twin.user_embeddings(batch), rtol=0, atol=0)
    torch.testing.assert_close(users, model.user_embeddings(batch), rtol=0, atol=0)
    torch.testing.assert_close(users, model(batch), rtol=0, atol=0)
    dim = users.shape[-1]
    if model.num_interests == 1:
        assert users.shape == (batch_size, dim)
    else:
        assert users.shape == (batch_size, model.num_interests, dim)
    assert torch.isfinite(users).all()

    items = model.item_embeddings(batch["item_id"])
    assert items.shape == (batch_size, dim)
    every = model.all_item_embeddings()
    assert every.shape == (model.num_items + 1, dim)
    assert not every.requires_grad
    torch.testing.assert_close(every[batch["item_id"]], items)

    model.train()
    items = model.item_embeddings(batch["item_id"])
    trained = model.training_user_embeddings(batch, items)
    assert trained.shape == (batch_size, dim)
    loss = InBatchSoftmax(temperature=1.0).loss(trained, items, batch["item_id"])
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(parameter.grad).all(), f"{name} has a non-finite gradient"
        if name not in allow_zero_grad:
            assert parameter.grad.abs().sum() > 0, f"{name} gets an all-zero gradient"
    return model
