"""MMoE training throughput and AUC: recolab against torch-rechub, same architecture, data and batch.

    python benchmarks/bench_vs_rechub.py [--steps 200] [--threads 1] [--sizes 1000000 10000000] [--skip-census]
        [--seeds N] [--precisions bf16-mixed]

torch-rechub is installed into its own environment, benchmarks/rechub_env/ (created here on first
use; ignored by git), with the on-disk CPU torch wheel when there is one, and runs as a
subprocess (`_rechub_run.py`): it is no dependency of recolab, and none of its code is in this
repository. Both sides get the same encoded columns: this script sets up recolab's data module
from the same config as the recolab run and writes its training and test columns for
torch-rechub. Both run with the same number of torch threads, one process each, no loader workers.

Scenarios:
- the synthetic world at each size (`+exp=mmoe`): a fixed number of training steps (`--steps`) on
  both sides (a full epoch of torch-rechub at 10M rows would take hours on 2 cores), then AUC on
  the test split's first rows (the same rows for both);
- Census-Income (`+exp=mmoe_census_bench`): 3 full epochs, AUC on the whole 20% test split.

Throughput counts only training (recolab: epoch start to validation start, `_runs.EpochTimer`;
torch-rechub: the time inside `MTLTrainer.train_one_epoch`).
"""

from __future__ import annotations

import argparse
import gc
import glob
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import write
from _runs import HERE, compose, load_note, run_recolab, samples_per_cpu_sec, samples_per_sec
from hydra.utils import instantiate

ENV = HERE / "rechub_env"
ENV_PY = ENV / "bin" / "python"


def ensure_env() -> str:
    """benchmarks/rechub_env with torch-rechub; returns its torch-rechub version."""
    check = [str(ENV_PY), "-c", "import importlib.metadata as m; print(m.version('torch-rechub'))"]
    if not ENV_PY.exists() or subprocess.run(check, capture_output=True).returncode:
        subprocess.run([sys.executable, "-m", "venv", str(ENV)], check=True)
        wheels = sorted(glob.glob("/opt/wheels/torch-2.*+cpu-*.whl"))
        torch_req = wheels[-1] if wheels else "torch>=2.4,<2.14"
        subprocess.run(
            [str(ENV_PY), "-m", "pip", "install", "-q", torch_req, "torch-rechub"], check=True
        )
    return subprocess.run(check, capture_output=True, text=True, check=True).stdout.strip()


def export(
    cfg, folder: Path, *, test_rows: int | None, steps: int | None, epochs: int, seed: int
) -> dict:
    """Write recolab's encoded columns and the architecture for torch-rechub; return the spec."""
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    schema = dm.schema
    spec = {
        "sparse": {f.name: f.vocab_size for f in schema.sparse},
        "sequences": {
            f.name: {"vocab_size": f.vocab_size, "shared_with": f.vocab_of}
            for f in schema.sequences
        },
        "dense": [f.name for f in schema.dense],
        "tasks": [{"name": t.name, "kind": t.kind} for t in schema.tasks],
        "embedding_dim": cfg.model.embedding.embedding_dim,
        "num_experts": cfg.model.num_experts,
        "expert_dims": list(cfg.model.expert_dims),
        "tower_dims": list(cfg.model.tower_dims),
        "lr": cfg.module.lr,
        "batch_size": cfg.data.batch_size,
        "epochs": epochs,
        "steps": steps,
        "seed": seed,
    }
    for split in ("train", "test"):
        cols = dm.data[split]
        n = len(next(iter(cols["labels"].values())))
        n = min(n, test_rows) if split == "test" and test_rows else n
        out = {f"x/{k}": v[:n].numpy() for k, v in cols["features"].items()}
        for (
            t
        ) in schema.tasks:  # the target recolab's loss sees: log1p for log1p-transformed regression
            y = cols["labels"][t.name][:n].numpy()
            out[f"y/{t.name}"] = np.log1p(y) if t.transform == "log1p" else y
        np.savez(folder / f"{split}.npz", **out)
        spec[f"{split}_rows"] = n
    (folder / "spec.json").write_text(json.dumps(spec))
    spec["params_recolab"] = None
    del dm
    gc.collect()
    return spec


def run_rechub(folder: Path, threads: int) -> dict:
    out = folder / "rechub.json"
    r = subprocess.run(
        [str(ENV_PY), str(HERE / "_rechub_run.py"), str(folder), str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)},
        timeout=7200,
    )
    if r.returncode:
        raise RuntimeError(f"torch-rechub run failed:\n{r.stderr[-4000:]}")
    return json.loads(out.read_text())


def step_flops_per_sample(cfg) -> float:
    """Matrix-product FLOPs of one training step (forward + backward) per sample, for the
    config's model (FlopCounterMode on a random batch; vocabulary sizes do not change them)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from recolab.data.schema import DenseFeature, Schema, SequenceFeature, SparseFeature, Task
    from recolab.pipelines.rank import RankModule

    data = cfg.data
    seqs = dict(data.get("sequences") or {})
    schema = Schema(
        sparse=tuple(SparseFeature(n, 10) for n in data.sparse),
        dense=tuple(DenseFeature(n) for n in data.dense),
        sequences=tuple(
            SequenceFeature(n, 10, int(v["max_len"]), vocab_of=v.get("vocab_of"))
            for n, v in seqs.items()
        ),
        tasks=tuple(Task(**dict(t)) for t in data.tasks),
    )
    model = instantiate(cfg.model, _partial_=True)(schema=schema)
    module = RankModule(model, schema)
    n = int(data.batch_size)
    feats = {f.name: torch.randint(1, 10, (n,)) for f in schema.sparse}
    feats |= {f.name: torch.randn(n) for f in schema.dense}
    feats |= {f.name: torch.randint(0, 10, (n, f.max_len)) for f in schema.sequences}
    labels = {t.name: torch.randint(0, 2, (n,)).float() for t in schema.tasks}
    with FlopCounterMode(display=False) as counter:
        loss, _ = module._loss(model(feats), labels, {})
        loss.backward()
    return counter.get_total_flops() / n


def mm_limit(threads: int, n: int = 2048) -> float:
    """FLOP/s of `torch.mm` on two n x n float32 matrices: this machine's matrix-multiply limit
    (best of 5; the same measure as bench_flops.py)."""
    import time

    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(3):
            torch.mm(a, b)
        best = min(best, (time.perf_counter() - t) / 3)
    return 2 * n**3 / best


def scenario(
    name: str,
    overrides: list[str],
    *,
    steps: int | None,
    epochs: int,
    eval_rows: int | None,
    threads: int,
    seed: int | None = None,
    precisions: tuple[str, ...] = (),
) -> dict:
    """Both sides on one config; recolab also once per extra `trainer.precision` in `precisions`
    (under "recolab:<precision>"), against the same torch-rechub run."""
    if seed is not None:
        overrides = [*overrides, f"seed={seed}"]
    cfg = compose(overrides)
    limits = [f"trainer.max_epochs={epochs}"]
    if steps:
        limits += [f"+trainer.limit_train_batches={steps}", "+trainer.limit_val_batches=1"]
    if eval_rows:
        limits.append(f"+trainer.limit_test_batches={-(-eval_rows // cfg.data.eval_batch_size)}")
        eval_rows = -(-eval_rows // cfg.data.eval_batch_size) * cfg.data.eval_batch_size
    with tempfile.TemporaryDirectory(prefix="rechub-bench-") as tmp:
        spec = export(
            cfg, Path(tmp), test_rows=eval_rows, steps=steps, epochs=epochs, seed=cfg.seed
        )
        ours = run_recolab([*overrides, *limits], threads=threads)
        others = {
            p: run_recolab([*overrides, *limits, f"trainer.precision={p}"], threads=threads)
            for p in precisions
        }
        theirs = run_rechub(Path(tmp), threads)
    return {
        "name": name,
        "flops_per_sample": step_flops_per_sample(cfg),
        "overrides": overrides + limits,
        "spec": spec,
        "recolab": ours,
        "rechub": theirs,
        **{f"recolab:{p}": r for p, r in others.items()},
    }


def as_precision(result: dict, precision: str) -> dict:
    """`result` with recolab's run at `precision` in place of its default one."""
    return {**result, "recolab": result[f"recolab:{precision}"]}


def seeds_section(by_seed: dict[str, list[dict]]) -> str:
    """AUCs (mean +- standard deviation) and ratios (wall-clock and CPU time) over training
    seeds, both sides."""
    rows = [
        "| data | seeds | task | recolab AUC | torch-rechub AUC | recolab - torch-rechub (paired) "
        "| ratio (wall clock): median [min, max] | ratio (CPU time): median [min, max] |",
        "|---|---:|---|---|---|---|---|---|",
    ]

    def spread_of(rate) -> str:
        ratios = sorted(rate(r["recolab"]) / rate(r["rechub"]) for r in runs)
        return f"{np.median(ratios):.2f}x [{ratios[0]:.2f}x, {ratios[-1]:.2f}x]"

    for name, runs in by_seed.items():
        spread = f"{spread_of(samples_per_sec)} | {spread_of(samples_per_cpu_sec)}"
        for task in [t["name"] for t in runs[0]["spec"]["tasks"] if t["kind"] == "binary"]:
            ours = np.array([r["recolab"]["metrics"][f"test/auc/{task}"] for r in runs])
            theirs = np.array([r["rechub"]["metrics"][f"test/auc/{task}"] for r in runs])
            rows.append(
                f"| {name} | {len(runs)} | {task} | {ours.mean():.4f} +- {ours.std(ddof=1):.4f} "
                f"| {theirs.mean():.4f} +- {theirs.std(ddof=1):.4f} "
                f"| {(ours - theirs).mean():+.4f} +- {(ours - theirs).std(ddof=1):.4f} | {spread} |"
            )
            spread = " |"
    return (
        "\nOver training seeds (`seed=` for recolab, `torch.manual_seed` for torch-rechub: "
        "initialization and batch order; the same data), each seed a full run of both sides:\n\n"
        + "\n".join(rows)
        + "\n"
    )


def precision_section(
    precision: str, results: list[dict], by_seed: dict[str, list[dict]], seeds: int
) -> str:
    """The tables again, recolab trained with `trainer.precision=<precision>` in the same run
    (its run beside the default one, against the same torch-rechub run)."""
    note = (
        "bf16 autocast runs the matrix products in bfloat16 (float32 weights, Adam and loss); "
        "evaluation scores in float32. It pays where the CPU has bfloat16 instructions (see the "
        "machine line) and costs several times the step where it has none "
        "(experiments/bench/speed.md)."
        if precision.startswith("bf16")
        else ""
    )
    swapped = [as_precision(r, precision) for r in results]
    section = (
        f"\n## recolab with `trainer.precision={precision}`\n\n"
        f"recolab trained again in this run with `trainer.precision={precision}` added to each "
        f"config below, against the same torch-rechub runs as above. {note}\n\n{table(swapped)}\n"
    )
    if seeds > 1:
        section += seeds_section(
            {name: [as_precision(r, precision) for r in runs] for name, runs in by_seed.items()}
        )
    return section


def ceiling_table(results: list[dict], limit: float) -> str:
    """How far each side is from the machine's matrix-multiply limit, and the most any
    implementation of these matrix products could gain over torch-rechub here."""
    rows = [
        "| data | matrix-product MFLOP per sample (forward + backward) | recolab GFLOP/s (share of the mm limit) | "
        "torch-rechub GFLOP/s (share) | ceiling: mm limit over torch-rechub's rate |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        f = r["flops_per_sample"]
        ours, theirs = (
            samples_per_cpu_sec(r["recolab"]) * f,
            samples_per_cpu_sec(r["rechub"]) * f,
        )
        rows.append(
            f"| {r['name']} | {f / 1e6:.3f} | {ours / 1e9:.1f} ({ours / limit:.0%}) | "
            f"{theirs / 1e9:.1f} ({theirs / limit:.0%}) | **{limit / theirs:.1f}x** |"
        )
    return "\n".join(rows)


def table(results: list[dict]) -> str:
    rows = [
        "| data | training rows | samples trained | recolab samples/s | torch-rechub samples/s | ratio | "
        "recolab samples/CPU-s | torch-rechub samples/CPU-s | ratio (CPU time) | "
        "recolab AUC | torch-rechub AUC | torch-rechub data pipeline alone, samples/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for r in results:
        ours, theirs = samples_per_sec(r["recolab"]), samples_per_sec(r["rechub"])
        ours_cpu, theirs_cpu = samples_per_cpu_sec(r["recolab"]), samples_per_cpu_sec(r["rechub"])
        binary = [t["name"] for t in r["spec"]["tasks"] if t["kind"] == "binary"]

        def auc(rec: dict, binary: list[str] = binary) -> str:
            return ", ".join(
                f"{t} {rec['metrics'].get(f'test/auc/{t}', float('nan')):.4f}" for t in binary
            )

        samples = sum(e["samples"] for e in r["recolab"]["epochs"])
        rows.append(
            f"| {r['name']} | {r['spec']['train_rows']:,} | {samples:,} | {ours:,.0f} | {theirs:,.0f} | {ours / theirs:.1f}x | "
            f"{ours_cpu:,.0f} | {theirs_cpu:,.0f} | **{ours_cpu / theirs_cpu:.1f}x** | "
            f"{auc(r['recolab'])} | {auc(r['rechub'])} | {r['rechub']['data_samples_per_sec']:,.0f} |"
        )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--steps", type=int, default=200, help="training steps on the synthetic world (both sides)"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (both sides)")
    ap.add_argument("--sizes", type=int, nargs="*", default=[1_000_000, 10_000_000])
    ap.add_argument(
        "--eval-rows", type=int, default=100_000, help="test rows scored on the synthetic world"
    )
    ap.add_argument("--skip-census", action="store_true")
    ap.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="also train both sides with seeds 1..N-1 and add a table of AUCs and ratios over seeds",
    )
    ap.add_argument("--out", default="vs_rechub", help="experiments/bench/<out>.md")
    ap.add_argument(
        "--precisions",
        nargs="*",
        default=[],
        help="also run recolab with each of these trainer.precision values (e.g. bf16-mixed), "
        "against the same torch-rechub runs",
    )
    ap.add_argument(
        "--extra",
        nargs="*",
        default=[],
        help="overrides added to recolab's side, e.g. model.batch_norm=true",
    )
    args = ap.parse_args()
    version = ensure_env()
    limit = mm_limit(args.threads)

    plans = [
        (
            f"synthetic world, {n:,} impressions",
            ["+exp=mmoe", f"data.num_impressions={n}", *args.extra],
            dict(steps=args.steps, epochs=1, eval_rows=args.eval_rows),
        )
        for n in args.sizes
    ]
    if not args.skip_census:
        plans.append(
            (
                "Census-Income (KDD), `+exp=mmoe_census_bench`",
                ["+exp=mmoe_census_bench", *args.extra],
                dict(steps=None, epochs=3, eval_rows=None),
            )
        )
    results = [
        scenario(name, overrides, threads=args.threads, precisions=args.precisions, **kw)
        for name, overrides, kw in plans
    ]
    by_seed = {
        r["name"]: [r]
        + [
            scenario(
                name, overrides, threads=args.threads, seed=seed, precisions=args.precisions, **kw
            )
            for seed in range(1, args.seeds)
        ]
        for r, (name, overrides, kw) in zip(results, plans)
    }

    configs = []
    for r in results:
        s = r["spec"]
        configs.append(
            f"- **{r['name']}**: recolab `python -m recolab train {' '.join(r['overrides'])}`; torch-rechub "
            f"{version} `MMOE(features, task_types, n_expert={s['num_experts']}, expert_params={{'dims': {s['expert_dims']}}}, "
            f"tower_params_list=[{{'dims': {s['tower_dims']}}}] * {len(s['tasks'])})` with `SparseFeature(embed_dim={s['embedding_dim']})` "
            f"for {len(s['sparse'])} id columns, "
            + (
                f"`SequenceFeature(pooling='mean', shared_with=..., padding_idx=0)` for {list(s['sequences'])}, "
                if s["sequences"]
                else ""
            )
            + f"`DenseFeature` for {len(s['dense'])} numeric columns; `DataGenerator(x, y).generate_dataloader(batch_size={s['batch_size']})`; "
            f"`MTLTrainer(optimizer_params={{'lr': {s['lr']}, 'weight_decay': 0}}, n_epoch={s['epochs']})`"
            + (
                f", training loader drawing {s['steps']} x {s['batch_size']} shuffled samples"
                if s["steps"]
                else ""
            )
            + f"; test AUC on {s['test_rows']:,} rows. Parameters: torch-rechub {r['rechub']['params']:,}."
        )
    body = f"""{table(results)}

How close each side runs to this machine's matrix-multiply limit (`torch.mm` of two 2048 x 2048
float32 matrices, {args.threads} thread(s): **{limit / 1e9:.1f} GFLOP/s**, measured in this run).
FLOPs are the matrix products of one training step of recolab's model for the config
(FlopCounterMode), per sample; torch-rechub's model has the same architecture, so the same
products (its BatchNorm layers add element-wise work, not matrix products). The last column is the
most that any implementation of these products could train over torch-rechub's rate here: a
ratio above it would need the step to beat the matrix-multiply limit.

{ceiling_table(results, limit)}
{seeds_section(by_seed) if args.seeds > 1 else ""}
{"".join(precision_section(p, results, by_seed, args.seeds) for p in args.precisions)}
Ratios: recolab's training samples per second over torch-rechub's, both measured in this run with
{args.threads} torch thread(s) per process and no loader workers; {load_note()}. On this shared
machine a process waits for a core part of the time, differently from run to run, so the
wall-clock rates are noisy (the 1M and 10M synthetic runs do the same work); samples per CPU
second of the process (`time.process_time` over the same span) leave the waiting out, and their
ratio is the figure to compare.

Same on both sides: the encoded columns (recolab's vocabularies and standardization, written
for torch-rechub by this script), the architecture (embeddings, experts, softmax gates, towers),
Adam at the config's rate without weight decay (recolab uses torch's fused Adam, its default;
torch-rechub torch's default implementation: the same update), the batch size, and the number of
steps or epochs. Where they differ, by torch-rechub's design: its MLP puts BatchNorm1d after every linear
layer (experts, gates and towers), its gates are such an MLP with a softmax, it averages the task
losses (recolab sums them, weights 1), and its loss is BCE on probabilities (recolab: BCE on logits).
recolab's batch normalization is what its config sets (`model.embedding.batch_norm`: one BatchNorm1d
over the input features, on in `+exp=mmoe`; `model.batch_norm`: in the experts; see each config
below).
The last column is torch-rechub's `DataLoader` alone (per-sample `TorchDataset` + default collate),
which bounds its training speed from above: that is where the ratio comes from.

Configs:
{chr(10).join(configs)}
"""
    write(args.out, "MMoE training throughput: recolab against torch-rechub", body)


if __name__ == "__main__":
    main()
