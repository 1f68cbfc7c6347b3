"""MMoE training throughput on the synthetic world, and the data pipeline alone.

    python benchmarks/bench_train.py [--impressions 1000000] [--batch-size 2048]

Measured in one run, reported as samples per second and as ratios:
- data pipeline: recolab's columnar batches (one index_select per column per batch) against a
  per-sample `Dataset` with the default `DataLoader` collate, over the same tensors;
- training: MMoE forward + backward + Adam step on columnar batches in a bare PyTorch loop, and
  the same through `python -m recolab train`'s Lightning pipeline (validation excluded).
"""

from __future__ import annotations

import argparse
import time

import pytorch_lightning as pl
import torch
from _common import ROOT, timed, write
from torch.utils.data import DataLoader, Dataset

from recolab.data.synthetic_video import SyntheticVideoDataModule
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
    meta=[
        "user_id",
        "request_id",
        "position",
    ],  # (request, position) tells repeated items of a slate apart
)


class PerSample(Dataset):
    """The common alternative: one row per __getitem__, batched by the default collate."""

    def __init__(self, columns):
        self.columns = columns
        self.n = len(next(iter(columns["labels"].values())))

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {g: {k: v[i] for k, v in cols.items()} for g, cols in self.columns.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--impressions", type=int, default=1_000_000)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--per-sample-rows", type=int, default=100_000)
    args = ap.parse_args()
    torch.manual_seed(0)

    dm = SyntheticVideoDataModule(
        cache_dir=str(ROOT / "data" / "synthetic"),
        num_impressions=args.impressions,
        batch_size=args.batch_size,
        eval_batch_size=args.batch_size,
        **DATA,
    )
    dm.prepare_data()
    dm.setup()
    train = dm.data["train"]
    n_train = len(train["labels"]["click"])

    # -- data pipeline alone ---------------------------------------------------------------
    loader = dm.train_dataloader()
    t_col = timed(lambda: sum(1 for _ in loader))
    sub = {g: {k: v[: args.per_sample_rows] for k, v in cols.items()} for g, cols in train.items()}
    per_sample = DataLoader(PerSample(sub), batch_size=args.batch_size, shuffle=True)
    t_ps = timed(lambda: sum(1 for _ in per_sample))
    col_rate, ps_rate = n_train / t_col, args.per_sample_rows / t_ps

    # -- bare training loop ----------------------------------------------------------------
    model = MMoE(dm.schema, num_experts=4, expert_dims=[128, 64], tower_dims=[32])
    module = RankModule(model, dm.schema)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = [loader.dataset[i] for i in range(min(args.steps, len(loader.dataset)))]

    def bare():
        for b in batches:
            opt.zero_grad(set_to_none=True)
            loss, _ = module._loss(model(b["features"]), b["labels"], b["meta"])
            loss.backward()
            opt.step()

    bare()  # warm-up
    t_bare = timed(bare)
    bare_rate = len(batches) * args.batch_size / t_bare

    # -- the Lightning pipeline (python -m recolab train's path), training steps only ------
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=len(batches),
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    t = time.perf_counter()
    trainer.fit(RankModule(MMoE(dm.schema), dm.schema), datamodule=dm)
    t_pl = time.perf_counter() - t
    pl_rate = len(batches) * args.batch_size / t_pl

    body = f"""World: {args.impressions:,} impressions ({n_train:,} training rows), batch {args.batch_size}.
MMoE: 4 experts of [128, 64], towers [32], embeddings 16, tasks click, like, watch_time.

| what | samples / s | ratio |
|---|---:|---:|
| data: recolab columnar batches (one epoch) | {col_rate:,.0f} | {col_rate / ps_rate:.1f}x the per-sample loader |
| data: per-sample Dataset + default collate ({args.per_sample_rows:,} rows) | {ps_rate:,.0f} | 1.0x |
| train: MMoE step, bare PyTorch loop ({len(batches)} steps) | {bare_rate:,.0f} | 1.0x |
| train: MMoE step, recolab's Lightning pipeline ({len(batches)} steps) | {pl_rate:,.0f} | {pl_rate / bare_rate:.2f}x the bare loop |
"""
    write("train", "MMoE training throughput and the data pipeline", body)


if __name__ == "__main__":
    main()
