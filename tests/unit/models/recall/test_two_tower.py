"""Two-tower recaller (Yi et al., RecSys 2019)."""

import torch

from recolab.models.recall import TwoTower

from .helpers import HISTORY_LEN, NUM_ITEMS, NUM_USERS, check_model, make_batch

GENRE = (torch.arange(NUM_ITEMS + 1) % 3, 3)


def _build(**overrides):
    def build():
        kwargs = dict(
            num_users=NUM_USERS,
            num_items=NUM_ITEMS,
            dim=8,
            hidden_dims=(16,),
            user_features={"age": 4},
            item_features={"genre": GENRE},
            history_len=HISTORY_LEN,
        )
        return TwoTower(**{**kwargs, **overrides})

    return build


def test_two_tower_interface():
    model = check_model(_build(), make_batch())
    assert model.num_interests == 1
    assert "item.table_genre" in model.state_dict()  # static features are saved buffers


def test_two_tower_without_features_and_normalized():
    model = check_model(
        _build(user_features=None, item_features=None, normalize=True), make_batch()
    )
    norms = model.user_embeddings(make_batch()).norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_history_pooling_ignores_padding_and_keeps_the_most_recent():
    model = _build(history_len=3)().eval()
    batch = make_batch()
    padded = dict(
        batch, hist_items=torch.cat([torch.zeros(4, 5, dtype=torch.long), batch["hist_items"]], 1)
    )
    torch.testing.assert_close(model.user_embeddings(padded), model.user_embeddings(batch))
    older = batch["hist_items"].clone()
    older[:, :3] = torch.where(older[:, :3] > 0, 1, 0)  # change only items beyond history_len
    torch.testing.assert_close(
        model.user_embeddings(dict(batch, hist_items=older)), model.user_embeddings(batch)
    )
