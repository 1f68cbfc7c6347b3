"""Speed options run on a CPU-only machine: bf16 mixed precision, `compile=true`, sparse embedding
gradients with Adagrad, optimizer settings, and the GPU-only paths falling back to CPU.
Whether they are faster is measured in benchmarks/bench_speed.py, never asserted here."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from torch import nn

from recolab.config_validation import ConfigError
from recolab.data.synthetic_video import SyntheticVideoDataModule
from recolab.models.blocks import FeatureEmbedding
from recolab.models.rank.mmoe import MMoE
from recolab.pipelines.rank import RankModule
from recolab.train import train
from tests.conftest import TINY_WORLD, compose_train
from tests.unit.models.rank.helpers import SCHEMA, tiny_batch

FEW_STEPS = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=1",
    "logger=none",
]


def _train(tmp_path: Path, data_cache: Path, overrides: list[str]) -> dict[str, float]:
    cfg = compose_train(
        tmp_path, ["+exp=mmoe", *TINY_WORLD, *FEW_STEPS, *overrides], data_dir=data_cache
    )
    metrics = train(cfg)
    assert metrics and all(
        math.isfinite(v) for k, v in metrics.items() if "/auc/" in k or k.endswith("test/loss")
    )
    return metrics


def test_bf16_mixed_precision_trains_on_cpu_as_float32_does(tmp_path, data_cache):
    # Five epochs from the same seed: bf16 matrix products (float32 weights, Adam, loss and
    # evaluation) end where float32 training ends, to within what bf16's rounding moves.
    epochs = ["trainer.max_epochs=5", "trainer.limit_train_batches=1.0"]
    runs = {
        p: _train(tmp_path / p, data_cache, [f"trainer.precision={p}", *epochs])
        for p in ("32-true", "bf16-mixed")
    }
    ours, exact = runs["bf16-mixed"], runs["32-true"]
    for task in ("click", "like"):
        assert exact[f"test/auc/{task}"] > 0.55, exact  # float32 training learned something
        assert abs(ours[f"test/auc/{task}"] - exact[f"test/auc/{task}"]) < 0.01, (task, ours)
        assert ours[f"test/logloss/{task}"] == pytest.approx(
            exact[f"test/logloss/{task}"], rel=0.01
        )


def test_optimizer_settings_reach_the_torch_optimizer(tmp_path, data_cache):
    _train(
        tmp_path,
        data_cache,
        ["module.optimizer._target_=torch.optim.Adagrad", "+module.optimizer.foreach=true"],
    )


@pytest.mark.slow  # torch.compile's first compilation takes about a minute on 2 cores
def test_compile_switch_trains_and_keeps_plain_checkpoint_keys(tmp_path, data_cache):
    _train(tmp_path, data_cache, ["compile=true"])
    ckpt = torch.load(next((tmp_path / "out" / "checkpoints").glob("last.ckpt")), weights_only=True)
    assert not any("_orig_mod" in k for k in ckpt["state_dict"]), (
        "compiled in place: the keys stay the model's"
    )


@pytest.fixture()
def tiny(data_cache) -> SyntheticVideoDataModule:
    dm = SyntheticVideoDataModule(
        cache_dir=str(data_cache),
        num_users=300,
        num_items=200,
        num_impressions=6000,
        batch_size=256,
        sparse=["user_id", "item_id"],
        dense=["log_duration"],
        sequences={"hist_items": {"max_len": 20, "vocab_of": "item_id"}},
        tasks=[{"name": "click"}],
        meta=["user_id"],
        drop_bad_rows=True,  # slates may repeat an item
    )
    dm.setup()
    return dm


def test_sparse_embeddings_give_sparse_gradients_and_train_with_adagrad(tiny):
    model = MMoE(
        tiny.schema,
        embedding=partial(FeatureEmbedding, embedding_dim=8),
        num_experts=2,
        expert_dims=[16],
        tower_dims=[8],
    )
    model.embed = FeatureEmbedding(tiny.schema, embedding_dim=8, sparse=True)
    batch = tiny.train_dataloader().dataset[0]
    model(batch["features"])["click"].sum().backward()
    assert all(t.weight.grad.is_sparse for t in model.embed.tables.values())
    with pytest.raises(ValueError, match="module.optimizer._target_=torch.optim.Adagrad"):
        RankModule(model, tiny.schema).configure_optimizers()
    before = model.embed.tables["item_id"].weight.detach().clone()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        use_distributed_sampler=False,
    )
    trainer.fit(RankModule(model, tiny.schema, optimizer=torch.optim.Adagrad), datamodule=tiny)
    assert not torch.equal(before, model.embed.tables["item_id"].weight)


def test_unknown_optimizer_is_named(tiny):
    with pytest.raises(ValueError, match="optimizer='sgd': expected a torch optimizer node"):
        RankModule(nn.Linear(1, 1), tiny.schema, optimizer="sgd")


def test_gpu_paths_fall_back_to_cpu(tiny):
    """`data.pin_memory=auto` pins only when training on a GPU; faiss's `use_gpu` needs the `gpu` extra."""
    trainer = pl.Trainer(accelerator="cpu", logger=False, use_distributed_sampler=False)
    tiny.trainer = trainer
    assert tiny.train_dataloader().pin_memory is False


@pytest.mark.parametrize("exp", ["mmoe", "shared_bottom", "cgc", "ple", "single_task"])
def test_sparse_embeddings_from_the_config(tmp_path, data_cache, exp):
    overrides = [f"+exp={exp}", *TINY_WORLD, *FEW_STEPS, "model.embedding.sparse=true"]
    with pytest.raises(ConfigError, match=r"model.embedding.sparse=true: Adam does not take"):
        train(compose_train(tmp_path, overrides, data_dir=data_cache))
    cfg = compose_train(
        tmp_path, [*overrides, "module.optimizer._target_=torch.optim.Adagrad"], data_dir=data_cache
    )
    assert train(cfg)
    model = instantiate(cfg.model, _partial_=True)(schema=SCHEMA)
    out = model(tiny_batch())
    sum(v.sum() for v in out.values()).backward()
    tables = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    assert tables and all(t.weight.grad.is_sparse for t in tables)
