"""The single-task baseline: one network per task, nothing shared."""

import torch

from recolab.models.rank.single_task import SingleTask

from .helpers import EMBED8, SCHEMA, check_model, tiny_batch


def make(schema=SCHEMA) -> SingleTask:
    return SingleTask(schema, embedding=EMBED8, hidden_dims=[16, 8])


def test_single_task():
    check_model(make)


def test_a_tasks_gradient_reaches_only_its_own_parameters():
    torch.manual_seed(0)
    model = make()
    model(tiny_batch())["like"].sum().backward()
    for name, p in model.named_parameters():
        owner = name.split(".")[1]  # embeds.<task>.… or mlps.<task>.…
        if owner == "like":
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, f"{name} got a gradient from the like task"


def test_tasks_share_no_parameters_not_even_embeddings():
    model = make()
    ids = {
        t: {id(p) for p in (*model.embeds[t].parameters(), *model.mlps[t].parameters())}
        for t in SCHEMA.task_names
    }
    assert (
        sum(map(len, ids.values()))
        == len(set().union(*ids.values()))
        == len(list(model.parameters()))
    )
    assert model.embeds["click"].tables["item_id"] is not model.embeds["like"].tables["item_id"]
