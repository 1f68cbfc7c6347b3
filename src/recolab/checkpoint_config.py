"""A checkpoint is data: what of its stored config `recolab evaluate` may rebuild.

`recolab evaluate` rebuilds the model, the pipeline module and (without `data=`) the data module
by Hydra-instantiating those nodes of the training config the checkpoint carries (`REBUILT`).
`torch.load(weights_only=True)` keeps pickled code out of the file, but a config is plain data that
instantiation turns into calls: a stored `_target_: pathlib.Path.write_text` writes any file (a
`.pth` in site-packages runs on the next Python start), `builtins.open` creates one. So
`check_stored_config` reads the stored config before anything is instantiated or any data read,
and allows in the rebuilt nodes only

- recolab's own classes: a `recolab.` path that leads to a class defined in recolab (not
  `recolab.evaluate.Path`, which is pathlib's). The one library class needed there is a torch
  optimizer (`module.optimizer: {_target_: torch.optim.Adam, _partial_: true}`, a partial that
  evaluation never calls): a `torch.optim.` path to a `torch.optim.Optimizer` subclass. The other
  library targets of recolab's configs (Lightning's trainer, logger and callbacks) sit in nodes
  evaluate never builds from a checkpoint (its trainer and logger are its own);
- `hydra.utils.get_method` (`LOOKUPS`) of a recolab class or function: Hydra does not vet the
  path a lookup is given, so this check does.

Every `_target_` counts wherever it sits in those nodes (nested nodes, `_args_`, lists, under
`_partial_: true` or `_recursive_: false`), and Hydra's other keys must hold what Hydra expects.
No node holds an interpolation: training stores the config resolved, and resolving one at
evaluation (evaluate logs the whole config) could build a node after this check (`${oc.create:..}`)
or read the environment into MLflow params (`${oc.env:...}`). The resolvers registered besides
OmegaConf's and Hydra's (`recolab.tracking`, `recolab.lifecycle`) read, and write nothing.
Anything else raises `CheckpointError` naming each key and value.

A config stored by an older recolab names some settings as they were then: `upgrade_stored_config`
translates those (`UPGRADES`, one function per rename) before the check, so a checkpoint written
before a rename still rebuilds, from today's classes.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import yaml
from hydra._internal.utils import _locate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from recolab.pipelines.legacy import pipeline_settings
from recolab.resume import CheckpointError

log = logging.getLogger(__name__)

#: The stored config's nodes `recolab evaluate` instantiates (`data` only without `data=`).
REBUILT = ("data", "model", "module")
#: Targets that look an object up by its path (`path:` or `_args_[0]`) without calling it.
LOOKUPS = frozenset({"hydra.utils.get_method"})
#: What Hydra reads from `_convert_` (`hydra.types.ConvertMode`).
CONVERT_MODES = frozenset({"none", "partial", "object", "all"})


#: The rankers' keys for their feature embedding before it became the node they are given
#: (`model.embedding`, a `_partial_` `FeatureEmbedding`): old `model.<key>` -> its key there.
EMBEDDING_KEYS = {
    "embedding_dim": "embedding_dim",
    "sparse_embeddings": "sparse",
    "input_batch_norm": "batch_norm",
}


def injected_embedding(stored: dict[str, Any]) -> list[str]:
    """A ranker's `model.embedding_dim`, `model.sparse_embeddings` and `model.input_batch_norm`
    (recolab before the rankers were given their feature embedding) moved into the node
    `model.embedding` that builds it; returns what moved."""
    model = stored.get("model")
    if not (
        isinstance(model, dict)
        and str(model.get("_target_", "")).startswith("recolab.models.rank.")
        and "embedding" not in model
        and any(k in model for k in EMBEDDING_KEYS)
    ):
        return []
    node = {"_target_": "recolab.models.blocks.FeatureEmbedding", "_partial_": True}
    node |= {new: model.pop(old) for old, new in EMBEDDING_KEYS.items() if old in model}
    stored["model"] = {"_target_": model.pop("_target_"), "embedding": node, **model}
    return [
        f"model.{old} -> model.embedding.{new}"
        for old, new in EMBEDDING_KEYS.items()
        if new in node
    ]


#: Translations of a stored config's old keys to today's, oldest first; each changes the config
#: (a plain mapping) in place and returns what it moved, `old key -> new key`.
UPGRADES: tuple[Callable[[dict[str, Any]], list[str]], ...] = (
    injected_embedding,
    pipeline_settings,
)


def upgrade_stored_config(stored: dict[str, Any], where: str = "stored config") -> dict[str, Any]:
    """`stored` (a plain mapping) with the keys of an older recolab translated (`UPGRADES`)."""
    moved = [m for upgrade in UPGRADES for m in upgrade(stored)]
    if moved:
        log.info("%s: settings of an older recolab, read as today's: %s", where, "; ".join(moved))
    return stored


def _child(key: str, name: Any) -> str:
    return f"{key}.{name}" if key else str(name)


def recolab_object(path: str, *, functions: bool = False) -> str | None:
    """None if `path` names a class (or, with `functions`, a function) defined in recolab; else why not.

    Only a `recolab.` path is looked up, so the look-up imports nothing but recolab's modules.
    """
    if path.startswith("torch.optim.") and not functions:
        return torch_optimizer(path)
    if not path.startswith("recolab."):
        return "not a recolab path"
    try:
        obj = _locate(path)
    except Exception:  # noqa: BLE001 (no such object: Hydra fails the same way, running nothing)
        return None  # e.g. a class renamed since the checkpoint was trained: Hydra's error then
    kinds = inspect.isclass(obj) or (functions and inspect.isfunction(obj))
    module = str(getattr(obj, "__module__", "") or "")
    if not kinds or module.split(".")[0] != "recolab":
        what = "class" if inspect.isclass(obj) else type(obj).__name__
        wanted = "class or function" if functions else "class"
        return f"leads to a {what} of {module or 'no module'}, not a recolab {wanted}"
    return None


def torch_optimizer(path: str) -> str | None:
    """None if `path` names a torch optimizer class (`module.optimizer`'s target, a partial that
    evaluation never calls); else why not."""
    try:
        obj = _locate(path)
    except Exception:  # noqa: BLE001 (no such object: Hydra fails the same way, running nothing)
        return None
    import torch

    if inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer):
        return None
    return "not a torch.optim optimizer class"


def _target_problem(node: dict, key: str) -> tuple[str, Any, str] | None:
    """(key, value, why) when the node's `_target_` (or what a lookup is given) is not allowed."""
    target = node["_target_"]
    if not isinstance(target, str):
        return _child(key, "_target_"), target, "a target must be a dotted path"
    if target in LOOKUPS:
        args = node.get("_args_")
        where, path = (
            ("path", node["path"]) if "path" in node else ("_args_[0]", (args or [None])[0])
        )
        if not isinstance(path, str):
            return _child(key, where), path, f"{target} needs a recolab path"
        why = recolab_object(path, functions=True)
        return (_child(key, where), path, f"{target} of it: {why}") if why else None
    why = recolab_object(target)
    return (_child(key, "_target_"), target, why) if why else None


def problems(node: Any, key: str = "", *, targets: bool = True) -> Iterator[tuple[str, Any, str]]:
    """Every (key, value, why) that makes a node unsafe to instantiate, in config order; with
    `targets=False` (a node that is not rebuilt) only its interpolations."""
    if isinstance(node, dict):
        if targets:
            yield from _hydra_key_problems(node, key)
        for name, value in node.items():
            yield from problems(value, _child(key, name), targets=targets)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from problems(value, f"{key}[{i}]", targets=targets)
    elif isinstance(node, str) and "${" in node:
        yield key, node, "an interpolation: a stored config is saved resolved"


def _hydra_key_problems(node: dict, key: str) -> Iterator[tuple[str, Any, str]]:
    if "_target_" in node:
        found = _target_problem(node, key)
        if found:
            yield found
    for name in ("_partial_", "_recursive_"):
        if name in node and not isinstance(node[name], bool):
            yield _child(key, name), node[name], "must be true or false"
    if "_convert_" in node and str(node["_convert_"]).lower() not in CONVERT_MODES:
        modes = sorted(CONVERT_MODES)
        yield _child(key, "_convert_"), node["_convert_"], f"must be one of {modes}"
    if "_args_" in node and not isinstance(node["_args_"], list):
        yield _child(key, "_args_"), node["_args_"], "must be a list"


def check_stored_config(
    stored: Any,
    path: str | Path,
    *,
    rebuilt: Collection[str] = REBUILT,
    what: str = "checkpoint",
) -> DictConfig:
    """The checkpoint's stored config (its YAML text or mapping), checked to be safe to rebuild
    the `rebuilt` nodes from and to resolve.

    `what="logged model"`: the config of an MLflow Model that `recolab.serving` loads, checked
    the same way. Raises `CheckpointError` naming the file and every refused key and value.
    """
    where = f"ckpt_path={path}" if what == "checkpoint" else f"{what} {path}"
    if not isinstance(stored, (str, dict)):
        raise CheckpointError(
            f"{where}: its stored config is a {type(stored).__name__}, not YAML text or a mapping"
        )
    try:
        cfg = OmegaConf.create(stored)  # YAML text parses with a safe loader: no Python tags
    except (OmegaConfBaseException, yaml.YAMLError, ValueError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(
            f"{where}: its stored config is not a config ({type(e).__name__}: {first})"
        ) from e
    if not isinstance(cfg, DictConfig):
        raise CheckpointError(
            f"{where}: its stored config is a {type(cfg).__name__}, not a mapping"
        )
    container = upgrade_stored_config(OmegaConf.to_container(cfg, resolve=False), where)
    cfg = OmegaConf.create(container)
    found = [
        p
        for name, node in container.items()
        for p in problems(node, str(name), targets=name in rebuilt)
    ]
    if found:
        shown = "; ".join(f"{k}={v!r} ({why})" for k, v, why in found)
        who, advice = (
            ("evaluate", "Evaluate only checkpoints that `recolab train` wrote")
            if what == "checkpoint"
            else ("recolab.serving", "Load only models that `recolab train` logged")
        )
        raise CheckpointError(
            f"{where}: its stored config would run code that recolab does not allow: "
            f"{shown}. A {what} is data: {who} rebuilds its {', '.join(rebuilt)} only "
            f"from recolab's own classes (and {', '.join(sorted(LOOKUPS))} of a recolab path), "
            f"and nothing was built or read. {advice}"
        )
    return cfg
