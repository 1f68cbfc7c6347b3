"""Every model's weights keep the names (and shapes) they had in checkpoints written before the
block library (recolab at de8d598: tests/fixtures/checkpoints/state_keys_de8d598.json), or load
from them: the recallers' user feature tables moved up a level (`user_features.tables.<name>` ->
`user_features.<name>`) and are read from either."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch

from recolab.models.blocks import FeatureEmbedding
from recolab.models.rank.cgc import CGC, PLE
from recolab.models.rank.mmoe import MMoE
from recolab.models.rank.shared_bottom import SharedBottom
from recolab.models.rank.single_task import SingleTask
from recolab.models.recall import MIND, ComiRecDR, ComiRecSA, TwoTower

from .rank.helpers import SCHEMA

OLD = json.loads(
    (Path(__file__).parents[2] / "fixtures/checkpoints/state_keys_de8d598.json").read_text()
)
EMBED4 = partial(FeatureEmbedding, embedding_dim=4)
ITEMS = {"category": (torch.arange(21) % 3, 3)}
USERS = {"age": 5}
#: The models the fixture was written from, with the same sizes.
MODELS = {
    "mmoe": lambda: MMoE(
        SCHEMA,
        embedding=partial(FeatureEmbedding, embedding_dim=4, batch_norm=True),
        num_experts=2,
        expert_dims=[8, 4],
        tower_dims=[4],
    ),
    "cgc": lambda: CGC(SCHEMA, embedding=EMBED4, expert_dims=[8], tower_dims=[4]),
    "ple": lambda: PLE(SCHEMA, embedding=EMBED4, expert_dims=[8], tower_dims=[4]),
    "shared_bottom": lambda: SharedBottom(
        SCHEMA, embedding=EMBED4, bottom_dims=[8], tower_dims=[4]
    ),
    "single_task": lambda: SingleTask(SCHEMA, embedding=EMBED4, hidden_dims=[8]),
    "two_tower": lambda: TwoTower(
        num_users=6, num_items=20, dim=4, hidden_dims=[8], user_features=USERS, item_features=ITEMS
    ),
    "mind": lambda: MIND(
        num_items=20,
        dim=4,
        hidden_dims=[8],
        history_len=6,
        user_features=USERS,
        item_features=ITEMS,
    ),
    "comirec_dr": lambda: ComiRecDR(num_items=20, dim=4, history_len=6, item_features=ITEMS),
    "comirec_sa": lambda: ComiRecSA(num_items=20, dim=4, history_len=6, item_features=ITEMS),
}


def today(key: str) -> str:
    return key.replace("user_features.tables.", "user_features.")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_weights_keep_their_names_and_shapes(name: str) -> None:
    state = MODELS[name]().state_dict()
    assert {k: list(v.shape) for k, v in state.items()} == {
        today(k): shape for k, shape in OLD[name].items()
    }


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_state_saved_under_the_old_names_loads(name: str) -> None:
    model = MODELS[name]()
    old = {k: torch.full(shape, 0.5) for k, shape in OLD[name].items()}
    model.load_state_dict(old)  # strict
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            assert torch.equal(value, torch.full_like(value, 0.5)), key
