"""The GPU path on a GPU: the training split on the device (coverage, determinism, resume), the
exact metrics computed there, exact top-k and faiss-gpu against it, and a bf16 training run.

Marked `gpu`; skipped without CUDA (see conftest.py). Their CPU twins are in tests/unit.
"""

from __future__ import annotations

from collections import Counter
from functools import partial

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from recolab import metrics as M
from recolab.data.columnar import ColumnarBatches
from recolab.index import FaissIndex, csr_from_pairs, exact_topk, recall_against_exact
from recolab.metrics import device as D
from recolab.models.blocks import FeatureEmbedding
from recolab.models.rank.mmoe import MMoE
from recolab.pipelines.rank import RankModule
from tests.unit.data.test_datamodule import _dm, _write

pytestmark = pytest.mark.gpu


def _columns(n: int, dev: torch.device) -> dict:
    return {
        "features": {
            "x": torch.arange(n, device=dev),
            "h": torch.arange(2 * n, device=dev).view(n, 2),
        },
        "labels": {"y": torch.arange(n, device=dev, dtype=torch.float32)},
    }


def test_device_batches_cover_the_rows_once_an_epoch_and_repeat_for_a_seed(dev):
    n, world, batch = 100_003, 2, 4096
    for epoch in (0, 1):
        shards = []
        for rank in range(world):
            ds = ColumnarBatches(
                _columns(n, dev),
                batch_size=batch,
                shuffle=True,
                seed=5,
                rank=rank,
                world_size=world,
            )
            ds.set_epoch(epoch)
            assert ds.rows.device.type == dev.type
            got = torch.cat([ds[i]["features"]["x"] for i in range(len(ds))])
            assert got.device.type == dev.type and len(got) == n // world
            # every column sliced with the same rows
            assert torch.equal(ds[1]["features"]["h"][:, 0], 2 * ds[1]["features"]["x"])
            shards.append(got.cpu())
            again = ColumnarBatches(
                _columns(n, dev),
                batch_size=batch,
                shuffle=True,
                seed=5,
                rank=rank,
                world_size=world,
            )
            again.set_epoch(epoch)
            assert torch.equal(again.rows, ds.rows)  # the same seed and epoch: the same order
        seen = Counter(torch.cat(shards).tolist())
        assert max(seen.values()) == 1 and len(seen) == n - n % world
        if epoch == 0:
            first = shards[0]
    assert not torch.equal(first, shards[0])  # another epoch, another order


def _trainer(dev: torch.device, **kw) -> pl.Trainer:
    return pl.Trainer(
        accelerator="gpu" if dev.type == "cuda" else "cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        **kw,
    )


def test_the_split_moves_once_auto_on_a_gpu_and_resumes_mid_epoch(tmp_path, dev):
    path = _write(tmp_path, n=3000)
    dm = _dm(path, device_resident="auto")
    dm.setup()
    dm.trainer = _trainer(dev)
    loader = dm.train_dataloader()
    assert (dm._on_device is not None) == (dev.type == "cuda")  # auto: on a GPU only
    assert not loader.pin_memory or dev.type == "cpu"
    dm = _dm(path, device_resident=True)
    dm.setup()
    dm.trainer = _trainer(dev)
    loader = dm.train_dataloader()
    assert loader.dataset.device.type == dev.type
    loader.sampler.set_epoch(2)
    it = iter(loader)
    taken = [next(it)["features"]["item_id"] for _ in range(40)]
    state = loader.state_dict()
    loader.sampler.set_epoch(2)
    reference = [b["features"]["item_id"] for b in loader]

    resumed_dm = _dm(path, device_resident=True)
    resumed_dm.setup()
    resumed_dm.trainer = _trainer(dev)
    resumed = resumed_dm.train_dataloader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(2)
    rest = [b["features"]["item_id"] for b in resumed]
    assert len(taken) + len(rest) == len(reference) == 150
    assert all(torch.equal(a, b) for a, b in zip(taken + rest, reference))


@pytest.mark.parametrize("ties", [False, True])
def test_metrics_on_the_device_equal_numpy(dev, ties):
    rng = np.random.default_rng(7)
    n = 200_000
    y = rng.integers(0, 2, n)
    s = rng.normal(size=n).astype(np.float32)
    if ties:
        s = np.round(s, 2)
    t = np.round(rng.exponential(10, n))
    g = rng.integers(0, 5000, n)
    on = {k: torch.from_numpy(v).to(dev) for k, v in dict(y=y, s=s, t=t, g=g).items()}
    assert D.auc(on["y"], on["s"]) == M.auc(y, s)
    assert D.xauc(on["t"], on["s"]) == M.xauc(t, s)
    a, b = D.gauc_details(on["y"], on["s"], on["g"]), M.gauc_details(y, s, g)
    assert a.value == b.value and a.num_groups_left_out == b.num_groups_left_out
    np.testing.assert_array_equal(a.per_group.values, b.per_group.values)
    a, b = D.xgauc_details(on["t"], on["s"], on["g"]), M.xgauc_details(t, s, g)
    assert a.value == b.value and a.rows_left_out == b.rows_left_out
    assert D.logloss(on["y"], torch.sigmoid(on["s"])) == pytest.approx(
        M.logloss(y, torch.sigmoid(torch.from_numpy(s)).numpy()), rel=1e-9
    )


def _retrieval(dev, num_items=20_000, num_users=2_000, dim=32):
    g = torch.Generator().manual_seed(3)
    items = torch.randn(num_items + 1, dim, generator=g)
    users = torch.randn(num_users, dim, generator=g)
    rows = torch.randint(0, num_users, (40 * num_users,), generator=g)
    seen = torch.randint(1, num_items + 1, (40 * num_users,), generator=g)
    rows[:3000], seen[:3000] = 0, torch.arange(1, 3001)  # user 0 has seen 3000 items
    return items, users, csr_from_pairs(rows, seen, num_rows=num_users)


def test_exact_topk_on_the_device_matches_the_cpu(dev):
    items, users, exclude = _retrieval(dev)
    cpu_scores, cpu_ids = exact_topk(users, items, k=100, exclude=exclude)
    scores, ids = exact_topk(users.to(dev), items.to(dev), k=100, exclude=exclude)
    assert ids.device.type == dev.type
    torch.testing.assert_close(scores.cpu(), cpu_scores, rtol=1e-4, atol=1e-4)
    same = (ids.cpu() == cpu_ids).float().mean().item()
    assert same > 0.999  # only near-tied scores may swap


def test_faiss_gpu_recall_against_exact(dev):
    faiss = pytest.importorskip("faiss")
    if dev.type != "cuda" or not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() == 0:
        pytest.skip("faiss without GPU support (the `gpu` extra)")
    items, users, exclude = _retrieval(dev)
    _, exact = exact_topk(users.to(dev), items.to(dev), k=100, exclude=exclude)
    flat = FaissIndex(kind="flat", use_gpu=True).build(items)
    assert flat.on_gpu
    _, ids = flat.search(users, 100, exclude=exclude)  # user 0 needs more than GPU_MAX_K
    assert recall_against_exact(ids, exact.cpu()) > 0.999
    ivf = FaissIndex(kind="ivf", use_gpu=True, nprobe=32).build(items)
    assert ivf.on_gpu
    _, ids = ivf.search(users, 100, exclude=exclude)
    assert recall_against_exact(ids, exact.cpu()) > 0.8


def test_bf16_training_on_the_device_columns(tmp_path, dev):
    dm = _dm(_write(tmp_path, n=3000), device_resident=True, meta=["user_id"], batch_size=64)
    dm.setup()
    torch.manual_seed(0)
    module = RankModule(
        MMoE(
            dm.schema,
            embedding=partial(FeatureEmbedding, embedding_dim=8),
            num_experts=2,
            expert_dims=[16],
            tower_dims=[8],
        ),
        dm.schema,
    )
    trainer = _trainer(dev, precision="bf16-mixed", max_epochs=1, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 2400 // 64 + 1
    assert trainer.train_dataloader.dataset.device.type == dev.type
    [result] = trainer.test(module, datamodule=dm, verbose=False)
    assert 0.0 <= result["test/auc/click"] <= 1.0 and np.isfinite(result["test/loss"])
