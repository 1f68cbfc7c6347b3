"""A checkpoint's stored config names only what recolab allows to be rebuilt (recolab.checkpoint_config)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

import recolab.train  # noqa: F401  (registers the resolvers the configs use, as a run does)
from recolab.checkpoint_config import (
    REBUILT,
    check_stored_config,
    problems,
    recolab_object,
    upgrade_stored_config,
)
from recolab.data.schema import DenseFeature, Schema, SequenceFeature, SparseFeature, Task
from recolab.resume import CheckpointError
from tests.conftest import CONFIGS, compose_train

EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "exp").glob("*.yaml"))
WRITE = {"_target_": "pathlib.Path.write_text", "_args_": ["/tmp/x.pth", "import os"]}


def stored(**nodes: Any) -> dict[str, Any]:
    """A small legitimate stored config, with `nodes` merged over it."""
    base = {
        "exp_name": "mmoe",
        "seed": 0,
        "data": {"_target_": "recolab.data.synthetic_video.SyntheticVideoDataModule", "seed": 0},
        "model": {"_target_": "recolab.models.rank.mmoe.MMoE", "num_experts": 4},
        "module": {
            "_target_": "recolab.pipelines.rank.RankModule",
            "heads": {"click": {"_target_": "recolab.heads.position.PAL", "num_positions": 10}},
            "metrics": {"binary": ["auc", "gauc"], "regression": ["xauc"]},
        },
        "trainer": {"_target_": "pytorch_lightning.Trainer", "max_epochs": 1},
        "callbacks": {
            "throughput": {
                "_target_": "recolab.throughput.WindowThroughputMonitor",
                "batch_size_fn": {
                    "_target_": "hydra.utils.get_method",
                    "path": "recolab.data.columnar.batch_rows",
                },
            }
        },
    }

    def merge(into: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        for k, v in over.items():
            both = isinstance(v, dict) and isinstance(into.get(k), dict)
            into[k] = merge(into[k], v) if both else v
        return into

    return merge(base, nodes)


def refused(cfg: dict[str, Any]) -> dict[str, Any]:
    """{key: value} refused, the nodes as `check_stored_config` reads them."""
    return {
        key: value
        for name, node in cfg.items()
        for key, value, _ in problems(node, name, targets=name in REBUILT)
    }


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_every_experiment_as_stored_passes(exp: str, tmp_path: Path) -> None:
    # What `recolab train` stores (`RankModule.run_info`): the run's config without Hydra's node,
    # resolved, as YAML.
    cfg = compose_train(tmp_path, [f"+exp={exp}"])
    text = OmegaConf.to_yaml(
        OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True
    )
    assert check_stored_config(text, "run.ckpt").exp_name == exp


#: Config groups whose options land in the nodes evaluate rebuilds (`REBUILT`).
REBUILT_GROUPS = ("data", "model", "module", "head", "sampler", "calibration")


@pytest.mark.parametrize(
    "path",
    sorted(p for g in REBUILT_GROUPS for p in (CONFIGS / g).glob("*.yaml")),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_every_option_that_evaluate_rebuilds_names_only_recolab_classes(path: Path) -> None:
    # A new model, data module, head... is a recolab class: it never trips the check (any
    # option composes without an experiment, e.g. `+calibration=platt`).
    node = yaml.safe_load(path.read_text()) or {}
    assert not [p for p in problems(node) if not p[2].startswith("an interpolation")]


def test_every_lookup_in_recolab_configs_is_allowed() -> None:
    paths = [
        m.group(1)
        for p in CONFIGS.rglob("*.yaml")
        for m in re.finditer(r"_target_: hydra\.utils\.get_method\s+path: (\S+)", p.read_text())
    ]
    assert paths, "configs/callbacks/default.yaml looks up recolab.data.columnar.batch_rows"
    for path in paths:
        assert recolab_object(path, functions=True) is None, path


def test_a_legitimate_config_passes() -> None:
    assert not refused(stored())
    assert check_stored_config(OmegaConf.to_yaml(stored()), "a.ckpt").model.num_experts == 4


def test_nodes_evaluate_does_not_build_may_name_any_target_but_hold_no_interpolation() -> None:
    # Its own callbacks (a user's, Lightning's) and logger: evaluate builds neither from a
    # checkpoint. It logs the whole config, so an interpolation anywhere would be resolved.
    cfg = stored(
        callbacks={"mine": {"_target_": "mypackage.callbacks.Mine", "out": "/tmp/seen"}},
        logger={"mlflow": {"_target_": "pytorch_lightning.loggers.MLFlowLogger"}},
    )
    assert not list(problems(cfg["callbacks"], "callbacks", targets=False))
    check_stored_config(cfg, "a.ckpt")
    cfg["callbacks"]["mine"]["out"] = "${oc.env:HOME}"
    with pytest.raises(CheckpointError, match=r"callbacks\.mine\.out='\$\{oc\.env:HOME\}'"):
        check_stored_config(cfg, "a.ckpt")


def test_the_data_node_is_not_rebuilt_when_the_user_gives_data() -> None:
    cfg = stored(data={"_target_": "mypackage.data.Mine"}, model={"x": WRITE})
    with pytest.raises(CheckpointError) as e:
        check_stored_config(cfg, "a.ckpt", rebuilt=("model", "module"))
    assert "model.x._target_" in str(e.value) and "data._target_" not in str(e.value)
    assert check_stored_config(
        stored(data={"_target_": "mypackage.data.Mine"}), "a.ckpt", rebuilt=("model", "module")
    )


@pytest.mark.parametrize(
    "nodes, key, value",
    [
        ({"data": {"_target_": "builtins.open", "file": "/tmp/x", "mode": "w"}}, "data._target_", "builtins.open"),
        ({"data": WRITE}, "data._target_", "pathlib.Path.write_text"),
        ({"model": {"_target_": "os.system"}}, "model._target_", "os.system"),
        # `recolab.` paths that lead out of recolab, or to what is not a class
        ({"data": {"_target_": "recolab.evaluate.Path.write_text"}}, "data._target_", "recolab.evaluate.Path.write_text"),
        ({"data": {"_target_": "recolab.evaluate.Path"}}, "data._target_", "recolab.evaluate.Path"),
        ({"model": {"_target_": "recolab.tracking.os.system"}}, "model._target_", "recolab.tracking.os.system"),
        ({"model": {"_target_": "recolab.checkpointing.write_run_file"}}, "model._target_", "recolab.checkpointing.write_run_file"),
        ({"module": {"_target_": "recolab.pipelines.rank.RankModule.load_from_checkpoint"}}, "module._target_", "recolab.pipelines.rank.RankModule.load_from_checkpoint"),
        ({"module": {"_target_": "recolab.pipelines.rank.RankModule.__class__"}}, "module._target_", "recolab.pipelines.rank.RankModule.__class__"),
        ({"model": {"_target_": 3}}, "model._target_", 3),
        # nested: in an allowed node, in `_args_`, in a list, under `_partial_` and `_recursive_: false`
        ({"model": {"encoder": {"_args_": [WRITE]}}}, "model.encoder._args_[0]._target_", "pathlib.Path.write_text"),
        ({"model": {"hidden": [1, {"x": WRITE}]}}, "model.hidden[1].x._target_", "pathlib.Path.write_text"),
        ({"module": {"heads": {"click": {"context": WRITE}}}}, "module.heads.click.context._target_", "pathlib.Path.write_text"),
        ({"model": {"tower": {**WRITE, "_partial_": True}}}, "model.tower._target_", "pathlib.Path.write_text"),
        ({"model": {"_recursive_": False, "tower": WRITE}}, "model.tower._target_", "pathlib.Path.write_text"),
        # Hydra's keys hold what Hydra expects
        ({"model": {"_partial_": "yes"}}, "model._partial_", "yes"),
        ({"model": {"_recursive_": 0}}, "model._recursive_", 0),
        ({"model": {"_convert_": "pickle"}}, "model._convert_", "pickle"),
        ({"model": {"_args_": "abc"}}, "model._args_", "abc"),
        # lookups: only get_method, and only of a recolab class or function
        ({"model": {"f": {"_target_": "hydra.utils.get_method", "path": "builtins.exec"}}}, "model.f.path", "builtins.exec"),
        ({"model": {"f": {"_target_": "hydra.utils.get_method", "_args_": ["os.system"]}}}, "model.f._args_[0]", "os.system"),
        ({"model": {"f": {"_target_": "hydra.utils.get_method", "path": "recolab.tracking.os.system"}}}, "model.f.path", "recolab.tracking.os.system"),
        ({"model": {"f": {"_target_": "hydra.utils.get_method"}}}, "model.f._args_[0]", None),
        ({"model": {"f": {"_target_": "hydra.utils.get_class", "path": "recolab.models.rank.mmoe.MMoE"}}}, "model.f._target_", "hydra.utils.get_class"),
        ({"model": {"f": {"_target_": "hydra.utils.get_object", "path": "recolab.models.rank.mmoe.MMoE"}}}, "model.f._target_", "hydra.utils.get_object"),
        # interpolations: a stored config is resolved; these would build or read after the check
        ({"model": "${oc.create:'{_target_: builtins.open, file: /tmp/x, mode: w}'}"}, "model", "${oc.create:'{_target_: builtins.open, file: /tmp/x, mode: w}'}"),
        ({"exp_name": "run-${oc.env:HOME}"}, "exp_name", "run-${oc.env:HOME}"),
    ],
)  # fmt: skip
def test_a_refused_key_is_named_with_its_value(nodes: dict, key: str, value: Any) -> None:
    cfg = stored(**nodes)
    assert refused(cfg) == {key: value}
    with pytest.raises(CheckpointError) as e:
        check_stored_config(OmegaConf.to_yaml(OmegaConf.create(cfg)), "/runs/x/last.ckpt")
    assert str(e.value).startswith("ckpt_path=/runs/x/last.ckpt: its stored config would run code")
    assert f"{key}={value!r}" in str(e.value)


def test_every_refused_key_is_named() -> None:
    cfg = stored(data={"_target_": "builtins.open"}, model={"x": WRITE})
    assert list(refused(cfg)) == ["data._target_", "model.x._target_"]


@pytest.mark.parametrize(
    "text, why",
    [
        (
            "a: !!python/object/apply:os.system ['touch /tmp/x']",
            "could not determine a constructor",
        ),
        ("a: [1", "ParserError"),
        ("[1, 2]", "a ListConfig, not a mapping"),
        (None, "a NoneType, not YAML text or a mapping"),
    ],
)
def test_a_stored_config_that_is_not_a_mapping_is_refused(text: Any, why: str) -> None:
    with pytest.raises(CheckpointError, match=r"ckpt_path=a\.ckpt: its stored config is") as e:
        check_stored_config(text, "a.ckpt")
    assert why in str(e.value)


# -- configs stored by an older recolab ----------------------------------------------------------

#: Checkpoints recolab wrote at de8d598, before the rankers were given their feature embedding
#: (`model.embedding`) and the recallers' user features became `EmbeddingTables`; the README
#: there gives the commands, `<exp>_de8d598.metrics.json` the test metrics those runs reported.
OLD_CHECKPOINTS = Path(__file__).parents[1] / "fixtures" / "checkpoints"
FEATURE_EMBEDDING = {"_target_": "recolab.models.blocks.FeatureEmbedding", "_partial_": True}


def test_a_rankers_old_embedding_keys_become_the_node_it_is_given() -> None:
    old = {
        "_target_": "recolab.models.rank.cgc.PLE",
        "embedding_dim": 8,
        "num_levels": 2,
        "dropout": 0.1,
        "sparse_embeddings": False,
        "input_batch_norm": True,
    }
    text = OmegaConf.to_yaml(OmegaConf.create({**stored(), "model": old}))
    cfg = check_stored_config(text, "a.ckpt")
    assert OmegaConf.to_container(cfg.model) == {
        "_target_": "recolab.models.rank.cgc.PLE",
        "embedding": {**FEATURE_EMBEDDING, "embedding_dim": 8, "sparse": False, "batch_norm": True},
        "num_levels": 2,
        "dropout": 0.1,
    }
    assert cfg.data == stored()["data"] and cfg.module == stored()["module"]


@pytest.mark.parametrize("path", sorted((CONFIGS / "model").glob("*.yaml")), ids=lambda p: p.stem)
def test_todays_model_configs_are_read_as_they_are(path: Path) -> None:
    node = yaml.safe_load(path.read_text())
    assert upgrade_stored_config({"model": yaml.safe_load(path.read_text())}) == {"model": node}


def old_checkpoint(name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    ckpt = torch.load(OLD_CHECKPOINTS / f"{name}_de8d598.ckpt", weights_only=True)
    state = ckpt["state_dict"]
    return ckpt["recolab"], {k[len("model.") :]: v for k, v in state.items() if k[:6] == "model."}


def model_inputs(data: Any, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """What the data module gave the model, from the stored data config and the weights' shapes."""
    if "user_id.weight" in state:  # a recaller: sizes and feature tables
        return {
            "num_users": len(state["user_id.weight"]) - 1,
            "num_items": len(state["item.ids.weight"]) - 1,
            "history_len": data.history_len,
            "user_features": {
                n: len(state[f"user_features.tables.{n}.weight"]) for n in ["user_age"]
            },
            "item_features": {
                n: (state[f"item.table_{n}"], len(state[f"item.features.{n}.weight"]))
                for n in data.item_features
            },
        }
    vocab = {n: len(state[f"embed.tables.{n}.weight"]) for n in data.sparse}
    return {
        "schema": Schema(
            sparse=tuple(SparseFeature(n, vocab[n]) for n in data.sparse),
            dense=tuple(DenseFeature(n) for n in data.dense),
            sequences=tuple(
                SequenceFeature(n, vocab[s.vocab_of], s.max_len, vocab_of=s.vocab_of)
                for n, s in data.sequences.items()
            ),
            tasks=tuple(Task(**t) for t in OmegaConf.to_container(data.tasks)),
        )
    }


@pytest.mark.parametrize("name", ["mmoe", "two_tower"])
def test_an_old_checkpoints_model_is_rebuilt_and_takes_its_weights(name: str) -> None:
    info, state = old_checkpoint(name)
    cfg = check_stored_config(info["config"], f"{name}.ckpt")
    model = instantiate(cfg.model, _partial_=True)(**model_inputs(cfg.data, state))
    model.load_state_dict(state)  # strict: every stored weight has its place, and every place one
    if name == "mmoe":
        assert OmegaConf.to_container(cfg.model.embedding) == {
            **FEATURE_EMBEDDING,
            "embedding_dim": 4,
            "sparse": False,
            "batch_norm": True,
        }
        assert model.embed.norm is not None and model.embed.tables["item_id"].embedding_dim == 4
    else:  # its user features' tables, saved one level down (`user_features.tables.<name>`)
        assert "user_features.tables.user_age.weight" in state
        assert torch.equal(
            model.user_features["user_age"].weight, state["user_features.tables.user_age.weight"]
        )


@pytest.mark.parametrize("name", ["mmoe", "two_tower"])
def test_an_old_checkpoint_evaluates_to_the_metrics_it_was_tested_at(
    name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`recolab evaluate ckpt_path=<a checkpoint written at de8d598>` rebuilds its model, its
    module and its (seeded, synthetic) data, and reports the metrics that run reported."""
    from recolab.evaluate import evaluate
    from tests.conftest import compose_train

    caplog.set_level(logging.INFO, logger="recolab.checkpoint_config")
    ckpt = OLD_CHECKPOINTS / f"{name}_de8d598.ckpt"
    cfg = compose_train(
        tmp_path, [f"ckpt_path={ckpt}", "logger=none"], config_name="evaluate", out="eval"
    )
    metrics = evaluate(cfg)
    assert "settings of an older recolab" in caplog.text or name == "two_tower"
    expected = json.loads((OLD_CHECKPOINTS / f"{name}_de8d598.metrics.json").read_text())
    assert {k: metrics.get(k) for k in expected} == pytest.approx(expected, rel=1e-6, nan_ok=True)
