"""The training softmaxes under DDP do not depend on the number of ranks (issue 22).

Two real gloo processes, each holding part of a global batch, against one process holding all of
it: the ranks' losses average to the one-process loss and their averaged gradients (what DDP
applies) equal its gradient, for the mixed softmax (Yang et al., WWW 2020) and the in-batch one,
with the streaming logQ estimate and corpus negatives drawn on each rank.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recolab.samplers import (
    CorpusNegativeSampler,
    InBatchSoftmax,
    MixedNegativeSoftmax,
    StreamingFrequencyEstimator,
)

NUM_ITEMS, DIM, NUM_NEG = 30, 4, 6
# A global batch of 7 rows (item 3 twice: an accidental hit across ranks), split 4 + 3.
USERS = torch.tensor([0, 1, 2, 3, 4, 5, 6])
ITEMS = torch.tensor([3, 7, 11, 3, 20, 5, 9])
SPLIT = [4, 3]
# Two steps, so that the estimate's second step reads intervals, not first sightings.
SECOND = torch.tensor([7, 8, 3, 25, 11, 7, 2])


def _towers() -> tuple[torch.nn.Embedding, torch.nn.Embedding]:
    torch.manual_seed(0)
    return torch.nn.Embedding(len(USERS), DIM), torch.nn.Embedding(NUM_ITEMS + 1, DIM)


def _losses(rows: slice, rank_seed: int) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """Both losses on `rows` of the global batch (all of it on one process), as a training step
    runs them, and the gradients of their sum."""
    user_tower, item_tower = _towers()
    estimator = StreamingFrequencyEstimator(num_buckets=64)
    sampler = CorpusNegativeSampler(num_items=NUM_ITEMS)
    estimator.update(SECOND[rows])
    torch.manual_seed(rank_seed)  # ranks' random streams differ: rank zero's draw is shared
    losses = []
    ids = ITEMS[rows]
    estimator.update(ids)
    log_q = estimator.log_q(ids)
    u, v = user_tower(USERS[rows]), item_tower(ids)
    neg_ids, neg_log_q = sampler.sample(NUM_NEG)
    w = item_tower(neg_ids)
    mixed = MixedNegativeSoftmax(temperature=0.5, num_negatives=NUM_NEG)
    losses.append(mixed.loss(u, v, ids, log_q=log_q, negatives=(w, neg_ids, neg_log_q)))
    losses.append(InBatchSoftmax(temperature=0.5).loss(u, v, ids, log_q=log_q))
    sum(losses).backward()
    grads = {"user": user_tower.weight.grad, "item": item_tower.weight.grad}
    return [loss.detach() for loss in losses], grads


def _worker(rank: int, world: int, init_file: Path, result_file: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    start = sum(SPLIT[:rank])
    losses, grads = _losses(slice(start, start + SPLIT[rank]), rank_seed=rank)
    for grad in grads.values():  # what DDP does with the ranks' gradients
        dist.all_reduce(grad)
        grad /= world
    torch.save({"losses": losses, "grads": grads}, f"{result_file}.{rank}")
    dist.destroy_process_group()


# Two real gloo processes, about 5 s.
def test_two_ranks_compute_the_one_process_loss_and_gradient(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, tmp_path / "init", tmp_path / "out"), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"out.{rank}") for rank in range(2)]
    single_losses, single_grads = _losses(slice(None), rank_seed=0)
    for k, name in enumerate(["mixed", "in_batch"]):
        mean = (ranks[0]["losses"][k] + ranks[1]["losses"][k]) / 2  # DDP's average
        assert mean.item() == pytest.approx(single_losses[k].item(), rel=1e-6), name
    for name, grad in single_grads.items():
        for rank in ranks:
            torch.testing.assert_close(rank["grads"][name], grad, rtol=1e-5, atol=1e-6)
