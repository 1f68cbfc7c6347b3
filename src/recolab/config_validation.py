"""Check a composed config before any data is read or any model is built.

Hydra rejects a command-line override of a key that does not exist, but a key misspelled inside a
config file (an exp YAML, say) is merged silently, and `instantiate` would fail only when that
object is built: the model, after the data has been read and encoded. `validate_config` catches
it first, with a message that names the full key, the value, and what was expected:

- **unknown keys**: every `_target_` node's keys are bound to its constructor's signature (its
  `**kwargs` followed where the class says they go: up the class hierarchy, into the dataclass
  its `kwargs_fields` names, or, for Lightning's classes, `FORWARDED`), with a "did you mean";
  top-level keys against the primary config's keys and the config groups;
- **wrong types and impossible values**: each value against the constructor's own annotated
  parameter (`recolab.params`: `num_experts: Count`, `dropout: Rate`, a `Literal`, a TypedDict
  of a nested mapping, a validator), validated by pydantic exactly as `@checked` validates the
  call when the object is built; so a rule lives once, next to its parameter. Constructors that
  recolab does not own (Lightning's) get their constraints from `EXTERNAL`, keyed by constructor;
- **rules between groups**: `cross_checks` (K larger than the corpus, a history sharing the
  vocabulary of a column that is not a sparse feature, the optimizer node, sparse gradients with
  Adam) and the trainer's limits against what the callbacks need.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any

import torch
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException
from pydantic import AfterValidator, PydanticUserError, TypeAdapter, ValidationError

import recolab.tracking  # noqa: F401  (registers the resolvers the logger config interpolates)
from recolab.params import CHECKED, Count, Count0, explain, unknown_key
from recolab.params import suggest as _suggest

#: Keys with a meaning to `hydra.utils.instantiate`, not to the constructor.
HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}

#: Lightning's constructors that keep their `**kwargs` for another callable, with the parameters
#: that constructor sets itself (not the user's to pass): `DDPStrategy` hands them to
#: `DistributedDataParallel` (`find_unused_parameters`, `broadcast_buffers`, `static_graph`, ...),
#: `ThroughputMonitor` to fabric's `Throughput` (`window_size`, `separator`).
FORWARDED = {
    "pytorch_lightning.strategies.ddp.DDPStrategy": (
        "torch.nn.parallel.DistributedDataParallel",
        {"module", "device_ids"},
    ),
    "pytorch_lightning.callbacks.throughput_monitor.ThroughputMonitor": (
        "lightning_fabric.utilities.throughput.Throughput",
        {"available_flops", "world_size"},
    ),
}


def _rule(ok: Callable[[Any], bool], expected: str) -> AfterValidator:
    """A validator that accepts the values `ok` accepts and otherwise says what was expected."""

    def check(value: Any) -> Any:
        if value is not None and not ok(value):
            raise ValueError(expected)
        return value

    return AfterValidator(check)


def _count(v: Any) -> bool:
    return isinstance(v, int) and v >= 1


#: The number of epochs or steps: -1 (no limit) or at least 1 (0 would train nothing and report
#: the untrained model).
_Limit = Annotated[
    int | None, _rule(lambda v: v == -1 or v >= 1, "an integer >= 1 (or -1: no limit)")
]
#: Batches of an epoch: a count >= 1 or a fraction of the epoch in (0, 1] (0 would run no batch).
_Batches = Annotated[
    int | float | None,
    _rule(
        lambda v: _count(v) or (isinstance(v, float) and 0 < v <= 1),
        "an integer >= 1 (batches) or a fraction in (0, 1] (0 runs no batch)",
    ),
]
_Interval = Annotated[
    int | float | None,
    _rule(
        lambda v: _count(v) or (isinstance(v, float) and 0 < v <= 1),
        "an integer >= 1 (training batches) or a fraction of the epoch in (0, 1]",
    ),
]

#: Constraints on parameters of constructors recolab does not own (Lightning's), by constructor:
#: what their signatures would declare in `recolab.params`' words. They replace the constructor's
#: own type hint for that parameter.
EXTERNAL: dict[str, dict[str, Any]] = {
    "pytorch_lightning.trainer.trainer.Trainer": {
        "max_epochs": _Limit,
        "max_steps": _Limit,
        "min_epochs": Count0 | None,
        "limit_train_batches": _Batches,
        "limit_test_batches": _Batches,
        "accumulate_grad_batches": Count,
        "check_val_every_n_epoch": Count | None,
        "val_check_interval": _Interval,
    },
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping": {"patience": Count0},
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint": {
        "every_n_train_steps": Count0 | None,
    },
}


class ConfigError(ValueError):
    """An invalid config: one line per problem, each naming the full key, the value and what was expected."""


# -- signatures -----------------------------------------------------------------------------------


def _hints(fn: Any) -> dict[str, Any]:
    """`fn`'s parameter hints, evaluated with their `Annotated` constraints; a hint that cannot be
    evaluated (a name imported for typing only) is left out, and so not checked."""
    fn = inspect.unwrap(fn)
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:  # noqa: BLE001 (one bad annotation: evaluate the others one by one)
        out = {}
        for name, annotation in getattr(fn, "__annotations__", {}).items():
            try:
                out[name] = (
                    eval(annotation, fn.__globals__, {})  # noqa: S307 (the module's own annotation)
                    if isinstance(annotation, str)
                    else annotation
                )
            except Exception:  # noqa: BLE001
                continue
        return out


def _name(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


@functools.cache
def accepted_parameters(target: Any) -> tuple[dict[str, Any], bool]:
    """`{name: type hint}` a target accepts, and whether it accepts any other name.

    A class's `__init__` that takes `**kwargs` passes them on: to the next `__init__` up the MRO
    (`super().__init__(**kwargs)`), to the fields of the dataclass its `kwargs_fields` names,
    and, for Lightning's classes, to the callable `FORWARDED` names.
    """
    if not isinstance(target, type):
        params = inspect.signature(target).parameters
        hints = _hints(target)
        named = {n: hints.get(n, Any) for n, p in params.items() if not _variadic(p)}
        return named, any(p.kind is p.VAR_KEYWORD for p in params.values())
    out: dict[str, Any] = {}
    fields: list[type] = []
    for cls in target.__mro__:
        if cls is object or "__init__" not in vars(cls):
            continue
        init = vars(cls)["__init__"]
        params = inspect.signature(init).parameters
        hints, external = _hints(init), EXTERNAL.get(_name(cls), {})
        for name, p in params.items():
            if name != "self" and not _variadic(p):
                out.setdefault(name, external.get(name, hints.get(name, Any)))
        if "kwargs_fields" in vars(cls):
            fields.append(vars(cls)["kwargs_fields"])
        if _name(cls) in FORWARDED:  # its **kwargs end in another callable's named parameters
            callee, own = FORWARDED[_name(cls)]
            for name, hint in accepted_parameters(get_object(callee))[0].items():
                if name not in own:
                    out.setdefault(name, hint)
            break
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            break
    else:
        return _with_fields(out, fields), True
    return _with_fields(out, fields), False


def _with_fields(out: dict[str, Any], dataclasses_: list[type]) -> dict[str, Any]:
    for dc in dataclasses_:
        hints = typing.get_type_hints(dc, include_extras=True)
        for f in dataclasses.fields(dc):
            out.setdefault(f.name, hints.get(f.name, Any))
    return out


def _variadic(p: inspect.Parameter) -> bool:
    return p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL)


@functools.cache
def _adapter(hint: Any) -> TypeAdapter | None:
    """pydantic's validator of `hint`, configured as `recolab.params.checked` validates calls;
    None where pydantic cannot build one (then the value is not checked)."""
    try:
        return TypeAdapter(hint, config=CHECKED)
    except PydanticUserError:  # a TypedDict or dataclass carries its own config
        try:
            return TypeAdapter(hint)
        except Exception:  # noqa: BLE001
            return None
    except Exception:  # noqa: BLE001
        return None


def value_problems(value: Any, hint: Any, key: str) -> list[str]:
    """What is wrong with a plain config value for a parameter annotated `hint` (none: [])."""
    if hint is Any:
        return []
    try:
        adapter = _adapter(hint)
    except TypeError:  # an unhashable hint
        adapter = None
    if adapter is None:
        return []
    try:
        adapter.validate_python(value)
    except ValidationError as e:
        return explain(e, value, prefix=key, unknown=lambda loc: unknown_key(hint, loc))
    except Exception:  # noqa: BLE001 (a hint pydantic checks by a test that cannot take this value)
        return []
    return []


# -- the walk ---------------------------------------------------------------------------------------


def _plain(node: Any) -> Any:
    return (
        OmegaConf.to_container(node, resolve=True)
        if isinstance(node, (DictConfig, ListConfig))
        else node
    )


def _has_target(value: Any) -> bool:
    if isinstance(value, dict):
        return "_target_" in value or any(_has_target(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_target(v) for v in value)
    return False


def check_node(node: DictConfig, key: str, problems: list[str]) -> None:
    """Check one `_target_` node (and, recursively, the nodes inside it)."""
    target_path = node.get("_target_")
    try:
        target = get_object(str(target_path))
    except Exception as e:  # noqa: BLE001
        module, _, name = str(target_path).rpartition(".")
        hint = ""
        try:
            hint = _suggest(name, dir(get_object(module)))
        except Exception:  # noqa: BLE001
            pass
        problems.append(
            f"{key}._target_={target_path!r}: cannot be imported ({type(e).__name__}){hint}"
        )
        return
    params, open_ended = accepted_parameters(target)
    where = getattr(target, "__qualname__", str(target))
    for name in node.keys():
        name = str(name)
        full = f"{key}.{name}"
        if name in HYDRA_KEYS:
            continue
        if name not in params:
            if not open_ended:
                valid = f" (valid keys: {', '.join(sorted(params))})" if len(params) <= 15 else ""
                problems.append(f"{full}: unknown key for {where}{_suggest(name, params)}{valid}")
            continue
        try:
            raw = node._get_node(name)
            if raw is not None and raw._is_missing():
                problems.append(f"{full}: required, but not set (`???`); set it, e.g. {full}=...")
                continue
            child = node[name]
            value = _plain(child)
        except MissingMandatoryValue:
            problems.append(f"{full}: required, but not set (`???`); set it, e.g. {full}=...")
            continue
        except OmegaConfBaseException as e:
            problems.append(f"{full}: cannot be resolved: {str(e).splitlines()[0]}")
            continue
        _walk(child, full, problems)
        if not _has_target(value):  # a built object: its own node was checked above
            problems += value_problems(value, params[name], full)


def _walk(node: Any, key: str, problems: list[str]) -> None:
    if isinstance(node, DictConfig):
        if "_target_" in node:
            check_node(node, key, problems)
        else:
            for name in node.keys():
                try:
                    child = node[name]
                except OmegaConfBaseException:
                    continue  # reported by the node that takes it, or never used
                _walk(child, f"{key}.{name}" if key else str(name), problems)
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            try:
                child = node[i]
            except OmegaConfBaseException:
                continue
            _walk(child, f"{key}[{i}]", problems)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


#: The seeds torch, numpy and Lightning's `seed_everything` accept.
MAX_SEED = 2**32 - 1


def seed(v: Any) -> str | None:
    ok = v is None or (isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_SEED)
    return None if ok else f"an integer in [0, {MAX_SEED}] (0 to 2**32 - 1)"


def _get(cfg: DictConfig, key: str) -> Any:
    try:
        return _plain(OmegaConf.select(cfg, key, throw_on_missing=False))
    except OmegaConfBaseException:
        return None


def _optimizer_problems(cfg: DictConfig) -> list[str]:
    """`module.optimizer` of a pipeline module: a `_partial_` node of a torch optimizer (its keys
    are checked against the optimizer's signature with every other node), which does not set
    what the module passes itself (`lr`, `weight_decay`)."""
    if not str(_get(cfg, "module._target_") or "").startswith("recolab.pipelines."):
        return []
    node = _get(cfg, "module.optimizer")
    if node is None:
        return []
    if not isinstance(node, dict) or "_target_" not in node:
        return []  # the module's `optimizer` parameter says what it expects
    import torch

    try:
        cls = get_object(str(node["_target_"]))
    except Exception:  # noqa: BLE001 (check_node names the import error)
        return []
    if not (inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer)):
        names = [n for n in dir(torch.optim) if n[0].isupper()]
        return [
            f"module.optimizer._target_={node['_target_']!r}: expected a torch optimizer class, "
            f"e.g. 'torch.optim.Adam'{_suggest(str(node['_target_']).rpartition('.')[2], names)}"
        ]
    problems = []
    if node.get("_partial_") is not True:
        problems.append(
            "module.optimizer._partial_: expected true (the module calls the optimizer with its "
            "parameters)"
        )
    own = {"lr": "module.lr", "weight_decay": "module.weight_decay"}  # the module passes these
    problems += [f"module.optimizer.{key}: set {own[key]} instead" for key in node if key in own]
    return problems


def _run_problems(cfg: DictConfig) -> list[str]:
    """The trainer's limits against what the callbacks and the sweep need, and the machine.

    A checkpoint or early stopping that monitors a `val/` metric (or an `optimized_metric` that
    is one) needs validation to run: `trainer.limit_val_batches=0`, or a
    `trainer.check_val_every_n_epoch` beyond `trainer.max_epochs`, would fail after an epoch, or
    leave no best checkpoint.
    """
    problems: list[str] = []
    trainer = _get(cfg, "trainer")
    if not isinstance(trainer, dict):
        return problems
    needs_val = [
        f"callbacks.{name}.monitor={node['monitor']!r}"
        for name, node in (_get(cfg, "callbacks") or {}).items()
        if isinstance(node, dict) and str(node.get("monitor") or "").startswith("val/")
    ]
    if str(_get(cfg, "optimized_metric") or "").startswith("val/"):
        needs_val.append(f"optimized_metric={_get(cfg, 'optimized_metric')!r}")
    needer = needs_val[0] if needs_val else None
    limit_val = trainer.get("limit_val_batches")
    if needer and _number(limit_val) and limit_val == 0:
        problems.append(
            f"trainer.limit_val_batches={limit_val!r}: validation is off, but {needer} needs "
            "its metrics; expected an integer >= 1 or a fraction in (0, 1] (or monitor: null)"
        )
    max_epochs, every = trainer.get("max_epochs"), trainer.get("check_val_every_n_epoch")
    if needer and _number(every) and _number(max_epochs) and 1 <= max_epochs < every:
        problems.append(
            f"trainer.check_val_every_n_epoch={every!r}: validation never runs in "
            f"trainer.max_epochs={max_epochs}, but {needer} needs its metrics; expected at most "
            f"{max_epochs}"
        )
    min_epochs = trainer.get("min_epochs")
    if _number(min_epochs) and _number(max_epochs) and 1 <= max_epochs < min_epochs:
        problems.append(
            f"trainer.min_epochs={min_epochs!r}: expected at most trainer.max_epochs={max_epochs}"
        )
    devices, accelerator = trainer.get("devices"), trainer.get("accelerator")
    cores = os.cpu_count() or 1
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if on_cpu and _number(devices) and devices > cores:
        problems.append(
            f"trainer.devices={devices!r}: expected at most {cores} on the CPU (this machine's "
            "cores): each device is a training process with its own copy of the data"
        )
    return problems


def cross_checks(cfg: DictConfig) -> list[str]:
    """Rules between groups: what one part asks of another."""
    problems = []
    num_items = _get(cfg, "data.num_items")
    ks = _get(cfg, "module.ks")
    if _number(num_items) and isinstance(ks, list):
        too_big = [k for k in ks if _number(k) and k > num_items]
        if too_big:
            problems.append(
                f"module.ks={ks}: K={too_big[0]} is larger than the corpus (data.num_items={num_items}); expected every K <= {num_items}"
            )
    # (more sampled negatives than items is fine: they are drawn with replacement)
    metric = _get(cfg, "optimized_metric")
    if metric is not None:
        parts = str(metric).split("/")
        tasks = [t.get("name") for t in (_get(cfg, "data.tasks") or []) if isinstance(t, dict)]
        # test/, oracle/, baseline_*: metrics no sweep may choose on
        from recolab.run_checks import selection_problem

        if problem := selection_problem("optimized_metric", str(metric)):
            problems.append(problem)
        elif parts[0] != "val" or len(parts) < 2:
            problems.append(
                f"optimized_metric={metric!r}: expected a validation metric the run logs, val/metric[/task], e.g. 'val/auc/click'"
            )
        elif len(parts) == 3 and tasks and parts[2] not in tasks:
            problems.append(
                f"optimized_metric={metric!r}: task {parts[2]!r} is not one of data.tasks {tasks}"
            )
    sequences, sparse = _get(cfg, "data.sequences"), _get(cfg, "data.sparse")
    if isinstance(sequences, dict) and isinstance(sparse, list):
        for name, spec in sequences.items():
            vocab_of = spec.get("vocab_of") if isinstance(spec, dict) else None
            if vocab_of is not None and vocab_of not in sparse:
                problems.append(
                    f"data.sequences.{name}.vocab_of={vocab_of!r}: expected one of data.sparse {sparse}"
                )
    problems += _optimizer_problems(cfg)
    problems += _run_problems(cfg)
    if (
        _get(cfg, "model.embedding.sparse") is True
        and _get(cfg, "module.optimizer._target_") == "torch.optim.Adam"
    ):
        problems.append(
            "model.embedding.sparse=true: Adam does not take sparse gradients; expected "
            "module.optimizer._target_=torch.optim.Adagrad (or model.embedding.sparse=false)"
        )
    return problems


def top_level_keys(config_dir: str | Path, primary: str) -> set[str]:
    """Keys a composed config may hold at its top: the primary config's, the config groups', and
    those that `# @package _global_` options of a group other than `exp` add (e.g. `optimized_metric`)."""
    config_dir = Path(config_dir)
    keys = {"hydra"} | {p.name for p in config_dir.iterdir() if p.is_dir()}
    keys |= {str(k) for k in OmegaConf.load(config_dir / f"{primary}.yaml") if k != "defaults"}
    for path in config_dir.glob("*/*.yaml"):
        if path.parent.name != "exp" and path.read_text().startswith("# @package _global_"):
            node = OmegaConf.load(path)
            keys |= (
                {str(k) for k in node if k not in ("defaults", "hydra")}
                if isinstance(node, DictConfig)
                else set()
            )
    return keys


def validate_config(cfg: DictConfig, *, known_top_level: Iterable[str] | None = None) -> None:
    """Raise `ConfigError` listing every problem found; return quietly when there is none."""
    problems: list[str] = []
    run_seed = _get(cfg, "seed")  # first: `data.seed` and the like interpolate it
    if "seed" in cfg and (expected := seed(-1 if run_seed is None else run_seed)):
        problems.append(f"seed={run_seed!r}: expected {expected}")
    if known_top_level is not None:
        known = set(known_top_level)
        for key in cfg.keys():
            if str(key) not in known:
                problems.append(
                    f"{key}: unknown top-level key{_suggest(str(key), known)} (known: {', '.join(sorted(known - {'hydra'}))})"
                )
    for group in ("callbacks", "logger"):
        node = cfg.get(group) if group in cfg else None
        if isinstance(node, DictConfig):
            for name in node.keys():
                child = node._get_node(name)
                if isinstance(child, DictConfig) and "_target_" not in child:
                    defined = [
                        str(n)
                        for n in node.keys()
                        if isinstance(node._get_node(n), DictConfig)
                        and "_target_" in node._get_node(n)
                    ]
                    problems.append(
                        f"{group}.{name}: has no _target_, so it cannot be built{_suggest(str(name), defined)}"
                    )
    for key in cfg.keys():
        if key == "hydra":
            continue
        try:
            child = cfg[key]
        except MissingMandatoryValue:
            problems.append(f"{key}: required, but not set (`???`); set it, e.g. {key}=...")
            continue
        except OmegaConfBaseException as e:
            problems.append(f"{key}: cannot be resolved: {str(e).splitlines()[0]}")
            continue
        _walk(child, str(key), problems)
    problems += cross_checks(cfg)
    if problems:
        raise ConfigError("\n".join(dict.fromkeys(problems)))
