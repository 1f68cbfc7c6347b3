"""The GPU check's measurements, stage by stage, each in its own process with its own time budget.

    python benchmarks/gpu_bench.py [--dry-run] [--out experiments/bench/gpu.md] [--budget-scale 1.0]

Run by benchmarks/gpu_check.sh (after `pytest -m gpu`). Stages (`STAGES`, in this order):

- env: the device, torch, and the two ceilings measured on it: an 8192^3 bf16 matrix product
  (FLOP/s) and a device-to-device copy (bytes read + written per second);
- world: the real pipeline end to end: the synthetic world (1M impressions) generated, validated
  and encoded by `SyntheticVideoDataModule` with `data.device_resident=auto`, `+exp=mmoe`'s MMoE
  trained one epoch in bf16-mixed by Lightning, then tested (metrics computed on the device);
- train: MMoE training samples per second at 10M and 100M impressions, batch 8k to 64k,
  bf16-mixed, through Lightning and recolab's `RankModule` on device-resident columnar batches.
  The columns are rows of a 200k-impression world resampled with replacement on the GPU to the
  size's training split (80% of the impressions): the world's generator is CPU numpy and takes
  minutes at 100M, and a step's cost depends on the batch, not on the split's size. Per batch
  size: the step's FLOPs (its matrix products, counted at dispatch), achieved FLOP/s against the
  measured bf16 ceiling, the same products replayed in a bare loop, and peak GPU memory;
- ddp: Lightning's DDP strategy on the one GPU (nccl; gloo on CPU) training and testing the world:
  a smoke test of the distributed path (gathered evaluation included);
- retrieval: `exact_topk` (recolab's evaluation search, seen items excluded) against a bare
  matrix product + `topk` over the same blocks; a faiss IVF index's recall@100 against it (on the
  GPU where faiss has GPU support, else faiss-cpu, said so);
- metrics: AUC, GAUC, XAUC, XGAUC on the device (`recolab.metrics.device`) against numpy, 10M and
  100M rows;
- rechub: torch-rechub's MMoE on the same GPU (its `MTLTrainer`, its per-sample data loader,
  float32 as its documentation trains), where it is installed.

A stage that runs past its budget is stopped; what it measured until then is kept (each figure is
saved as soon as it is measured) and the report says which stage stopped. `--dry-run` runs every
stage at tiny sizes on whatever device there is (the CPU here) to check the script end to end;
its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (ROOT / "src", ROOT):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

#: Full-size settings (an H200) and the dry run's.
FULL = dict(
    world=1_000_000,
    base=200_000,
    sizes={10_000_000: [8192, 16384, 32768, 65536], 100_000_000: [32768, 65536]},
    warm=15,
    steps=60,
    matmul=8192,
    copy_bytes=2 << 30,
    items=1_000_000,
    nlist=1024,
    users=65_536,
    dim=64,
    seen=50,
    metric_rows=[10_000_000, 100_000_000],
    numpy_rows=10_000_000,
    rechub_batches={8192: 20, 65536: 3},
    ddp_steps=50,
)
DRY = dict(
    world=20_000,
    base=20_000,
    sizes={40_000: [256, 512], 80_000: [512]},
    warm=2,
    steps=4,
    matmul=256,
    copy_bytes=8 << 20,
    items=5_000,
    nlist=64,
    users=600,
    dim=16,
    seen=20,
    metric_rows=[30_000],
    numpy_rows=30_000,
    rechub_batches={256: 3},
    ddp_steps=6,
)
#: Seconds each stage may take (full size), in order; the dry run (on a shared CPU) gets twice.
STAGES = {
    "env": 30,
    "world": 60,
    "train": 130,
    "ddp": 30,
    "retrieval": 40,
    "metrics": 45,
    "rechub": 35,
}
#: The H200's dense bf16 matrix throughput by its datasheet (a lead; `env` measures the ceiling).
H200_BF16_DATASHEET = 989e12
MMOE = dict(num_experts=4, expert_dims=[128, 64], tower_dims=[32])
EMBEDDING = dict(embedding_dim=16, batch_norm=True)  # the model's `model.embedding` node


# --- helpers --------------------------------------------------------------------------------------


class Results:
    """A stage's figures, written to `<work>/<stage>.json` after every `put` (a stage stopped at
    its budget keeps what it had measured)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {}

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.path.write_text(json.dumps(self.data, indent=1, default=str))


def _device(dry: bool):
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    if dry:
        return torch.device("cpu")
    sys.exit("no CUDA device: this check measures a GPU (use --dry-run to check the script here)")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn, device, *, warm: int = 3, reps: int = 10) -> float:
    """Median seconds of `fn()`: CUDA events on a GPU, the wall clock elsewhere."""
    import torch

    for _ in range(warm):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def _world_module(cfg: dict, work: Path, impressions: int, **kw):
    """The synthetic world's data module with `configs/data/synthetic_video.yaml`'s settings."""
    import yaml

    from recolab.data.synthetic_video import SyntheticVideoDataModule

    spec = yaml.safe_load((ROOT / "configs" / "data" / "synthetic_video.yaml").read_text())
    spec = {k: v for k, v in spec.items() if k not in ("_target_", "cache_dir", "seed")}
    spec.update(num_impressions=impressions, seed=0, **kw)
    dm = SyntheticVideoDataModule(cache_dir=str(work / "data"), **spec)
    dm.prepare_data()
    dm.setup()
    return dm


def _trainer(device, **kw):
    import pytorch_lightning as pl

    return pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        **kw,
    )


def _module(schema):
    from functools import partial

    import torch

    from recolab.models.blocks import FeatureEmbedding
    from recolab.models.rank.mmoe import MMoE
    from recolab.pipelines.rank import RankModule

    torch.manual_seed(0)
    embedding = partial(FeatureEmbedding, **EMBEDDING)
    return RankModule(MMoE(schema, embedding=embedding, **MMOE), schema)


def _gib(n: float) -> float:
    return round(n / 2**30, 3)


# --- stages ---------------------------------------------------------------------------------------


def stage_env(cfg: dict, out: Results, work: Path, device) -> None:
    import torch

    out.put("python", platform.python_version())
    out.put("torch", torch.__version__)
    out.put("cuda", torch.version.cuda)
    out.put("device", str(device))
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        free, total = torch.cuda.mem_get_info(device)
        out.put("name", p.name)
        out.put("capability", f"{p.major}.{p.minor}")
        out.put("multiprocessors", p.multi_processor_count)
        out.put("memory_gib", {"total": _gib(total), "free": _gib(free)})
        try:
            smi = subprocess.run(
                [
                    "nvidia-smi",
                    "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm",
                    "--format=csv,noheader",
                ],
                capture_output=True,
                text=True,
                timeout=15,
            )
            out.put("nvidia_smi", smi.stdout.strip())
        except (OSError, subprocess.SubprocessError) as e:
            out.put("nvidia_smi", f"unavailable: {e}")
    else:
        out.put("name", platform.processor() or "cpu")
    n = cfg["matmul"]
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=g)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=g)
    sec = _median_seconds(lambda: a @ b, device, warm=3, reps=10)
    out.put("bf16_matmul_flops", 2 * n**3 / sec)
    out.put("bf16_matmul_shape", n)
    words = cfg["copy_bytes"] // 4
    src = torch.rand(words, device=device, generator=g)
    dst = torch.empty_like(src)
    sec = _median_seconds(lambda: dst.copy_(src), device, warm=3, reps=10)
    out.put("copy_bytes_per_s", 2 * words * 4 / sec)


def stage_world(cfg: dict, out: Results, work: Path, device) -> None:
    import torch

    t = time.perf_counter()
    dm = _world_module(
        cfg,
        work,
        cfg["world"],
        batch_size=8192 if device.type == "cuda" else 256,
        eval_batch_size=65536,
        device_resident="auto",
    )
    out.put("impressions", cfg["world"])
    out.put("setup_seconds", time.perf_counter() - t)
    module = _module(dm.schema)
    trainer = _trainer(device, precision="bf16-mixed", max_epochs=1, limit_val_batches=0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    _sync(device)
    seconds = time.perf_counter() - t
    rows = len(dm.data["train"]["labels"]["click"])
    out.put("device_resident", dm._on_device is not None)
    out.put("train_rows", rows)
    out.put("fit_seconds", seconds)
    out.put("epoch_samples_per_s", rows / seconds)
    t = time.perf_counter()
    [metrics] = trainer.test(module, datamodule=dm, verbose=False)
    out.put("test_seconds", time.perf_counter() - t)
    out.put(
        "test", {k: v for k, v in metrics.items() if "/auc/" in k or "/gauc/" in k or "/xauc/" in k}
    )
    if device.type == "cuda":
        out.put("peak_memory_gib", _gib(torch.cuda.max_memory_allocated(device)))


class StepTimer:
    """Seconds and rows of the training steps after `warm`, synchronized at both ends only."""

    def __init__(self, device, warm: int, last: int) -> None:
        import pytorch_lightning as pl

        timer = self

        class _Callback(pl.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if trainer.global_step == warm:
                    _sync(device)
                    timer.t0 = time.perf_counter()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if trainer.global_step > warm:
                    timer.steps += 1
                if trainer.global_step == last:
                    _sync(device)
                    timer.t1 = time.perf_counter()

        self.callback = _Callback()
        self.t0 = self.t1 = 0.0
        self.steps = 0


def _resampled(columns: dict, rows: int, device, seed: int = 0) -> dict:
    """`rows` rows drawn with replacement from `columns`, built on `device` column by column."""
    import torch

    n = len(columns["labels"]["click"])
    g = torch.Generator(device=device).manual_seed(seed)
    idx = torch.randint(0, n, (rows,), device=device, generator=g)
    out = {}
    for group, tensors in columns.items():
        out[group] = {}
        for name, t in tensors.items():
            out[group][name] = t.to(device).index_select(0, idx)
    return out


MATMULS = ("mm", "addmm", "bmm", "baddbmm", "addbmm")


def _matmul_flops(name: str, shapes: list) -> int:
    a, b = shapes[-2], shapes[-1]
    if name in ("mm", "addmm"):
        return 2 * a[0] * a[1] * b[1]
    return 2 * a[0] * a[1] * a[2] * b[2]


def _capture_step(module, batch, device) -> list[tuple[str, list, Any]]:
    """The matrix products of one bf16 training step (forward and backward), as dispatched."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    ops: list = []

    class Capture(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.overloadpacket.__name__
            if name in MATMULS:
                tensors = [a for a in args if isinstance(a, torch.Tensor)]
                ops.append((name, [tuple(t.shape) for t in tensors], tensors[-1].dtype))
            return out

    module.train()
    with Capture():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss, _ = module._loss(module(batch["features"]), batch["labels"], batch["meta"])
        loss.backward()
    module.zero_grad(set_to_none=True)
    return ops


def _counted_flops(module, batch, device) -> int:
    """FLOPs of one bf16 training step (forward and backward) by torch's `FlopCounterMode`,
    `addbmm` included (benchmarks/_common registers it)."""
    import _common  # noqa: F401 (registers addbmm's formula)
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    module.train()
    counter = FlopCounterMode(display=False)
    with counter:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss, _ = module._loss(module(batch["features"]), batch["labels"], batch["meta"])
        loss.backward()
    module.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def _bare_products(ops: list, device) -> tuple[float, int]:
    """Seconds per pass of the captured products replayed alone, and their FLOPs."""
    import torch

    g = torch.Generator(device=device).manual_seed(1)
    calls, flops = [], 0
    for name, shapes, dtype in ops:
        tensors = [torch.randn(s, device=device, dtype=dtype, generator=g) for s in shapes]
        fn = getattr(torch.ops.aten, name).default
        calls.append((fn, tensors))
        flops += _matmul_flops(name, shapes)

    def run():
        for fn, tensors in calls:
            fn(*tensors)

    return _median_seconds(run, device, warm=3, reps=20), flops


def stage_train(cfg: dict, out: Results, work: Path, device) -> None:
    import pytorch_lightning as pl
    import torch

    from recolab.data.columnar import ColumnarBatches
    from recolab.data.device import columns_nbytes
    from recolab.data.resumable import ResumableLoader

    base = _world_module(cfg, work, cfg["base"], device_resident=False)
    out.put("base_impressions", cfg["base"])
    schema = base.schema
    runs = []
    columns = None
    for impressions, batch_sizes in cfg["sizes"].items():
        rows = int(0.8 * impressions)
        columns = None  # the last size's columns freed before this size's are built
        if device.type == "cuda":
            torch.cuda.empty_cache()
        t = time.perf_counter()
        columns = _resampled(base.data["train"], rows, device)
        _sync(device)
        build = time.perf_counter() - t
        for batch in batch_sizes:

            class Data(pl.LightningDataModule):
                def train_dataloader(self, columns=columns, batch=batch):
                    ds = ColumnarBatches(columns, batch_size=batch, shuffle=True, seed=0)
                    return ResumableLoader(ds, seed=0)

            module = _module(schema)
            last = cfg["warm"] + cfg["steps"]
            timer = StepTimer(device, cfg["warm"], last)
            trainer = _trainer(
                device,
                precision="bf16-mixed",
                max_steps=last,
                limit_val_batches=0,
                callbacks=[timer.callback],
            )
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            trainer.fit(module, datamodule=Data())
            samples_per_s = timer.steps * batch / (timer.t1 - timer.t0)
            peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
            # one batch, copied: a view would keep this size's columns alive into the next size
            one = {k: {n: t[:batch].clone() for n, t in v.items()} for k, v in columns.items()}
            module.to(device)
            ops = _capture_step(module, one, device)
            bare_s, flops = _bare_products(ops, device)
            counted = _counted_flops(module, one, device)
            run = {
                "impressions": impressions,
                "train_rows": rows,
                "columns_gib": _gib(columns_nbytes(columns)),
                "resample_seconds": build,
                "batch": batch,
                "steps_timed": timer.steps,
                "samples_per_s": samples_per_s,
                "step_flops": counted,
                "step_flops_per_s": counted * samples_per_s / batch,
                "captured_products_flops": flops,
                "matmuls_per_step": len(ops),
                "bare_products_flops_per_s": flops / bare_s,
                "peak_memory_gib": _gib(peak),
            }
            runs.append(run)
            out.put("runs", runs)
            del trainer, module, one, Data


def stage_ddp(cfg: dict, out: Results, work: Path, device) -> None:
    import torch.distributed as dist

    dm = _world_module(
        cfg,
        work,
        cfg["world"],
        batch_size=8192 if device.type == "cuda" else 256,
        eval_batch_size=65536,
    )
    module = _module(dm.schema)
    trainer = _trainer(
        device,
        strategy="ddp",
        precision="bf16-mixed",
        max_steps=cfg["ddp_steps"],
        limit_val_batches=2,
    )
    t = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    out.put("fit_seconds", time.perf_counter() - t)
    out.put("strategy", type(trainer.strategy).__name__)
    out.put("world_size", trainer.world_size)
    out.put("backend", dist.get_backend() if dist.is_initialized() else "none")
    out.put("steps", trainer.global_step)
    [metrics] = trainer.test(module, datamodule=dm, verbose=False)
    out.put("test_auc_click", metrics.get("test/auc/click"))
    out.put("ok", trainer.global_step == cfg["ddp_steps"])


def stage_retrieval(cfg: dict, out: Results, work: Path, device) -> None:
    import torch

    from recolab.index import csr_from_pairs, exact_topk, recall_against_exact

    g = torch.Generator().manual_seed(0)
    num_items, num_users, dim, k = cfg["items"], cfg["users"], cfg["dim"], 100
    items = torch.randn(num_items + 1, dim, generator=g).to(device)
    users = torch.randn(num_users, dim, generator=g).to(device)
    rows = torch.arange(num_users).repeat_interleave(cfg["seen"])
    seen = torch.randint(1, num_items + 1, (len(rows),), generator=g)
    exclude = tuple(t.to(device) for t in csr_from_pairs(rows, seen, num_rows=num_users))
    out.put(
        "shape",
        {"items": num_items, "users": num_users, "dim": dim, "k": k, "seen_per_user": cfg["seen"]},
    )
    exact_s = _median_seconds(
        lambda: exact_topk(users, items, k=k, exclude=exclude), device, warm=1, reps=3
    )
    out.put("exact_topk_seconds", exact_s)
    from recolab.index.exact import GPU_BLOCK_SCORES

    block = 1024 if device.type == "cpu" else max(1, GPU_BLOCK_SCORES // items.shape[0])

    def bare():
        for s in range(0, num_users, block):
            torch.topk(users[s : s + block] @ items.T, k, dim=1)

    bare_s = _median_seconds(bare, device, warm=1, reps=3)
    out.put("bare_matmul_topk_seconds", bare_s)
    out.put("users_per_s", num_users / exact_s)
    _, exact_ids = exact_topk(users, items, k=k, exclude=exclude)
    try:
        import faiss  # noqa: F401

        from recolab.index import FaissIndex
    except ImportError as e:
        out.put("faiss", f"not installed ({e})")
        return
    nlist = cfg[
        "nlist"
    ]  # k-means on the CPU where faiss has no GPU: kept small enough to train in seconds
    t = time.perf_counter()
    index = FaissIndex(kind="ivf", nlist=nlist, nprobe=32, use_gpu=True).build(items)
    out.put("faiss_build_seconds", time.perf_counter() - t)
    out.put("faiss_on_gpu", index.on_gpu)
    q = users if index.on_gpu else users[: min(num_users, 8192)]
    ex = (
        exclude
        if index.on_gpu
        else csr_from_pairs(
            rows[: len(q) * cfg["seen"]], seen[: len(q) * cfg["seen"]], num_rows=len(q)
        )
    )
    t = time.perf_counter()
    _, ids = index.search(q, k, exclude=ex)
    out.put("faiss_search_seconds", time.perf_counter() - t)
    out.put("faiss_queries", len(q))
    out.put("faiss_ivf", {"nlist": nlist, "nprobe": 32})
    out.put("faiss_recall_at_100", recall_against_exact(ids, exact_ids[: len(q)].cpu()))


def stage_metrics(cfg: dict, out: Results, work: Path, device) -> None:
    import numpy as np
    import torch

    from recolab import metrics as M
    from recolab.metrics import device as D

    results = []
    for n in cfg["metric_rows"]:
        rng = np.random.default_rng(0)
        y = rng.integers(0, 2, n).astype(np.float32)
        s = rng.random(n).astype(np.float32)  # float32 scores: ties as a model's
        t = np.round(rng.exponential(20, n)).astype(np.float32)
        g = rng.integers(0, max(1, n // 40), n)
        on = {k: torch.from_numpy(v).to(device) for k, v in dict(y=y, s=s, t=t, g=g).items()}
        calls = {
            "auc": ((D.auc, on["y"], on["s"]), (M.auc, y, s)),
            "gauc": ((D.gauc, on["y"], on["s"], on["g"]), (M.gauc, y, s, g)),
            "xauc": ((D.xauc, on["t"], on["s"]), (M.xauc, t, s)),
            "xgauc": ((D.xgauc, on["t"], on["s"], on["g"]), (M.xgauc, t, s, g)),
        }
        for name, ((dev_fn, *dev_args), (np_fn, *np_args)) in calls.items():
            dev_fn(*dev_args)  # warm-up
            _sync(device)
            t0 = time.perf_counter()
            value = dev_fn(*dev_args)
            _sync(device)
            row = {"rows": n, "metric": name, "device_seconds": time.perf_counter() - t0}
            if n <= cfg["numpy_rows"]:
                t0 = time.perf_counter()
                ref = np_fn(*np_args)
                row["numpy_seconds"] = time.perf_counter() - t0
                row["equal"] = value == ref
            results.append(row)
            out.put("runs", results)


def stage_rechub(cfg: dict, out: Results, work: Path, device) -> None:
    import numpy as np
    import torch

    try:
        import torch_rechub
        from torch.utils.data import DataLoader, RandomSampler
        from torch_rechub.basic.features import DenseFeature, SequenceFeature, SparseFeature
        from torch_rechub.models.multi_task import MMOE as RechubMMoE
        from torch_rechub.trainers import MTLTrainer
        from torch_rechub.utils.data import DataGenerator
    except ImportError as e:
        out.put("installed", False)
        out.put("why", str(e))
        return
    out.put("installed", True)
    out.put("version", getattr(torch_rechub, "__version__", "?"))
    dm = _world_module(cfg, work, cfg["base"], device_resident=False)
    schema, train = dm.schema, dm.data["train"]
    dim = EMBEDDING["embedding_dim"]
    features = [
        SparseFeature(f.name, vocab_size=f.vocab_size, embed_dim=dim) for f in schema.sparse
    ]
    features += [
        SequenceFeature(
            f.name,
            vocab_size=f.vocab_size,
            embed_dim=dim,
            pooling="mean",
            shared_with=f.vocab_of,
            padding_idx=0,
        )
        for f in schema.sequences
    ]
    features += [DenseFeature(f.name) for f in schema.dense]
    x = {f.name: train["features"][f.name].numpy() for f in features}
    y = np.stack(
        [
            train["labels"][t.name].numpy()
            if t.kind == "binary"
            else np.log1p(train["labels"][t.name].numpy())
            for t in schema.tasks
        ],
        axis=1,
    )
    task_types = ["classification" if t.kind == "binary" else "regression" for t in schema.tasks]
    dg = DataGenerator(x, y)
    runs = []
    for batch, steps in cfg["rechub_batches"].items():
        torch.manual_seed(0)
        model = RechubMMoE(
            features,
            task_types,
            n_expert=MMOE["num_experts"],
            expert_params={"dims": MMOE["expert_dims"]},
            tower_params_list=[{"dims": MMOE["tower_dims"]} for _ in task_types],
        )
        with tempfile.TemporaryDirectory() as tmp:
            trainer = MTLTrainer(
                model,
                task_types=task_types,
                optimizer_params={"lr": 1e-3, "weight_decay": 0.0},
                n_epoch=1,
                earlystop_patience=2,
                device=str(device),
                model_path=tmp,
            )
            warm = DataLoader(
                dg.dataset, batch_size=batch, sampler=RandomSampler(dg.dataset, num_samples=batch)
            )
            trainer.train_one_epoch(warm)
            loader = DataLoader(
                dg.dataset,
                batch_size=batch,
                sampler=RandomSampler(dg.dataset, num_samples=steps * batch),
            )
            _sync(device)
            t = time.perf_counter()
            trainer.train_one_epoch(loader)
            _sync(device)
            seconds = time.perf_counter() - t
        runs.append({"batch": batch, "steps": steps, "samples_per_s": steps * batch / seconds})
        out.put("runs", runs)


# --- the report ---------------------------------------------------------------------------------


def _fmt(x: Any, unit: str = "") -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        for scale, suffix in ((1e12, " T"), (1e9, " G"), (1e6, " M"), (1e3, " k")):
            if abs(x) >= scale:
                return f"{x / scale:.2f}{suffix}{unit}"
        return f"{x:.3g}{(' ' + unit) if unit else ''}"
    return f"{x}{(' ' + unit) if unit else ''}"


def render(work: Path, status: dict[str, str], dry: bool, total_s: float) -> str:
    def load(name: str) -> dict:
        p = work / f"{name}.json"
        return json.loads(p.read_text()) if p.exists() else {}

    env, world, train, ddp = load("env"), load("world"), load("train"), load("ddp")
    retr, mets, rechub = load("retrieval"), load("metrics"), load("rechub")
    peak = env.get("bf16_matmul_flops")
    lines = []
    if dry:
        lines += [
            "**Dry run** (`--dry-run`): tiny sizes on this machine's device; the figures only",
            "show that every stage runs, they measure nothing.",
            "",
        ]
    lines += [
        f"- device: {env.get('name', '?')} ({env.get('device', '?')}, capability "
        f"{env.get('capability', '—')}, {env.get('multiprocessors', '—')} multiprocessors, memory "
        f"{env.get('memory_gib', '—')} GiB); torch {env.get('torch', '?')}, CUDA {env.get('cuda', '—')}",
        f"- nvidia-smi: {env.get('nvidia_smi', '—')}",
        f"- ceilings measured: bf16 matrix product {env.get('bf16_matmul_shape', '?')}^3 "
        f"{_fmt(peak, 'FLOP/s')} (datasheet dense bf16: {_fmt(H200_BF16_DATASHEET, 'FLOP/s')}); "
        f"device-to-device copy {_fmt(env.get('copy_bytes_per_s'), 'B/s')}",
        f"- wall time of the stages: {total_s:.0f} s; stage status: "
        + ", ".join(f"{k} {v}" for k, v in status.items()),
        "",
        "## Goals",
        "",
        "| goal | measured | met |",
        "|---|---|---|",
    ]
    runs = train.get("runs", [])
    big = [r for r in runs if r["impressions"] == max((r["impressions"] for r in runs), default=0)]
    best_big = max(big, key=lambda r: r["samples_per_s"], default=None)
    if best_big:
        v = best_big["samples_per_s"]
        lines.append(
            f"| MMoE at {best_big['impressions']:,} impressions >= 5M samples/s | "
            f"{_fmt(v, 'samples/s')} (batch {best_big['batch']}) | {'yes' if v >= 5e6 else 'no'} |"
        )
    else:
        lines.append("| MMoE at 100M impressions >= 5M samples/s | not measured | — |")
    rh = {r["batch"]: r["samples_per_s"] for r in rechub.get("runs", [])}
    small = [
        r for r in runs if r["impressions"] == min((r["impressions"] for r in runs), default=0)
    ]
    ratios = [(b, r["samples_per_s"] / rh[b]) for r in small for b in [r["batch"]] if b in rh]
    if ratios:
        text = ", ".join(f"{x:.1f}x at batch {b}" for b, x in ratios)
        lines.append(
            f"| >= 10x torch-rechub's MMoE on the same GPU | {text} | "
            f"{'yes' if min(x for _, x in ratios) >= 10 else 'no'} |"
        )
    else:
        why = rechub.get("why", "not measured")
        lines.append(f"| >= 10x torch-rechub's MMoE on the same GPU | {why} | — |")
    if best_big:
        share = best_big["step_flops_per_s"] / best_big["bare_products_flops_per_s"]
        lines.append(
            f"| training step >= 30% of the same products in a bare loop | "
            f"{share:.0%} (batch {best_big['batch']}) | {'yes' if share >= 0.3 else 'no'} |"
        )
    lines += ["", "## The real pipeline: synthetic world, MMoE, one epoch in bf16-mixed", ""]
    if world:
        lines += [
            f"{world.get('impressions', 0):,} impressions ({world.get('train_rows', '?')} training rows); "
            f"data module set-up {world.get('setup_seconds', 0):.1f} s; training split on the device: "
            f"{world.get('device_resident')}; fit {world.get('fit_seconds', 0):.1f} s "
            f"({_fmt(world.get('epoch_samples_per_s'), 'samples/s')} over the epoch, start-up included); "
            f"test {world.get('test_seconds', 0):.1f} s; peak GPU memory {world.get('peak_memory_gib', '—')} GiB.",
            "",
            "| metric | value |",
            "|---|---:|",
            *[f"| {k} | {v:.4f} |" for k, v in sorted(world.get("test", {}).items())],
        ]
    lines += [
        "",
        "## MMoE training throughput (bf16-mixed, device-resident batches)",
        "",
        "| impressions | batch | samples/s | step FLOPs | achieved FLOP/s | share of the bf16 ceiling "
        "| the same products, bare loop | step / bare | peak memory | columns |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r['impressions']:,} | {r['batch']} | {_fmt(r['samples_per_s'])} | "
            f"{_fmt(float(r['step_flops']))} | {_fmt(r['step_flops_per_s'], 'FLOP/s')} | "
            f"{(r['step_flops_per_s'] / peak if peak else float('nan')):.2%} | "
            f"{_fmt(r['bare_products_flops_per_s'], 'FLOP/s')} | "
            f"{r['step_flops_per_s'] / r['bare_products_flops_per_s']:.0%} | "
            f"{r['peak_memory_gib']} GiB | {r['columns_gib']} GiB |"
        )
    lines += [
        "",
        f"Columns: rows of a {train.get('base_impressions', 0):,}-impression world resampled "
        "on the device to 80% of the impressions (the training split); "
        f"{FULL['warm'] if not dry else DRY['warm']} warm-up steps, then "
        f"{FULL['steps'] if not dry else DRY['steps']} timed steps (synchronized at both ends). "
        "Step FLOPs: torch's FlopCounterMode over one step (forward and backward); the bare loop "
        "replays the matrix products captured at dispatch in that step (same shapes, bf16, random "
        "data) with nothing between them; step / bare compares the two rates.",
        "",
        "## DDP on the one GPU (smoke test)",
        "",
    ]
    if ddp:
        lines.append(
            f"{ddp.get('strategy')} over {ddp.get('world_size')} process, backend "
            f"{ddp.get('backend')}: {ddp.get('steps')} steps in {ddp.get('fit_seconds', 0):.1f} s, "
            f"gathered test AUC (click) {ddp.get('test_auc_click')}; ok: {ddp.get('ok')}."
        )
    lines += ["", "## Retrieval evaluation", ""]
    if retr:
        sh = retr.get("shape", {})
        lines += [
            f"{sh.get('users', 0):,} users x {sh.get('items', 0):,} items, dim {sh.get('dim')}, top "
            f"{sh.get('k')}, {sh.get('seen_per_user')} seen items excluded per user.",
            "",
            "| search | seconds |",
            "|---|---:|",
            f"| recolab `exact_topk` (seen items excluded) | {retr.get('exact_topk_seconds', 0):.4f} |",
            f"| bare matrix product + `topk`, same blocks | {retr.get('bare_matmul_topk_seconds', 0):.4f} |",
        ]
        if "faiss_recall_at_100" in retr:
            where = "GPU" if retr.get("faiss_on_gpu") else "CPU (faiss without GPU support)"
            lines.append(
                f"| faiss IVF {retr.get('faiss_ivf')} on the {where}, {retr.get('faiss_queries')} "
                f"queries | {retr.get('faiss_search_seconds', 0):.4f} |"
            )
            lines += [
                "",
                f"faiss IVF recall@100 against the exact top-100: "
                f"{retr['faiss_recall_at_100']:.4f} (on the {where}).",
            ]
        else:
            lines += ["", f"faiss: {retr.get('faiss', 'not measured')}."]
    lines += [
        "",
        "## Exact metrics on the device against numpy",
        "",
        "| rows | metric | device s | numpy s | equal |",
        "|---:|---|---:|---:|---|",
    ]
    for r in mets.get("runs", []):
        lines.append(
            f"| {r['rows']:,} | {r['metric']} | {r['device_seconds']:.3f} | "
            f"{r.get('numpy_seconds', float('nan')):.3f} | {r.get('equal', '—')} |"
        )
    lines += ["", "## torch-rechub's MMoE on the same device", ""]
    if rechub.get("runs"):
        lines += [
            "| batch | steps | samples/s |",
            "|---:|---:|---:|",
            *[
                f"| {r['batch']} | {r['steps']} | {_fmt(r['samples_per_s'])} |"
                for r in rechub["runs"]
            ],
            "",
            f"torch-rechub {rechub.get('version')}: its MTLTrainer and per-sample DataLoader, "
            "float32; rows of the same world.",
        ]
    else:
        lines.append(f"Not measured: {rechub.get('why', status.get('rechub', '?'))}.")
    return "\n".join(lines) + "\n"


# --- driver ---------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "bench" / "gpu.md"))
    ap.add_argument("--work", default=None, help="folder for the stages' JSON (a temporary one)")
    ap.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--budget-scale", type=float, default=1.0)
    ap.add_argument("--only", nargs="*", default=None, help="run these stages only")
    args = ap.parse_args()
    cfg = DRY if args.dry_run else FULL
    if args.stage:
        work = Path(args.work)
        device = _device(args.dry_run)
        globals()[f"stage_{args.stage}"](cfg, Results(work / f"{args.stage}.json"), work, device)
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="recolab-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    status, logs, start = {}, {}, time.perf_counter()
    for name, budget in STAGES.items():
        if args.only and name not in args.only:
            continue
        budget = budget * args.budget_scale * (2.0 if args.dry_run else 1.0)  # dry: a busy CPU
        t = time.perf_counter()
        cmd = [sys.executable, __file__, "--stage", name, "--work", str(work)]
        cmd += ["--dry-run"] if args.dry_run else []
        print(f"== {name} (budget {budget:.0f} s)", flush=True)
        try:
            proc = subprocess.run(cmd, timeout=budget, capture_output=True, text=True)
            state = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
            if proc.returncode:
                tail = (proc.stderr or "")[-1500:]
                print(tail, flush=True)
                logs[name] = (proc.stdout + proc.stderr)[-6000:]
        except subprocess.TimeoutExpired:
            state = f"stopped at its {budget:.0f} s budget"
        status[name] = f"{state} ({time.perf_counter() - t:.0f} s)"
        print(f"   {status[name]}", flush=True)
    report = render(work, status, args.dry_run, time.perf_counter() - start)
    title = "GPU check: recolab's GPU path measured" + (" (dry run)" if args.dry_run else "")
    from _common import machine

    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = (
        f"# {title}\n\n- machine: {machine()}\n- command: `bash benchmarks/gpu_check.sh"
        f"{' --dry-run' if args.dry_run else ''}`\n- date: {stamp}\n\n{report}"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    # Every figure, the stages' status and the failed stages' output, beside the report.
    figures = {p.stem: json.loads(p.read_text()) for p in sorted(work.glob("*.json"))}
    out.with_suffix(".json").write_text(
        json.dumps({"status": status, "figures": figures, "logs": logs}, indent=1, default=str)
    )
    print(text)
    if any(not s.startswith("ok") for s in status.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
