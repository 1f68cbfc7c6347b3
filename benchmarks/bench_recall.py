"""Retrieval speed: sampler throughput, and full-corpus evaluation against the bare matrix product.

    python benchmarks/bench_recall.py [--users 10000] [--items 100000] [--dim 64] [--threads N]

Measured in one run:
- training steps per second of a two-tower model on one fixed batch (forward, loss, backward, Adam)
  with in-batch negatives, in-batch + the streaming logQ correction (estimator update and lookup),
  and mixed negatives (in-batch + uniform corpus negatives, corrected), as ratios to in-batch;
- full-corpus top-100 for U users x I items (dim D) with each user's seen items excluded: the
  exact batched top-k (`recolab.index.exact_topk`) and a faiss flat inner-product index
  (`FaissIndex(kind="flat")`, build + search), against the bare `U @ I.T` computed in the same
  blocks of users (the product alone, no masking, no selection).
"""

from __future__ import annotations

import argparse
import os

import faiss
import numpy as np
import torch
from _common import timed, write

from recolab.index import FaissIndex, csr_from_pairs, exact_topk
from recolab.models.recall import TwoTower
from recolab.pipelines.recall import RecallModule
from recolab.samplers import InBatchSoftmax, MixedNegativeSoftmax


def sampler_rows(args: argparse.Namespace) -> list[tuple[str, float]]:
    g = torch.Generator().manual_seed(0)
    num_items, b = args.train_items, args.batch_size
    counts = torch.zeros(num_items + 1, dtype=torch.long)
    counts[1:] = (1e6 / torch.arange(1, num_items + 1) ** 1.1).long() + 1
    # Zipf-like item ids, as in a real log (duplicates make accidental hits)
    probs = counts[1:].double() / counts[1:].sum()
    batch = {
        "features": {
            "user_id": torch.randint(1, args.train_users + 1, (b,), generator=g),
            "item_id": torch.multinomial(probs, b, replacement=True, generator=g) + 1,
            "hist_items": torch.multinomial(probs, b * 20, replacement=True, generator=g).view(
                b, 20
            )
            + 1,
        }
    }
    out = []
    for name, sampler in (
        ("in-batch", InBatchSoftmax()),
        ("in-batch + logQ", InBatchSoftmax(logq=True)),
        (
            f"mixed (in-batch + {args.negatives} uniform) + logQ",
            MixedNegativeSoftmax(logq=True, num_negatives=args.negatives),
        ),
    ):
        torch.manual_seed(0)
        model = TwoTower(
            num_users=args.train_users,
            num_items=num_items,
            dim=args.dim,
            hidden_dims=[128],
            history_len=20,
        )
        module = RecallModule(model, num_items=num_items, item_counts=counts, sampler=sampler)
        module.log = lambda *a, **k: None
        opt = module.configure_optimizers()

        def steps(n: int, module: RecallModule = module, opt: torch.optim.Optimizer = opt) -> None:
            for _ in range(n):
                loss = module.training_step(batch, 0)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        steps(3)  # warm-up
        seconds = timed(lambda: steps(args.steps), repeat=3)
        out.append((name, args.steps / seconds))
    return out


def eval_rows(args: argparse.Namespace) -> tuple[list[tuple[str, float]], dict]:
    g = torch.Generator().manual_seed(0)
    users = torch.randn(args.users, args.dim, generator=g)
    items = torch.randn(
        args.items + 1, args.dim, generator=g
    )  # row 0: padding, as all_item_embeddings
    rows = torch.arange(args.users).repeat_interleave(args.seen)
    seen = csr_from_pairs(
        rows, torch.randint(1, args.items + 1, (len(rows),), generator=g), num_rows=args.users
    )
    block = args.block

    def bare() -> None:
        for start in range(0, args.users, block):
            users[start : start + block] @ items.T  # (block, I)

    def exact() -> None:
        exact_topk(users, items, k=args.k, exclude=seen, batch_size=block)

    def flat() -> None:
        FaissIndex(kind="flat").build(items).search(users, args.k, exclude=seen)

    bare()  # warm-up (allocator, BLAS)
    t_bare = timed(bare, repeat=args.repeat)
    t_exact = timed(exact, repeat=args.repeat)
    t_flat = timed(flat, repeat=args.repeat)
    # the two searches agree (flat is exact too): a sanity check on what was timed
    _, exact_ids = exact_topk(
        users[:200], items, k=args.k, exclude=(seen[0][:201], seen[1][: int(seen[0][200])])
    )
    _, flat_ids = (
        FaissIndex(kind="flat")
        .build(items)
        .search(users[:200], args.k, exclude=(seen[0][:201], seen[1][: int(seen[0][200])]))
    )
    agree = float((np.sort(exact_ids.numpy(), 1) == np.sort(flat_ids, 1)).mean())
    return [
        (f"bare `U @ I.T` (blocks of {block} users)", t_bare),
        ("exact batched top-k, seen items excluded", t_exact),
        ("faiss flat (build + search), seen items excluded", t_flat),
    ], {"agree": agree}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--seen", type=int, default=50, help="excluded items per user")
    ap.add_argument(
        "--block", type=int, default=1024, help="users per block (exact_topk's batch_size)"
    )
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--negatives", type=int, default=1024)
    ap.add_argument("--train-users", type=int, default=10_000)
    ap.add_argument("--train-items", type=int, default=100_000)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument(
        "--threads", type=int, default=None, help="torch and faiss threads (default: torch's)"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(torch.get_num_threads())

    samplers = sampler_rows(args)
    evals, check = eval_rows(args)
    base_rate = samplers[0][1]
    t_bare = evals[0][1]
    load = os.getloadavg()
    body = "\n".join(
        [
            f"Torch and faiss threads: {torch.get_num_threads()}; load average at the end "
            f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (other processes share the machine).",
            "",
            f"## Sampler throughput (two-tower, dim {args.dim}, batch {args.batch_size}, "
            f"{args.train_items:,} items, Zipf item ids, forward + backward + Adam on one fixed batch, best of 3 x {args.steps} steps)",
            "",
            "| softmax negatives | steps/s | relative to in-batch |",
            "|---|---:|---:|",
            *[f"| {name} | {rate:.2f} | {rate / base_rate:.2f} |" for name, rate in samplers],
            "",
            f"## Full-corpus evaluation: {args.users:,} users x {args.items:,} items, dim {args.dim}, top-{args.k}, "
            f"{args.seen} seen items excluded per user",
            "",
            "| | seconds | relative to the bare product |",
            "|---|---:|---:|",
            *[f"| {name} | {t:.3f} | {t / t_bare:.2f} |" for name, t in evals],
            "",
            f"Best of {args.repeat} runs each. Exact and faiss flat returned the same top-{args.k} sets for "
            f"{check['agree'] * 100:.1f}% of the entries checked (the first 200 users).",
        ]
    )
    write("recall", "Retrieval: sampler throughput and full-corpus evaluation", body)


if __name__ == "__main__":
    main()
