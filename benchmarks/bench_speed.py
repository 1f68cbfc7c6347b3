"""Speed options of the MMoE training step, measured against each other in one run.

    python benchmarks/bench_speed.py [--impressions 1000000] [--steps 20] [--rounds 3] [--threads 1]

A bare step (forward, `RankModule._loss`, backward, optimizer step) on the synthetic world's first
training batches, for: dense or sparse embedding gradients; Adam (torch's default implementation
on CPU, `foreach`, `fused`) or Adagrad; bf16 autocast (what `trainer.precision=bf16-mixed` does
on CPU); `torch.compile` (`compile=true`; compilation time reported apart). Each option runs
`--steps` steps per round after a warm-up, rounds interleave the options, and the best round
counts. A second table repeats dense against sparse with a 1,000,000-id table, where a step
touches a small share of the rows. Last, where the default step's time goes (torch.profiler).
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import ROOT, write
from _runs import load_note
from torch.profiler import ProfilerActivity, profile

from recolab.data.schema import Schema, SparseFeature, Task
from recolab.data.synthetic_video import SyntheticVideoDataModule
from recolab.models.blocks import FeatureEmbedding
from recolab.models.rank.mmoe import MMoE
from recolab.pipelines.rank import RankModule

DATA = dict(
    sparse=["user_id", "item_id", "category", "user_age"],
    dense=["user_activity", "log_duration"],
    sequences={"hist_items": {"max_len": 20, "vocab_of": "item_id"}},
    tasks=[
        {"name": "click", "kind": "binary"},
        {"name": "like", "kind": "binary"},
        {"name": "watch_time", "kind": "regression", "transform": "log1p"},
    ],
    meta=["user_id", "request_id", "position"],
)

OPTIONS = {
    # name: (sparse embeddings, optimizer, optimizer kwargs, bf16 autocast, compile)
    "dense, Adam (torch default)": (False, "adam", {}, False, False),
    "dense, Adam foreach": (False, "adam", {"foreach": True}, False, False),
    "dense, Adam fused": (False, "adam", {"fused": True}, False, False),
    "dense, Adagrad": (False, "adagrad", {}, False, False),
    "sparse, Adagrad": (True, "adagrad", {}, False, False),
    "dense, Adam, bf16 autocast": (False, "adam", {}, True, False),
    "dense, Adam, torch.compile": (False, "adam", {}, False, True),
}


class Runner:
    """One option's model, module and optimizer, stepping over fixed batches."""

    def __init__(self, schema: Schema, batches: list, option: tuple, **model_kw) -> None:
        sparse, opt, kwargs, self.bf16, compiled = option
        torch.manual_seed(0)
        self.model = MMoE(schema, **model_kw)
        if sparse:
            self.model.embed = FeatureEmbedding(
                schema,
                embedding_dim=self.model.embed.tables[schema.sparse[0].name].embedding_dim,
                sparse=True,
            )
        self.module = RankModule(self.model, schema, optimizer=opt, optimizer_kwargs=kwargs)
        self.opt = self.module.configure_optimizers()
        self.batches = batches
        self.compile_seconds = 0.0
        if compiled:
            self.model.compile()
            t = time.perf_counter()
            self.step(batches[0])
            self.compile_seconds = time.perf_counter() - t

    def step(self, b: dict) -> None:
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model(b["features"])
        loss, _ = self.module._loss(out, b["labels"], b["meta"])
        loss.backward()
        self.opt.step()

    def rate(self, steps: int) -> float:
        t = time.perf_counter()
        for i in range(steps):
            self.step(self.batches[i % len(self.batches)])
        return steps * len(self.batches[0]["labels"]["click"]) / (time.perf_counter() - t)


def measure(runners: dict[str, Runner], steps: int, rounds: int) -> dict[str, float]:
    for r in runners.values():
        r.rate(3)  # warm-up
    best = dict.fromkeys(runners, 0.0)
    for _ in range(rounds):
        for name, r in runners.items():
            best[name] = max(best[name], r.rate(steps))
    return best


def large_vocab_batches(n_ids: int, batch: int, steps: int) -> tuple[Schema, list]:
    """Random batches over a 1,000,000-id table and a small one (what the dense/sparse choice is about)."""
    schema = Schema(
        sparse=(SparseFeature("user_id", n_ids), SparseFeature("item_id", 5001)),
        tasks=(Task("click"),),
    )
    g = torch.Generator().manual_seed(0)
    batches = [
        {
            "features": {
                "user_id": torch.randint(1, n_ids, (batch,), generator=g),
                "item_id": torch.randint(1, 5001, (batch,), generator=g),
            },
            "labels": {"click": torch.randint(0, 2, (batch,), generator=g).float()},
            "meta": {},
        }
        for _ in range(steps)
    ]
    return schema, batches


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--impressions", type=int, default=1_000_000)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    dm = SyntheticVideoDataModule(
        cache_dir=str(ROOT / "data" / "synthetic"),
        num_impressions=args.impressions,
        batch_size=args.batch_size,
        **DATA,
    )
    dm.prepare_data()
    dm.setup()
    dataset = dm.train_dataloader().dataset
    batches = [dataset[i] for i in range(args.steps)]
    model_kw = dict(embedding_dim=16, num_experts=4, expert_dims=[128, 64], tower_dims=[32])
    runners = {name: Runner(dm.schema, batches, opt, **model_kw) for name, opt in OPTIONS.items()}
    rates = measure(runners, args.steps, args.rounds)
    base = rates["dense, Adam (torch default)"]
    fastest = max(rates, key=rates.get)
    rows = "\n".join(
        f"| {name} | {rate:,.0f} | {rate / base:.2f}x |"
        + (
            f" compiled in {runners[name].compile_seconds:.0f} s"
            if runners[name].compile_seconds
            else ""
        )
        for name, rate in rates.items()
    )

    compiled = "dense, Adam, torch.compile"
    gain = 1 / base - 1 / rates[compiled]  # seconds saved per sample
    compile_note = (
        f"`torch.compile` trains {rates[compiled] / base:.2f}x as fast per step but first spends "
        f"{runners[compiled].compile_seconds:.0f} s compiling (longer when inductor's on-disk cache is cold): it pays off after "
        + (f"{runners[compiled].compile_seconds / gain:,.0f} samples" if gain > 0 else "never")
        + ", so `compile: false` stays the default (tests and short runs would lose) and long runs should set `compile=true`."
    )

    schema, big = large_vocab_batches(1_000_000, args.batch_size, args.steps)
    big_runners = {
        name: Runner(schema, big, OPTIONS[name], **model_kw)
        for name in (
            "dense, Adam (torch default)",
            "dense, Adam foreach",
            "dense, Adagrad",
            "sparse, Adagrad",
        )
    }
    big_rates = measure(big_runners, args.steps, args.rounds)
    big_base = big_rates["dense, Adam (torch default)"]
    big_rows = "\n".join(
        f"| {name} | {rate:,.0f} | {rate / big_base:.2f}x |" for name, rate in big_rates.items()
    )

    default = Runner(dm.schema, batches, OPTIONS["dense, Adam (torch default)"], **model_kw)
    default.rate(3)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        default.rate(args.steps)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    prof_rows = "\n".join(
        f"| `{e.key}` | {e.self_cpu_time_total / total:.0%} | {e.count // args.steps} |"
        for e in events
    )

    body = f"""Synthetic world, {args.impressions:,} impressions; batch {args.batch_size}; MMoE with 4 experts of
[128, 64], towers [32], 16-dim embeddings (users 20,000, items 5,000), tasks click, like, watch_time.
{args.threads} torch thread(s); best of {args.rounds} interleaved rounds of {args.steps} steps; {load_note()}.

| option | samples / s | vs torch's default Adam |
|---|---:|---:|
{rows}

Fastest here: **{fastest}**. {compile_note}

With a 1,000,000-id table (random ids, one small table beside it, same MLPs; a step touches at most
{args.batch_size:,} of the 1,000,000 rows):

| option | samples / s | vs torch's default Adam |
|---|---:|---:|
{big_rows}

Where the default step (dense, torch's default Adam, no compile) spends its time (torch.profiler,
self CPU time, {args.steps} steps):

| op | share | calls per step |
|---|---:|---:|
{prof_rows}

How to choose: `module.optimizer=adam|adagrad`, `module.optimizer_kwargs={{foreach: true}}` (or
`{{fused: true}}`), `trainer.precision=bf16-mixed`, `compile=true`; sparse embedding gradients are
`FeatureEmbedding(sparse=True)` (`recolab.models.blocks`) and need `module.optimizer=adagrad`.
"""
    write("speed", "Speed options of the MMoE training step", body)


if __name__ == "__main__":
    main()
