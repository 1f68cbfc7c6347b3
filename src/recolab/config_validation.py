"""Check a composed config before any data is read or any model is built.

Hydra rejects a command-line override of a key that does not exist, but a key misspelled inside a
config file (an exp YAML, say) is merged silently, and `instantiate` would fail only when that
object is built: the model, after the data has been read and encoded. `validate_config` catches
it first, with a message that names the full key, the value, and what was expected:

- **unknown keys**: every `_target_` node's keys against its constructor's signature (following
  `**kwargs` up the class hierarchy, into `KWARGS_DATACLASSES` and `KWARGS_FORWARDED`), with a
  "did you mean";
  top-level keys against the primary config's keys and the config groups;
- **wrong types**: each value against the constructor's type hints (`int`, `float`, `list[int]`,
  `Literal[...]`, unions, ...); a hint it cannot judge (a protocol, a callable) is not checked;
- **impossible values**: `RULES`, one small check per parameter name, applied wherever a
  constructor takes a parameter of that name, plus `cross_checks` between groups (K larger than
  the corpus, a history sharing the vocabulary of a column that is not a sparse feature, a
  `module.optimizer` key that the chosen optimizer does not take).

The constructors keep their own checks; this pass only makes the common mistakes fail in seconds.
"""

from __future__ import annotations

import collections.abc
import difflib
import functools
import inspect
import math
import os
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, Union

import torch
from hydra._internal.utils import _locate
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

import recolab.tracking  # noqa: F401  (registers the resolvers the logger config interpolates)

#: Keys with a meaning to `hydra.utils.instantiate`, not to the constructor.
HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}

#: Constructors that pop some of their `**kwargs` into a dataclass (the rest goes to `super()`).
KWARGS_DATACLASSES = {
    "recolab.data.synthetic_video.SyntheticVideoDataModule": "recolab.data.synthetic_video.WorldParams",
    "recolab.data.retrieval.SyntheticRetrievalDataModule": "recolab.data.synthetic_video.WorldParams",
    "recolab.data.streaming.SyntheticVideoStreamingDataModule": "recolab.data.synthetic_video.WorldParams",
}

#: Constructors that keep their `**kwargs` for another callable, with the parameters that
#: constructor sets itself (not the user's to pass): Lightning's `DDPStrategy` hands them to
#: `DistributedDataParallel` (`find_unused_parameters`, `broadcast_buffers`, `static_graph`, ...),
#: its `ThroughputMonitor` to fabric's `Throughput` (`window_size`, `separator`).
KWARGS_FORWARDED = {
    "pytorch_lightning.strategies.ddp.DDPStrategy": (
        "torch.nn.parallel.DistributedDataParallel",
        {"module", "device_ids"},
    ),
    "pytorch_lightning.callbacks.throughput_monitor.ThroughputMonitor": (
        "lightning_fabric.utilities.throughput.Throughput",
        {"available_flops", "world_size"},
    ),
}


class ConfigError(ValueError):
    """An invalid config: one line per problem, each naming the full key, the value and what was expected."""


# -- rules: impossible values, by parameter name ----------------------------------------------

#: value -> None when fine, else what was expected, or (sub-key, its value, what was expected).
Rule = Callable[[Any], "str | tuple[str, Any, str] | None"]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def at_least(low: float) -> Rule:
    return lambda v: None if not _number(v) or v >= low else f"a number >= {low}"


def greater_than(low: float) -> Rule:
    return lambda v: None if not _number(v) or v > low else f"a number > {low}"


def between(low: float, high: float, *, high_open: bool = False) -> Rule:
    def rule(v: Any) -> str | None:
        ok = not _number(v) or (low <= v < high if high_open else low <= v <= high)
        return None if ok else f"a number in [{low}, {high}{')' if high_open else ']'}"

    return rule


def each(rule: Rule) -> Rule:
    def check(v: Any) -> str | None:
        if not isinstance(v, (list, tuple)):
            return None
        bad = [x for x in v if rule(x)]
        return f"every element {rule(bad[0])}" if bad else None

    return check


def epochs(v: Any) -> str | None:
    return (
        None
        if v is None or not _number(v) or v == -1 or v >= 1
        else "an integer >= 1 (or -1: no limit)"
    )


def fractions(v: Any) -> str | None:
    if v is None:
        return None
    ok = isinstance(v, (list, tuple)) and len(v) == 3 and all(_number(x) and x >= 0 for x in v)
    if not ok or not math.isclose(sum(v), 1.0, abs_tol=1e-6):
        return "3 non-negative numbers (train, val, test) summing to 1"
    return None


def split(v: Any) -> tuple[str, Any, str] | None:
    if not isinstance(v, dict):
        return None
    kind = v.get("kind", "time")
    if kind not in ("time", "random", "column"):
        return "kind", kind, "one of 'time', 'random', 'column'"
    if kind == "column" and not v.get("column"):
        return (
            "column",
            v.get("column"),
            "the column holding train/val/test (split.kind is 'column')",
        )
    if kind != "column" and (problem := fractions(v.get("fractions"))):
        return "fractions", v.get("fractions"), problem
    return None


def sequences(v: Any) -> tuple[str, Any, str] | None:
    if not isinstance(v, dict):
        return None
    for name, spec in v.items():
        max_len = spec.get("max_len") if isinstance(spec, dict) else None
        if not (isinstance(max_len, int) and not isinstance(max_len, bool) and max_len >= 1):
            return f"{name}.max_len", max_len, "an integer >= 1 (the history length kept)"
    return None


#: The seeds torch, numpy and Lightning's `seed_everything` accept.
MAX_SEED = 2**32 - 1


def seed(v: Any) -> str | None:
    ok = v is None or (isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_SEED)
    return None if ok else f"an integer in [0, {MAX_SEED}] (0 to 2**32 - 1)"


def batch_limit(v: Any) -> str | None:
    """`trainer.limit_train_batches`, `limit_test_batches`: none of them would leave a model
    untrained (or untested) and reported complete."""
    if v is None or not _number(v) or (isinstance(v, int) and v >= 1) or 0 < v <= 1:
        return None
    return "an integer >= 1 (batches) or a fraction in (0, 1] (0 runs no batch)"


def val_interval(v: Any) -> str | None:
    if not _number(v) or (isinstance(v, int) and v >= 1) or (isinstance(v, float) and 0 < v <= 1):
        return None
    return "an integer >= 1 (training batches) or a fraction of the epoch in (0, 1]"


#: Impossible values, keyed by constructor parameter name (wherever that name appears).
RULES: dict[str, Rule] = {
    "lr": greater_than(0),
    "weight_decay": at_least(0),
    "temperature": greater_than(0),
    "dropout": between(0, 1, high_open=True),
    "num_experts": at_least(1),
    "num_levels": at_least(1),
    "num_task_experts": at_least(0),
    "num_shared_experts": at_least(0),
    "num_interests": at_least(1),
    "embedding_dim": at_least(1),
    "expert_dims": each(at_least(1)),
    "tower_dims": each(at_least(1)),
    "bottom_dims": each(at_least(1)),
    "hidden_dims": each(at_least(1)),
    "batch_size": at_least(1),
    "eval_batch_size": at_least(1),
    "history_len": at_least(1),
    "sequences": sequences,
    "num_users": at_least(1),
    "num_items": at_least(1),
    "num_impressions": at_least(1),
    "slate_size": at_least(1),
    "num_categories": at_least(1),
    "latent_dim": at_least(1),
    "days": at_least(1),
    "zipf_exponent": greater_than(0),
    "task_correlation": between(-1, 1),
    "correlation": between(-1, 1),
    "num_rows": at_least(10),
    "num_sines": at_least(0),
    "noise_std": at_least(0),
    "min_watch_ratio": between(0, 1),
    "num_negatives": at_least(0),
    "ks": each(at_least(1)),
    "max_epochs": epochs,
    "patience": at_least(0),
    "every_n_train_steps": at_least(0),
    "fractions": fractions,
    "split": split,
    "seed": seed,
    "max_steps": epochs,
    "limit_train_batches": batch_limit,
    "limit_test_batches": batch_limit,
    "accumulate_grad_batches": at_least(1),
    "check_val_every_n_epoch": at_least(1),
    "val_check_interval": val_interval,
    "min_epochs": at_least(0),
}


# -- signatures and type hints ------------------------------------------------------------------


@functools.cache
def accepted_parameters(target: Any) -> tuple[dict[str, tuple[inspect.Parameter, Any]], bool]:
    """`{name: (parameter, type hint)}` a target accepts, and whether it accepts any other name.

    A class's `__init__` that takes `**kwargs` passes them on: the parameters of the next
    `__init__` up the MRO (its `super().__init__(**kwargs)`), and the fields of a dataclass it
    pops them into (`KWARGS_DATACLASSES`), are accepted too.
    """
    if not isinstance(target, type):
        fn = inspect.unwrap(target)
        params = {n: (p, _hint(fn, p)) for n, p in inspect.signature(fn).parameters.items()}
        return _named(params), any(p.kind is p.VAR_KEYWORD for p, _ in params.values())
    out: dict[str, tuple[inspect.Parameter, Any]] = {}
    for cls in target.__mro__:
        if cls is object or "__init__" not in vars(cls):
            continue
        fn = inspect.unwrap(vars(cls)["__init__"])
        params = {
            n: (p, _hint(fn, p)) for n, p in inspect.signature(fn).parameters.items() if n != "self"
        }
        for name, value in _named(params).items():
            out.setdefault(name, value)
        extra = KWARGS_DATACLASSES.get(f"{cls.__module__}.{cls.__qualname__}")
        if extra:
            fields = _locate(extra)
            hints = typing.get_type_hints(fields)
            for name in fields.__dataclass_fields__:
                out.setdefault(
                    name,
                    (inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY), hints.get(name, Any)),
                )
        forwarded = KWARGS_FORWARDED.get(f"{cls.__module__}.{cls.__qualname__}")
        if forwarded:  # its **kwargs end in another callable's named parameters
            target_params, _ = accepted_parameters(_locate(forwarded[0]))
            for name, value in target_params.items():
                if name not in forwarded[1]:
                    out.setdefault(name, value)
            return out, False
        if not any(p.kind is p.VAR_KEYWORD for p, _ in params.values()):
            return out, False
    return out, True


def _named(
    params: dict[str, tuple[inspect.Parameter, Any]],
) -> dict[str, tuple[inspect.Parameter, Any]]:
    return {
        n: v
        for n, v in params.items()
        if v[0].kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    }


def _hint(fn: Any, param: inspect.Parameter) -> Any:
    """The parameter's type hint, evaluated; `Any` when it cannot be (a name only imported for typing)."""
    annotation = param.annotation
    if annotation is inspect.Parameter.empty:
        return Any
    if isinstance(annotation, str):
        try:
            annotation = eval(annotation, getattr(fn, "__globals__", {}), {})  # noqa: S307 (the module's own annotation)
        except Exception:
            return Any
    return annotation


def matches(value: Any, hint: Any) -> bool:
    """Whether a plain config value (None, bool, int, float, str, list, dict) fits a type hint.

    Lenient where the hint is not a plain data type: anything it cannot judge passes.
    """
    if hint is Any or hint is inspect.Parameter.empty or isinstance(hint, typing.TypeVar):
        return True
    if isinstance(value, dict) and "_target_" in value:
        return True  # a nested node: instantiate builds the object
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin is typing.Annotated:
        return matches(value, args[0])
    if hint is None or hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return _number(value)
    if hint is str:
        return isinstance(value, str)
    if origin in (
        list,
        tuple,
        set,
        frozenset,
        collections.abc.Sequence,
        collections.abc.Iterable,
        collections.abc.Collection,
    ) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args))
        return all(matches(v, args[0]) for v in value) if args else True
    if origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping) or hint is dict:
        if not isinstance(value, dict):
            return False
        return (
            all(matches(k, args[0]) and matches(v, args[1]) for k, v in value.items())
            if args
            else True
        )
    if isinstance(hint, type) and hint in (list, dict, tuple):
        return isinstance(value, hint)
    return True


def describe(hint: Any) -> str:
    """A type hint as a reader would write it: `int`, `list[int]`, `bool | str`, `one of 'a', 'b'`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        literals = [x for a in args if typing.get_origin(a) is Literal for x in typing.get_args(a)]
        others = [describe(a) for a in args if typing.get_origin(a) is not Literal]
        return " | ".join(([describe(Literal[tuple(literals)])] if literals else []) + others)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if hint is None or hint is type(None):
        return "null"
    if origin is not None and args:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join('...' if a is Ellipsis else describe(a) for a in args)}]"
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", tuple: "a list", type(None): "null"}.get(
        type(value), type(value).__name__
    )


# -- walking the config --------------------------------------------------------------------------


def _plain(node: Any) -> Any:
    return (
        OmegaConf.to_container(node, resolve=True)
        if isinstance(node, (DictConfig, ListConfig))
        else node
    )


def _suggest(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_node(node: DictConfig, key: str, problems: list[str]) -> None:
    """Check one `_target_` node (and, recursively, the nodes inside it)."""
    target_path = node.get("_target_")
    try:
        target = _locate(target_path)
    except Exception as e:
        module, _, name = str(target_path).rpartition(".")
        hint = ""
        try:
            hint = _suggest(name, dir(_locate(module)))
        except Exception:
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
        except MissingMandatoryValue:
            problems.append(f"{full}: required, but not set (`???`); set it, e.g. {full}=...")
            continue
        except OmegaConfBaseException as e:
            problems.append(f"{full}: cannot be resolved: {str(e).splitlines()[0]}")
            continue
        _walk(child, full, problems)
        try:
            value = _plain(child)
        except OmegaConfBaseException as e:
            problems.append(f"{full}: cannot be resolved: {str(e).splitlines()[0]}")
            continue
        hint = params[name][1]
        if not matches(value, hint):
            problems.append(f"{full}={value!r}: expected {describe(hint)}, got {_type_name(value)}")
            continue
        rule = RULES.get(name)
        if rule is not None and (expected := rule(value)):
            if isinstance(expected, tuple):
                sub, value, expected = expected
                full = f"{full}.{sub}"
            problems.append(f"{full}={value!r}: expected {expected}")
        if name == "tasks" and isinstance(value, list):
            _check_tasks(value, full, problems)


def _check_tasks(tasks: list[Any], key: str, problems: list[str]) -> None:
    """Each `data.tasks` entry against `recolab.data.schema.Task`'s fields."""
    from recolab.data.schema import Task

    params, _ = accepted_parameters(Task)
    if not tasks:
        problems.append(f"{key}=[]: expected at least one task")
    for i, task in enumerate(tasks):
        where = f"{key}[{i}]"
        if not isinstance(task, dict):
            problems.append(
                f"{where}={task!r}: expected a mapping like {{name: click, kind: binary}}"
            )
            continue
        if "name" not in task:
            problems.append(f"{where}: expected a `name` (the label column)")
        for name, value in task.items():
            if name not in params:
                problems.append(
                    f"{where}.{name}: unknown key for Task{_suggest(name, params)} (valid keys: {', '.join(params)})"
                )
            elif not matches(value, params[name][1]):
                problems.append(f"{where}.{name}={value!r}: expected {describe(params[name][1])}")
            elif name == "weight" and value < 0:
                problems.append(f"{where}.weight={value!r}: expected a number >= 0")


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
    example = "module.optimizer._target_=torch.optim.Adagrad, +module.optimizer.fused=false"
    if not isinstance(node, dict) or "_target_" not in node:
        return [
            f"module.optimizer={node!r}: expected a torch optimizer node "
            f"{{_target_: torch.optim.Adam, _partial_: true, ...}}, its keys the optimizer's own "
            f"(e.g. {example})"
        ]
    import torch

    try:
        cls = _locate(node["_target_"])
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
