"""DDP with two CPU processes against one, and the expected GPU scaling from the communication volume.

    python benchmarks/bench_ddp.py [--impressions 1000000] [--steps 100]

Four runs of `python -m recolab train +exp=mmoe` on the same world, each `--steps` training
steps per process of 2,048 rows (`_runs.run_recolab`, training time only): one process with one
torch thread; `trainer=ddp trainer.devices=2`, two processes (gloo) with one thread each, with and
without DDP's broadcast of the BatchNorm buffers before each step; and one process with two threads (the same two cores, used by threads instead of processes). Each DDP
step all-reduces every gradient: the parameter count times 4 bytes, of which a ring all-reduce
sends and receives 2 (N - 1) / N per process. That volume is measured here (the model's parameter
count) and a gloo all-reduce of it between two local processes is timed; the time the same
volume takes at the stated link bandwidths is computed, not measured.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _common import write
from _runs import compose, load_note, run_recolab, samples_per_cpu_sec, samples_per_sec
from hydra.utils import instantiate

from recolab.train import build

DDP = "pytorch_lightning.strategies.DDPStrategy"
#: DDP without broadcasting the buffers (BatchNorm statistics) from rank zero every step.
NO_BROADCAST = f"trainer.strategy={{_target_:{DDP},broadcast_buffers:false}}"

#: Link bandwidths (GB/s, one direction) used for the paper estimate.
LINKS = {
    "NVLink 4 (H100 SXM, 8 GPUs in a node), ~450 GB/s": 450e9,
    "PCIe 4.0 x16, ~25 GB/s": 25e9,
    "InfiniBand NDR 400 Gb/s between nodes, ~50 GB/s": 50e9,
    "Ethernet 100 Gb/s between nodes, ~12.5 GB/s": 12.5e9,
}


def _allreduce_worker(rank: int, numel: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    t = torch.ones(numel)
    for _ in range(3):
        dist.all_reduce(t)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(20):
        dist.all_reduce(t)
    seconds = (time.perf_counter() - start) / 20
    if rank == 0:
        Path(out).write_text(str(seconds))
    dist.destroy_process_group()


def allreduce_seconds(numel: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "seconds")
        mp.spawn(_allreduce_worker, args=(numel, f"file://{tmp}/init", out), nprocs=2, join=True)
        return float(Path(out).read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--impressions", type=int, default=1_000_000)
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args()
    base = [
        "+exp=mmoe",
        f"data.num_impressions={args.impressions}",
        "trainer.max_epochs=1",
        f"+trainer.limit_train_batches={args.steps}",
        "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=1",
    ]

    cfg = compose(base)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    model, _ = build(cfg, dm)
    params = sum(p.numel() for p in model.parameters())
    grad_bytes = params * 4
    del dm

    runs = {
        "one": run_recolab([*base, "trainer=cpu"], threads=1),
        "ddp": run_recolab([*base, "trainer=ddp", "trainer.devices=2"], threads=1),
        "no_broadcast": run_recolab(
            [*base, "trainer=ddp", "trainer.devices=2", NO_BROADCAST], threads=1
        ),
        "threads": run_recolab([*base, "trainer=cpu"], threads=2),
    }
    one, ddp, no_broadcast, threads = (
        samples_per_sec(runs[k]) for k in ("one", "ddp", "no_broadcast", "threads")
    )
    cpu = {k: samples_per_cpu_sec(r) for k, r in runs.items()}
    ar = allreduce_seconds(params)
    step_ddp = 2 * cfg.data.batch_size / ddp  # seconds per DDP step (both ranks step together)

    links = "\n".join(
        f"| {name} | "
        + " | ".join(f"{2 * (n - 1) / n * grad_bytes / bw * 1e6:,.0f}" for n in (2, 8, 16))
        + " |"
        for name, bw in LINKS.items()
    )
    body = f"""Synthetic world, {args.impressions:,} impressions; `+exp=mmoe` (batch {cfg.data.batch_size} per process);
{args.steps} training steps per process; {load_note()}.

| run | processes x threads | samples / s (wall clock, all processes) | vs one process | samples per CPU second, per process | vs one process |
|---|---|---:|---:|---:|---:|
| `trainer=cpu` | 1 x 1 | {one:,.0f} | 1.00x | {cpu["one"]:,.0f} | 1.00x |
| `trainer=ddp trainer.devices=2` (gloo) | 2 x 1 | {ddp:,.0f} | {ddp / one:.2f}x | {cpu["ddp"]:,.0f} | **{cpu["ddp"] / cpu["one"]:.2f}x** |
| `trainer=ddp trainer.devices=2`, without the buffer broadcast (`broadcast_buffers:false`) | 2 x 1 | {no_broadcast:,.0f} | {no_broadcast / one:.2f}x | {cpu["no_broadcast"]:,.0f} | {cpu["no_broadcast"] / cpu["one"]:.2f}x |
| `trainer=cpu`, OMP_NUM_THREADS=2 | 1 x 2 | {threads:,.0f} | {threads / one:.2f}x | {cpu["threads"]:,.0f} | {cpu["threads"] / cpu["one"]:.2f}x |

DDP's overhead: each of the two processes trains {cpu["ddp"] / cpu["one"]:.2f}x as many samples per CPU
second as the single process (1.00x would be no overhead: the all-reduce, waiting for the other
rank, and Lightning's DDP hooks cost the rest), so two processes that each had a core to
themselves would reach {2 * cpu["ddp"] / cpu["one"]:.2f}x one process (ideal 2x). The wall-clock
columns depend on how much of the two cores the other processes on this shared machine left
free during each run; with 2 threads, CPU time also counts threads that spin waiting for a core.
DDP broadcasts rank zero's BatchNorm running statistics (`+exp=mmoe` normalizes its inputs)
before every training step; the run without that broadcast
(`'trainer.strategy={{_target_:{DDP},broadcast_buffers:false}}'`, which leaves each rank its own
statistics) measures what the broadcast costs: {cpu["no_broadcast"] / cpu["ddp"]:.2f}x the default
DDP run per CPU second.

Communication volume: the model has {params:,} parameters, so each step all-reduces
{grad_bytes / 2**20:.2f} MiB of float32 gradients (embedding tables included: DDP reduces dense
gradients of every row). A gloo all-reduce of that size between the two local processes took
**{ar * 1e3:.1f} ms**, against {step_ddp * 1e3:.0f} ms per DDP step here ({ar / step_ddp:.0%}).

Expected GPU scaling, on paper: a ring all-reduce moves 2 (N - 1) / N x {grad_bytes / 2**20:.2f} MiB per GPU
per step; at these link bandwidths that takes (microseconds per step, bandwidth term only,
latency not included):

| link | N = 2 | N = 8 | N = 16 |
|---|---:|---:|---:|
{links}

DDP overlaps this all-reduce with the backward pass (gradient buckets), so throughput scales
almost linearly with N (N x the per-GPU batch per step) as long as one GPU's step takes longer
than the figures above; the per-step latency of the collective (tens of microseconds on NCCL)
and a small model's kernel-launch-bound step are what to watch: keep the per-GPU batch large.
"""
    write("ddp", "DDP: two CPU processes against one, and the expected GPU scaling", body)


if __name__ == "__main__":
    main()
