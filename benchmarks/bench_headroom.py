"""How much of the MMoE step lies outside the experts' matrix products, part by part.

    python benchmarks/bench_headroom.py [--impressions 1000000] [--steps 30] [--rounds 6] [--threads 1]

The bare training step of `+exp=mmoe`'s model (forward, `RankModule._loss`, backward, fused Adam)
on the synthetic world's first training batches, and the same step with parts of the model
replaced by stand-ins that cost almost nothing: the gated mixture of the experts (one broadcast
product instead), the history's mean pooling (one lookup of the last id instead of twenty), the
task towers (the mixture's first unit as the output). The stand-ins compute a different model and
are for timing only. The time a stand-in removes is the most that a faster implementation of that
part (fused kernels, say) could save; what such a part would still cost is not subtracted. It
also times the real step on batches of 16 rows: what a step costs whatever its batch. Rounds
interleave the variants; the best round counts; CPU time of the process.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch
from _common import write
from _runs import load_note
from bench_speed import DEFAULT, OPTIONS, world_batches

from recolab.allocator import tune_malloc
from recolab.data.schema import Schema
from recolab.models.blocks import FeatureEmbedding
from recolab.models.rank.mmoe import MMoE
from recolab.pipelines.rank import RankModule

# `+exp=mmoe`'s model (configs/model/mmoe.yaml with the experiment's input normalization).
MODEL = dict(
    embedding=partial(FeatureEmbedding, embedding_dim=16, batch_norm=True),
    num_experts=4,
    expert_dims=[128, 64],
    tower_dims=[32],
)


class LastIdEmbedding(FeatureEmbedding):
    """The history's mean over its ids replaced by the lookup of its last id (a stand-in)."""

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [self._lookup(self.tables[f.name], features[f.name]) for f in self.schema.sparse]
        for f in self.schema.sequences:
            parts.append(self._lookup(self.tables[f.vocab_of or f.name], features[f.name][:, -1]))
        if self.schema.dense:
            parts.append(torch.stack([features[f.name] for f in self.schema.dense], dim=1))
        x = torch.cat(parts, dim=1)
        return x if self.norm is None else self.norm(x)


class StandIns(MMoE):
    """`MMoE` with the parts named in `free` replaced by stand-ins."""

    def __init__(self, schema: Schema, free: frozenset[str], **kw) -> None:
        super().__init__(schema, **kw)
        self.free = free
        if "pooling" in free:
            self.embed = LastIdEmbedding(schema, **kw["embedding"].keywords)

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self.free - {"pooling"}:
            return super().forward(features)
        x = self.embed(features)
        experts = self.experts(x)  # (E, B, H)
        gates = self._gates(x)  # (B, T, E)
        mixed = experts[0].unsqueeze(1) * gates[..., :1]  # (B, T, H): one broadcast product
        if "towers" in self.free:
            return {t: m[:, 0] for t, m in zip(self.tasks, mixed.unbind(1))}
        return {t: self.towers[t](m).squeeze(-1) for t, m in zip(self.tasks, mixed.unbind(1))}


#: The small batch that shows the step's fixed cost (its per-step work that hardly grows with rows).
SMALL_BATCH = 16
SMALL = "batch of 16"

VARIANTS = {
    "recolab's step": frozenset(),
    "mixture free": frozenset({"mixture"}),
    "mixture and pooling free": frozenset({"mixture", "pooling"}),
    "mixture, pooling and towers free": frozenset({"mixture", "pooling", "towers"}),
}


#: The options' optimizer names -> `module.optimizer._target_`.
TORCH_OPTIMIZERS = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad}


class Step:
    def __init__(self, schema: Schema, batches: list, free: frozenset[str]) -> None:
        torch.manual_seed(0)
        self.model = StandIns(schema, free, **MODEL)
        _, _, opt, kwargs, _, _ = OPTIONS[DEFAULT]
        self.module = RankModule(
            self.model, schema, optimizer=partial(TORCH_OPTIMIZERS[opt], **kwargs)
        )
        self.opt = self.module.configure_optimizers()
        self.batches = batches

    def cpu_ms(self, steps: int) -> float:
        """CPU milliseconds per step over `steps` steps."""
        t = time.process_time()
        for i in range(steps):
            b = self.batches[i % len(self.batches)]
            self.opt.zero_grad(set_to_none=True)
            loss, _ = self.module._loss(self.model(b["features"]), b["labels"], b["meta"])
            loss.backward()
            self.opt.step()
        return (time.process_time() - t) / steps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--impressions", type=int, default=1_000_000)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tune_malloc()  # as `python -m recolab train` does by default

    schema, batches = world_batches(args.impressions, args.batch_size, args.steps)
    _, small = world_batches(args.impressions, SMALL_BATCH, args.steps)
    steps = {name: Step(schema, batches, free) for name, free in VARIANTS.items()}
    steps[SMALL] = Step(schema, small, frozenset())
    for s in steps.values():
        s.cpu_ms(3)  # warm-up
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(args.rounds):
        for name, s in steps.items():
            best[name] = min(best[name], s.cpu_ms(args.steps))

    fixed = best.pop(SMALL)
    n_params = sum(p.numel() for p in steps[SMALL].model.parameters())
    full = best["recolab's step"]
    rows = "\n".join(
        f"| {name} | {ms:.2f} | {full - ms:.2f} ({(full - ms) / full:.0%}) | {full / ms:.2f}x |"
        for name, ms in best.items()
    )
    body = f"""Synthetic world, {args.impressions:,} impressions; batch {args.batch_size}; `+exp=mmoe`'s MMoE (4 experts
of [128, 64], towers [32], 16-dim embeddings, input BatchNorm), fused Adam; the bare step (no
Lightning, no data loading). {args.threads} torch thread(s); CPU milliseconds per step, best of
{args.rounds} interleaved rounds of {args.steps} steps; {load_note()}.

A part "free" is replaced by a stand-in that costs almost nothing (a different model, for timing
only): the gated mixture by one broadcast product, the history's mean pooling over 20 ids by one
lookup, the task towers by the mixture's first unit. The time removed is the most that any faster
implementation of those parts could save.

| step | CPU ms per step | removed (share of recolab's step) | speed-up if those parts cost nothing |
|---|---:|---:|---:|
{rows}

The same step (recolab's model, all parts real) on batches of {SMALL_BATCH} rows takes **{fixed:.2f} ms**
({fixed / full:.0%} of the step on {args.batch_size} rows), measured in the same rounds: the part of a
step that hardly grows with the batch. It is the dispatch of the step's operators (forward,
autograd's backward, the optimizer) and Adam's update of all {n_params:,} parameters, which the
dense embedding gradients update whatever the batch. Faster kernels for the parts above leave it
as it is.
"""
    write("headroom", "MMoE step: the time outside the experts' products, part by part", body)


if __name__ == "__main__":
    main()
