"""Batch normalization of the input features (`model.embedding.batch_norm`): what it computes, every
ranker taking it, and the one batch size it cannot train on."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient
from torch import nn

from recolab.models.blocks import FeatureEmbedding
from recolab.models.rank.cgc import CGC, PLE
from recolab.models.rank.mmoe import MMoE
from recolab.models.rank.shared_bottom import SharedBottom
from recolab.models.rank.single_task import SingleTask
from recolab.train import train
from tests.conftest import TINY_WORLD, compose_train
from tests.unit.models.rank.helpers import SCHEMA, check_model, tiny_batch


def embed4(**kw: bool) -> partial[FeatureEmbedding]:  # the rankers' `model.embedding` node
    return partial(FeatureEmbedding, embedding_dim=4, **kw)


RANKERS = {
    "mmoe": lambda s, **kw: MMoE(s, embedding=embed4(**kw), num_experts=2, expert_dims=[8]),
    "cgc": lambda s, **kw: CGC(s, embedding=embed4(**kw), expert_dims=[8]),
    "ple": lambda s, **kw: PLE(s, embedding=embed4(**kw), expert_dims=[8]),
    "shared_bottom": lambda s, **kw: SharedBottom(s, embedding=embed4(**kw), bottom_dims=[8]),
    "single_task": lambda s, **kw: SingleTask(s, embedding=embed4(**kw), hidden_dims=[8]),
}


def test_features_are_normalized_over_the_batch_as_batchnorm1d_does() -> None:
    torch.manual_seed(0)
    plain = FeatureEmbedding(SCHEMA, embedding_dim=4)
    normed = FeatureEmbedding(SCHEMA, embedding_dim=4, batch_norm=True)
    normed.tables.load_state_dict(plain.tables.state_dict())
    reference = nn.BatchNorm1d(plain.output_dim)
    with torch.no_grad():  # affine parameters away from their (1, 0) start
        for bn in (normed.norm, reference):
            bn.weight.copy_(torch.linspace(0.5, 2.0, plain.output_dim))
            bn.bias.copy_(torch.linspace(-1.0, 1.0, plain.output_dim))
    for seed in range(3):  # training: batch statistics, and the running ones move alike
        batch = tiny_batch(batch=32, seed=seed)
        out = normed(batch)
        torch.testing.assert_close(out, reference(plain(batch)))
        # Each column: mean = its bias, standard deviation = its weight (the batch's biased
        # variance v, with BatchNorm1d's eps: weight * sqrt(v / (v + eps))).
        v = plain(batch).var(0, unbiased=False)
        torch.testing.assert_close(out.mean(0), normed.norm.bias, atol=1e-5, rtol=0)
        torch.testing.assert_close(
            out.std(0, unbiased=False),
            normed.norm.weight * (v / (v + normed.norm.eps)).sqrt(),
            atol=1e-4,
            rtol=1e-4,
        )
    torch.testing.assert_close(normed.norm.running_mean, reference.running_mean)
    torch.testing.assert_close(normed.norm.running_var, reference.running_var)
    normed.eval(), reference.eval()
    batch = tiny_batch(batch=5, seed=9)  # evaluation: the running statistics, row by row
    torch.testing.assert_close(normed(batch), reference(plain(batch)))
    torch.testing.assert_close(normed(batch)[:1], normed({k: v[:1] for k, v in batch.items()}))


@pytest.mark.parametrize("name", sorted(RANKERS))
def test_every_ranker_takes_input_batch_norm(name: str) -> None:
    make = RANKERS[name]
    check_model(lambda s: make(s, batch_norm=True))
    torch.manual_seed(0)
    model = make(SCHEMA, batch_norm=True)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert norms and all(m.num_features == 4 * 3 + 1 for m in norms)  # 3 embeddings + price
    assert not any(isinstance(m, nn.BatchNorm1d) for m in make(SCHEMA).modules())
    # What normalization buys (Ioffe and Szegedy): in training, an input column's scale and
    # offset do not reach the model; without it they do.
    batch = tiny_batch(batch=64)
    moved = {**batch, "price": 10.0 * batch["price"] + 3.0}
    for k, v in model(batch).items():
        torch.testing.assert_close(model(moved)[k], v, atol=1e-4, rtol=1e-4)
    torch.manual_seed(0)
    plain = make(SCHEMA)
    assert any(not torch.allclose(plain(moved)[k], v) for k, v in plain(batch).items())


@pytest.mark.parametrize("data", ["synthetic_video", "synthetic_video_streaming"])
def test_a_one_row_training_batch_is_refused_before_the_first_step(
    tmp_path: Path, data: str
) -> None:
    overrides = [
        "+exp=mmoe",
        f"data={data}",
        *TINY_WORLD,
        "trainer.max_epochs=1",
        "experiment_name=bn",
    ]
    cfg = compose_train(tmp_path, overrides)
    assert cfg.model.embedding.batch_norm  # the synthetic-world experiment normalizes its inputs
    dm = instantiate(cfg.data)
    dm.prepare_data(), dm.setup("fit")
    rows = dm.train_dataloader().dataset.shard_rows
    cfg = compose_train(tmp_path, [*overrides, f"data.batch_size={rows - 1}"])
    with pytest.raises(
        ValueError, match=rf"{rows} rows .* batch of one row at data.batch_size={rows - 1}"
    ):
        train(cfg)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("bn").experiment_id])[0]
    assert run.info.status == "FAILED"
    assert not client.get_metric_history(run.info.run_id, "train/loss")
    # Any other batch size trains.
    cfg = compose_train(
        tmp_path, [*overrides, f"data.batch_size={rows - 2}", "+trainer.limit_val_batches=1"]
    )
    assert "test/auc/click" in train(cfg)
