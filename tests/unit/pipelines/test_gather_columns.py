"""Gathering evaluation rows across two real gloo processes when one rank has none (fewer
evaluation rows than ranks leave a shard empty): every rank takes part in every gather."""

from __future__ import annotations

import torch

from recolab.pipelines.distributed import gather_columns


def _batch(rows: list[int]) -> dict[str, torch.Tensor]:
    r = torch.tensor(rows)
    return {
        "out/click": r.float() / 10,
        "meta/position": r.to(torch.int32),
        "model": torch.stack([r, -r], dim=1),  # (n, 2): trailing shapes travel too
    }


# Each rank's batches, for each case: rank 1 empty, rank 0 empty, both empty.
CASES = [
    ([[1, 2], [3]], []),
    ([], [[4]]),
    ([], []),
]


def _worker(rank: int, world: int, init_file, result_file) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    results = [gather_columns([_batch(b) for b in case[rank]]) for case in CASES]
    torch.save(results, f"{result_file}.{rank}")
    dist.destroy_process_group()


def test_a_rank_without_rows_still_takes_part_in_every_gather(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, tmp_path / "init", tmp_path / "out"), nprocs=2, join=True)
    per_rank = [torch.load(tmp_path / f"out.{rank}") for rank in range(2)]
    for i, case in enumerate(CASES):
        batches = [b for rank_batches in case for b in rank_batches]
        expected = gather_columns([_batch(b) for b in batches])  # one process: concatenation
        for results in per_rank:
            got = results[i]
            assert got.keys() == expected.keys()
            for key, value in expected.items():
                assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
    assert per_rank[0][2] == {}
