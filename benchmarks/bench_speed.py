"""Speed options of the MMoE training step, measured against each other in one run.

    python benchmarks/bench_speed.py [--impressions 1000000] [--steps 20] [--rounds 3] [--threads 1]

A bare step (forward, `RankModule._loss`, backward, optimizer step) on the synthetic world's first
training batches, for: recolab's MMoE against its previous implementation (`PreviousMMoE`: the
experts as E separate MLPs stacked, a batched product per task for the gate, `nn.Embedding`
lookups), which computes the same function from the same parameters; dense or sparse embedding
gradients; Adam (torch's default implementation on CPU, `foreach`, `fused`, which recolab uses by
default) or Adagrad; bf16 autocast (what `trainer.precision=bf16-mixed` does on CPU);
`torch.compile` (`compile=true`; compilation time reported apart). Each option runs `--steps`
steps per round after a warm-up, rounds interleave the options, and the best round counts; rates
are samples per CPU second of the process, which leave out the time spent waiting for a core on a
shared machine. A second table repeats dense against sparse with a 1,000,000-id table, where a
step touches a small share of the rows. Last, where the default step's time goes (torch.profiler).
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch
from _common import ROOT, bf16_instructions, write
from _runs import load_note, run_recolab, samples_per_cpu_sec
from torch import nn
from torch.profiler import ProfilerActivity, profile

from recolab.allocator import tune_malloc
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
    # name: (model, sparse embeddings, optimizer, optimizer kwargs, bf16 autocast, compile)
    "previous MMoE, Adam (torch default)": (
        "previous",
        False,
        "adam",
        {"fused": False},
        False,
        False,
    ),
    "dense, Adam (torch default)": ("mmoe", False, "adam", {"fused": False}, False, False),
    "dense, Adam foreach": ("mmoe", False, "adam", {"foreach": True}, False, False),
    "dense, Adam fused (recolab's default)": ("mmoe", False, "adam", {}, False, False),
    "dense, Adagrad": ("mmoe", False, "adagrad", {}, False, False),
    "sparse, Adagrad": ("mmoe", True, "adagrad", {}, False, False),
    "dense, Adam fused, bf16 autocast": ("mmoe", False, "adam", {}, True, False),
    "dense, Adam fused, torch.compile": ("mmoe", False, "adam", {}, False, True),
}
#: The options' optimizer names -> `module.optimizer._target_`.
TORCH_OPTIMIZERS = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad}
BASE = "dense, Adam (torch default)"
DEFAULT = "dense, Adam fused (recolab's default)"
COMPILED = "dense, Adam fused, torch.compile"
BF16 = "dense, Adam fused, bf16 autocast"


class PreviousMMoE(MMoE):
    """recolab's MMoE before its experts were batched, for comparison: the same function.

    The experts are E separate `MLP`s run one after another and stacked, each task's gate mixes
    them with a (B, 1, E) @ (B, E, H) product, and ids are looked up through `nn.Embedding`.
    Its weights are `MMoE`'s from the same seed (the experts' copied out of the batched block).
    """

    def __init__(self, schema: Schema, **kw) -> None:
        super().__init__(schema, **kw)
        self.experts = nn.ModuleList([self.experts.expert(e) for e in range(self.experts.num)])
        self.embed._lookup = lambda table, ids: table(ids)  # nn.Embedding's own lookup

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = self.embed(features)  # (B, F)
        experts = torch.stack([e(x) for e in self.experts], dim=1)  # (B, E, H)
        out = {}
        for t in self.tasks:
            gate = self.gates[t](x).softmax(-1).unsqueeze(1)  # (B, 1, E)
            out[t] = self.towers[t]((gate @ experts).squeeze(1)).squeeze(-1)  # (B,)
        return out


class Runner:
    """One option's model, module and optimizer, stepping over fixed batches."""

    def __init__(self, schema: Schema, batches: list, option: tuple, **model_kw) -> None:
        kind, sparse, opt, kwargs, self.bf16, compiled = option
        torch.manual_seed(0)
        self.model = (PreviousMMoE if kind == "previous" else MMoE)(schema, **model_kw)
        if sparse:
            self.model.embed = FeatureEmbedding(
                schema,
                embedding_dim=self.model.embed.tables[schema.sparse[0].name].embedding_dim,
                sparse=True,
            )
        self.module = RankModule(
            self.model, schema, optimizer=partial(TORCH_OPTIMIZERS[opt], **kwargs)
        )
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
        """Samples per CPU second of this process over `steps` steps."""
        t = time.process_time()
        for i in range(steps):
            self.step(self.batches[i % len(self.batches)])
        return steps * len(self.batches[0]["labels"]["click"]) / (time.process_time() - t)


def measure(runners: dict[str, Runner], steps: int, rounds: int) -> dict[str, float]:
    for r in runners.values():
        r.rate(3)  # warm-up
    best = dict.fromkeys(runners, 0.0)
    for _ in range(rounds):
        for name, r in runners.items():
            best[name] = max(best[name], r.rate(steps))
    return best


def world_batches(impressions: int, batch_size: int, steps: int) -> tuple[Schema, list]:
    """The synthetic world's schema and its first `steps` training batches (cached under data/)."""
    dm = SyntheticVideoDataModule(
        cache_dir=str(ROOT / "data" / "synthetic"),
        num_impressions=impressions,
        batch_size=batch_size,
        **DATA,
    )
    dm.prepare_data()
    dm.setup()
    dataset = dm.train_dataloader().dataset
    return dm.schema, [dataset[i] for i in range(min(steps, len(dataset)))]


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
    tune_malloc()  # as `python -m recolab train` does by default

    schema_world, batches = world_batches(args.impressions, args.batch_size, args.steps)
    model_kw = dict(num_experts=4, expert_dims=[128, 64], tower_dims=[32])
    runners = {
        name: Runner(schema_world, batches, opt, **model_kw) for name, opt in OPTIONS.items()
    }
    rates = measure(runners, args.steps, args.rounds)
    base, previous = rates[BASE], rates["previous MMoE, Adam (torch default)"]
    fastest = max(rates, key=rates.get)
    rows = "\n".join(
        f"| {name} | {rate:,.0f} | {rate / base:.2f}x | {rate / previous:.2f}x |"
        + (
            f" compiled in {runners[name].compile_seconds:.0f} s"
            if runners[name].compile_seconds
            else ""
        )
        for name, rate in rates.items()
    )

    gain = 1 / rates[DEFAULT] - 1 / rates[COMPILED]  # CPU seconds saved per sample
    speedup, seconds = rates[COMPILED] / rates[DEFAULT], runners[COMPILED].compile_seconds
    compile_note = (
        f"`torch.compile` trains {speedup:.2f}x as fast per step as the default after {seconds:.0f} s "
        "of compilation (longer when inductor's on-disk cache is cold): "
        + (
            f"it pays off after {seconds / gain:,.0f} samples, so long runs should set `compile=true`"
            if gain > 0
            else "it does not pay off here"
        )
        + "; `compile: false` stays the default."
    )

    bf16 = rates[BF16] / rates[DEFAULT]
    precision_note = (
        f"bf16 autocast trains {bf16:.2f}x the default's rate here (bf16 instructions: "
        f"{bf16_instructions()}). `trainer.precision` stays `32-true` by default: on a CPU "
        "without bf16 instructions autocast costs several times the step (0.10x, speed.md at "
        "commit 73c6247), and float32 results matched between the two kinds of CPU (vs_rechub_seeds.md's AUCs, to "
        "the fourth decimal); "
        "`trainer.precision=bf16-mixed` is the choice where the CPU has them"
        + (" and, as here, it measures faster." if bf16 > 1 else ".")
    )

    schema, big = large_vocab_batches(1_000_000, args.batch_size, args.steps)
    big_runners = {
        name: Runner(schema, big, OPTIONS[name], **model_kw)
        for name in (BASE, "dense, Adam foreach", DEFAULT, "dense, Adagrad", "sparse, Adagrad")
    }
    big_rates = measure(big_runners, args.steps, args.rounds)
    big_rows = "\n".join(
        f"| {name} | {rate:,.0f} | {rate / big_rates[BASE]:.2f}x |"
        for name, rate in big_rates.items()
    )

    default = Runner(schema_world, batches, OPTIONS[DEFAULT], **model_kw)
    default.rate(3)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        default.rate(args.steps)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    prof_rows = "\n".join(
        f"| `{e.key}` | {e.self_cpu_time_total / total:.0%} | {e.count // args.steps} |"
        for e in events
    )

    malloc_rows = malloc_table(args.threads)

    body = f"""Synthetic world, {args.impressions:,} impressions; batch {args.batch_size}; MMoE with 4 experts of
[128, 64], towers [32], 16-dim embeddings (users 20,000, items 5,000), tasks click, like, watch_time.
{args.threads} torch thread(s); samples per CPU second of this process, best of {args.rounds}
interleaved rounds of {args.steps} steps; {load_note()}.

"previous MMoE" is recolab's MMoE before its experts were batched (`PreviousMMoE` in the script:
E separate expert MLPs, stacked, a (B, 1, E) @ (B, E, H) product per task, `nn.Embedding`
lookups), with the same weights; every other row is the current `recolab.models.rank.mmoe.MMoE`
(`BatchedMLPs` experts run as one autograd Function with its own backward (under bf16 autocast on
bf16 casts of the input and weights), one product for all gates and one for all mixtures (in
float32 under autocast), a softmax over a transposed view, `index_select` lookups and a
sequence mean without a (B, L, D) mask product on CPU). The last column is the whole change: the
current step against the previous one.

| option | samples / CPU-s | vs torch's default Adam | vs previous MMoE |
|---|---:|---:|---:|
{rows}

Fastest here: **{fastest}**. {precision_note} {compile_note}

With a 1,000,000-id table (random ids, one small table beside it, same MLPs; a step touches at most
{args.batch_size:,} of the 1,000,000 rows):

| option | samples / CPU-s | vs torch's default Adam |
|---|---:|---:|
{big_rows}

glibc's allocator (`malloc_tuning`, `recolab.allocator`), measured on the real training command
(separate processes, since the setting is per process; {MALLOC_ROUNDS} alternating rounds, best
samples per CPU second of the training epochs; minor page faults per training step, fewest of
the rounds):

| data | `malloc_tuning=true` samples / CPU-s | `false` | ratio | page faults per step, true / false |
|---|---:|---:|---:|---:|
{malloc_rows}

Where recolab's default step (dense, fused Adam, no compile) spends its time (torch.profiler,
self CPU time, {args.steps} steps):

| op | share | calls per step |
|---|---:|---:|
{prof_rows}

How to choose: `module.optimizer._target_=torch.optim.Adam|torch.optim.Adagrad`,
`+module.optimizer.foreach=true` (or `+module.optimizer.fused=false` for torch's default Adam),
`trainer.precision=bf16-mixed`, `compile=true`; sparse embedding gradients are
`model.embedding.sparse=true` (every ranker) with `module.optimizer._target_=torch.optim.Adagrad`.
"""
    write("speed", "Speed options of the MMoE training step", body)


MALLOC_ROUNDS = 2
MALLOC_RUNS = {
    "synthetic world, 1,000,000 impressions, 200 steps": [
        "+exp=mmoe",
        "data.num_impressions=1000000",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=200",
        "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=1",
    ],
    "Census-Income, `+exp=mmoe_census_bench`, 1 epoch": [
        "+exp=mmoe_census_bench",
        "trainer.max_epochs=1",
        "+trainer.limit_test_batches=1",
    ],
}


def malloc_table(threads: int) -> str:
    rows = []
    for name, overrides in MALLOC_RUNS.items():
        best = {True: 0.0, False: 0.0}
        faults = {True: 0.0, False: 0.0}
        for _ in range(MALLOC_ROUNDS):
            for tuned in (True, False):
                record = run_recolab(
                    [*overrides, f"malloc_tuning={str(tuned).lower()}"], threads=threads
                )
                best[tuned] = max(best[tuned], samples_per_cpu_sec(record))
                steps = sum(e["batches"] for e in record["epochs"])
                per_step = sum(e["minor_faults"] for e in record["epochs"]) / steps
                faults[tuned] = per_step if not faults[tuned] else min(faults[tuned], per_step)
        rows.append(
            f"| {name} | {best[True]:,.0f} | {best[False]:,.0f} | {best[True] / best[False]:.2f}x "
            f"| {faults[True]:,.0f} / {faults[False]:,.0f} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    main()
