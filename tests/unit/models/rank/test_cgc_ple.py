"""CGC and PLE (Tang et al., RecSys 2020): what the paper says their gates read."""

import pytest
import torch

from recolab.models.rank.cgc import CGC, PLE
from recolab.models.rank.mmoe import MMoE

from .helpers import EMBED8, SCHEMA, check_model, tiny_batch

T = len(SCHEMA.tasks)


def cgc(**kw) -> CGC:
    args = dict(
        embedding=EMBED8,
        num_task_experts=2,
        num_shared_experts=3,
        expert_dims=[16, 8],
        tower_dims=[8],
    )
    return CGC(SCHEMA, **(args | kw))


def ple(**kw) -> PLE:
    args = dict(
        embedding=EMBED8,
        num_levels=2,
        num_task_experts=2,
        num_shared_experts=3,
        expert_dims=[16, 8],
        tower_dims=[8],
    )
    return PLE(SCHEMA, **(args | kw))


def outputs(model, batch):
    with torch.no_grad():
        return model(batch)


def zero_(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()


def test_cgc():
    check_model(
        lambda s: CGC(
            s,
            embedding=EMBED8,
            num_task_experts=2,
            num_shared_experts=1,
            expert_dims=[16, 8],
            tower_dims=[8],
        )
    )


def test_ple():
    check_model(
        lambda s: PLE(
            s,
            embedding=EMBED8,
            num_levels=3,
            num_task_experts=1,
            num_shared_experts=2,
            expert_dims=[16, 8],
            tower_dims=[8],
        )
    )


def test_cgc_task_gate_covers_own_and_shared_experts_and_there_is_no_shared_gate():
    (level,) = cgc().gate_weights(tiny_batch())
    assert set(level.tasks) == set(SCHEMA.task_names)
    for g in level.tasks.values():
        assert g.shape == (4, 2 + 3)
        torch.testing.assert_close(g.sum(-1), torch.ones(4))
    assert level.shared is None


def test_ple_inner_shared_gate_covers_all_experts_and_the_last_level_has_none():
    first, last = ple().gate_weights(tiny_batch())
    assert first.shared.shape == (4, T * 2 + 3)
    torch.testing.assert_close(first.shared.sum(-1), torch.ones(4))
    for level in (first, last):
        assert all(g.shape == (4, 2 + 3) for g in level.tasks.values())
    assert last.shared is None


def test_cgc_task_ignores_other_tasks_specific_experts():
    torch.manual_seed(0)
    model, batch = cgc(), tiny_batch()
    before = outputs(model, batch)
    zero_(model.levels[0].task_experts["like"])
    after = outputs(model, batch)
    torch.testing.assert_close(after["click"], before["click"])
    torch.testing.assert_close(after["watch_time"], before["watch_time"])
    assert not torch.allclose(after["like"], before["like"])  # its own experts do count


def test_ple_task_reads_other_tasks_experts_through_the_inner_shared_gate():
    torch.manual_seed(0)
    model, batch = ple(), tiny_batch()
    before = outputs(model, batch)
    zero_(model.levels[1].task_experts["like"])  # the last level is a CGC: still isolated
    torch.testing.assert_close(outputs(model, batch)["click"], before["click"])
    zero_(
        model.levels[0].task_experts["like"]
    )  # level 0's shared gate mixes them into level 1's shared input
    assert not torch.allclose(outputs(model, batch)["click"], before["click"])


def test_ple_with_one_level_is_cgc():
    torch.manual_seed(0)
    a = ple(num_levels=1)
    torch.manual_seed(0)
    b = cgc()
    assert a.state_dict().keys() == b.state_dict().keys()
    batch = tiny_batch()
    for t in SCHEMA.task_names:
        torch.testing.assert_close(outputs(a, batch)[t], outputs(b, batch)[t])


def test_cgc_without_task_experts_is_mmoe():
    # With no task-specific experts every task's gate mixes the same shared experts: MMoE, the
    # structure CGC extends with task-specific experts.
    torch.manual_seed(0)
    model = cgc(num_task_experts=0, num_shared_experts=3)
    mmoe = MMoE(SCHEMA, embedding=EMBED8, num_experts=3, expert_dims=[16, 8], tower_dims=[8])
    mmoe.embed.load_state_dict(model.embed.state_dict())
    mmoe.experts.load_state_dict(model.levels[0].shared_experts.state_dict())
    mmoe.gates.load_state_dict(model.levels[0].task_gates.state_dict())
    mmoe.towers.load_state_dict(model.towers.state_dict())
    batch = tiny_batch()
    for t in SCHEMA.task_names:
        torch.testing.assert_close(outputs(model, batch)[t], outputs(mmoe, batch)[t])


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(num_levels=0), "num_levels"),
        (dict(num_task_experts=0, num_shared_experts=0), "at least one"),
        (dict(num_levels=2, num_shared_experts=0), "num_shared_experts >= 1"),
        (dict(expert_dims=[]), "expert_dims"),
    ],
)
def test_bad_arguments_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        ple(**kw)
