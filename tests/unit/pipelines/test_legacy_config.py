"""A module config stored before optimizers and samplers were config nodes still builds."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from recolab.checkpoint_config import check_stored_config, problems
from recolab.pipelines.base import Reporting
from recolab.pipelines.legacy import pipeline_settings
from recolab.pipelines.rank import RankModule
from recolab.pipelines.recall import RecallModule
from recolab.resume import CheckpointError
from recolab.samplers import InBatchSoftmax, MixedNegativeSoftmax
from tests.unit.models.rank.helpers import SCHEMA

OLD_RANK = {
    "_target_": "recolab.pipelines.rank.RankModule",
    "lr": 0.01,
    "weight_decay": 0.0,
    "group_key": "user_id",
    "optimizer": "adagrad",
    "optimizer_kwargs": {"lr_decay": 0.5},
    "heads": {},
    "calibration": None,
    "truth": {},
}
OLD_SAMPLER = {
    "_target_": "recolab.pipelines.recall.Sampler",
    "kind": "mixed",
    "temperature": 0.1,
    "similarity": "cosine",
    "logq": True,
    "mask_accidental_hits": True,
    "num_negatives": 8,
    "distribution": "popularity",
    "power": 0.75,
    "alpha": 0.05,
    "num_hashes": 2,
    "num_buckets": None,
}
OLD_RECALL = {
    "_target_": "recolab.pipelines.recall.RecallModule",
    "lr": 0.005,
    "weight_decay": 0.0,
    "ks": [5, 10],
    "index": "exact",
    "index_options": {},
    "baselines": True,
    "seed": 0,
    "sampler": OLD_SAMPLER,
}


def stored(module: dict) -> str:
    return OmegaConf.to_yaml({"exp_name": "old", "seed": 0, "module": module})


def build_module(cfg, **inputs):
    from hydra.utils import instantiate

    return instantiate(cfg.module, _partial_=True)(**inputs)


def test_an_old_rank_config_builds_the_same_optimizer() -> None:
    cfg = check_stored_config(stored(OLD_RANK), "old.ckpt", rebuilt=("module",))
    assert "optimizer_kwargs" not in cfg.module
    assert OmegaConf.to_container(cfg.module.optimizer) == {
        "_target_": "torch.optim.Adagrad",
        "_partial_": True,
        "lr_decay": 0.5,
    }
    module = build_module(cfg, model=torch.nn.Linear(2, 1), schema=SCHEMA)
    opt = module.configure_optimizers()
    assert isinstance(opt, torch.optim.Adagrad)
    assert opt.defaults["lr"] == 0.01 and opt.defaults["lr_decay"] == 0.5


def test_an_old_default_adam_config_stays_fused_adam() -> None:
    old = {**OLD_RANK, "optimizer": "adam", "optimizer_kwargs": None}
    cfg = check_stored_config(stored(old), "old.ckpt", rebuilt=("module",))
    module = build_module(cfg, model=torch.nn.Linear(2, 1), schema=SCHEMA)
    opt = module.configure_optimizers()
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["fused"] is True


def test_an_old_recall_config_builds_its_sampler_and_torchs_default_adam() -> None:
    cfg = check_stored_config(stored(OLD_RECALL), "old.ckpt", rebuilt=("module",))
    assert cfg.module.sampler._target_ == "recolab.samplers.MixedNegativeSoftmax"
    assert "kind" not in cfg.module.sampler
    counts = torch.arange(21)
    module = build_module(
        cfg, model=torch.nn.Linear(2, 1), num_items=20, item_counts=counts, data_summary={}
    )
    s = module.sampler
    assert isinstance(s, MixedNegativeSoftmax) and s.logq and s.num_negatives == 8
    assert (s.temperature, s.similarity, s.distribution) == (0.1, "cosine", "popularity")
    opt = module.configure_optimizers()
    assert isinstance(opt, torch.optim.Adam)
    assert opt.defaults["fused"] is None and opt.defaults["foreach"] is None  # torch's default
    # Its in-batch twin, and what an old checkpoint's state dict holds (`frequency.*`).
    in_batch = pipeline_settings(
        {"module": {**OLD_RECALL, "sampler": {**OLD_SAMPLER, "kind": "in_batch"}}}
    )
    assert in_batch[-1].endswith("recolab.samplers.InBatchSoftmax")


def test_an_old_config_computes_the_metric_sets_its_pipeline_computed_then() -> None:
    rank = {"module": {**OLD_RANK}}
    recall = {"module": {**OLD_RECALL, "sampler": {**OLD_SAMPLER, "kind": "in_batch"}}}
    pipeline_settings(rank)
    pipeline_settings(recall)
    assert rank["module"]["metrics"] == {
        "binary": ["auc", "logloss", "ece", "gauc"],
        "regression": ["mae", "rmse", "xauc", "xgauc"],
    }
    assert recall["module"]["metrics"] == [
        "recall",
        "ndcg",
        "hit_rate",
        "mrr",
        "retrieved_popularity",
    ]
    # and they are today's defaults: an old run and a new one compute the same set
    root = Path(__file__).parents[3] / "configs" / "module"
    assert yaml.safe_load((root / "rank.yaml").read_text())["metrics"] == rank["module"]["metrics"]
    assert (
        yaml.safe_load((root / "recall.yaml").read_text())["metrics"] == recall["module"]["metrics"]
    )


def test_a_config_of_today_is_left_alone() -> None:
    module = {**OLD_RANK, "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True}}
    module.pop("optimizer_kwargs")
    module["metrics"] = {"binary": ["auc"], "regression": ["mae"]}
    config = {"module": module}
    assert pipeline_settings(config) == [] and config["module"] == module


@pytest.mark.parametrize("target", ["torch.optim.Adam", "torch.optim.Adagrad", "torch.optim.SGD"])
def test_a_torch_optimizer_may_be_built_from_a_checkpoint(target: str) -> None:
    node = {"optimizer": {"_target_": target, "_partial_": True}}
    assert not list(problems(node, "module"))


@pytest.mark.parametrize(
    "target", ["torch.optim.lr_scheduler.StepLR", "torch.save", "builtins.open"]
)
def test_other_library_targets_stay_refused(target: str) -> None:
    module = {**OLD_RANK, "optimizer": {"_target_": target, "_partial_": True}}
    module.pop("optimizer_kwargs")
    with pytest.raises(CheckpointError, match="module.optimizer._target_"):
        check_stored_config(stored(module), "bad.ckpt", rebuilt=("module",))


def test_modules_take_the_optimizer_node_and_the_sampler_object() -> None:
    rank = RankModule(torch.nn.Linear(2, 1), SCHEMA, optimizer=partial(torch.optim.SGD))
    assert isinstance(rank.configure_optimizers(), torch.optim.SGD)
    recall = RecallModule(
        torch.nn.Linear(2, 1), num_items=4, item_counts=torch.ones(5, dtype=torch.long)
    )
    assert isinstance(recall.sampler, InBatchSoftmax) and recall.sampler.temperature == 0.05
    assert isinstance(rank, Reporting) and isinstance(recall, Reporting)  # the report protocol
    with pytest.raises(
        ValueError, match="RecallModule: sampler=.*expected an instance of InBatchSoftmax"
    ):
        RecallModule(
            torch.nn.Linear(2, 1),
            num_items=4,
            item_counts=torch.ones(5, dtype=torch.long),
            sampler={"kind": "in_batch"},
        )
