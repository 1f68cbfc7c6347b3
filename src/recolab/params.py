"""Constraints on constructor parameters, declared next to the parameter.

A constructor states what it accepts in its signature, with `typing.Annotated` constraints from
`annotated-types` (the vocabulary pydantic reads), and is decorated with `checked`:

    @checked
    def __init__(self, schema: Schema, *, num_experts: Count = 4, dropout: Rate = 0.0) -> None:

That one declaration serves twice: `checked` (pydantic's `validate_call`) enforces it when the
object is built, and `recolab.config_validation` reads the same signature to check a composed
config's `_target_` node before any data is read. A rule therefore lives in one place, and a new
parameter gets the rules of its own hint, never those of another parameter with the same name.

Rules that a type cannot state (a value that must name a registered metric, say) are pydantic
validators in the hint: `Annotated[list[str], AfterValidator(fn)]`, where `fn` raises
`ValueError` with what was expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from typing import Annotated, Any

import typing_extensions
from annotated_types import Ge, Gt, Le, Lt, MinLen
from omegaconf import DictConfig, ListConfig, OmegaConf
from pydantic import BeforeValidator, ConfigDict, ValidationError, validate_call


def _not_a_boolean(value: Any) -> Any:
    if isinstance(value, bool):  # pydantic's lax mode would read true as 1
        raise ValueError("a number, not true or false")
    return value


#: Numbers only: `true` is not 1.
_Number = BeforeValidator(_not_a_boolean)

#: A number of things, a size, a width: an integer >= 1.
Count = Annotated[int, _Number, Ge(1)]
#: A number of things that may be none: an integer >= 0.
Count0 = Annotated[int, _Number, Ge(0)]
#: A strictly positive number (a learning rate, a temperature).
Positive = Annotated[float, _Number, Gt(0)]
#: A number >= 0 (a weight decay, a noise level).
NonNegative = Annotated[float, _Number, Ge(0)]
#: A rate in [0, 1): dropout.
Rate = Annotated[float, _Number, Ge(0), Lt(1)]
#: A probability or fraction in [0, 1].
Probability = Annotated[float, _Number, Ge(0), Le(1)]
#: A correlation in [-1, 1].
Correlation = Annotated[float, _Number, Ge(-1), Le(1)]
#: Hidden layer widths, each >= 1 (may be empty: no hidden layer).
Widths = list[Count]
#: Hidden layer widths with at least one layer.
Layers = Annotated[list[Count], MinLen(1)]

#: How constructors are checked: their own types (a `Schema`, a factory) by `isinstance` or
#: `callable`; plain values in pydantic's lax mode, so a YAML list arrives as a `list`.
CHECKED = ConfigDict(arbitrary_types_allowed=True)


class ArgumentError(ValueError):
    """Arguments that break a constructor's declared constraints: one line per problem."""


def checked(fn):
    """Validate the arguments of `fn` (a constructor) against its annotated signature when it is
    called; a violation raises `ArgumentError` with one line per argument, in the words of
    `explain` (`MMoE: num_experts=0: expected a number >= 1`)."""
    validated = validate_call(config=CHECKED)(fn)
    owner = fn.__qualname__.rpartition(".__init__")[0] or fn.__qualname__
    positional = list(inspect.signature(fn).parameters)  # a positional argument's loc is its index

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        args, kwargs = [_plain(a) for a in args], {k: _plain(v) for k, v in kwargs.items()}
        try:
            return validated(*args, **kwargs)
        except ValidationError as e:
            named = dict(zip(positional, args)) | kwargs
            hints = typing.get_type_hints(fn, include_extras=True)
            lines = explain(
                e,
                named,
                prefix="",
                positional=positional,
                unknown=lambda loc: (
                    f" for {owner}{suggest(str(loc[0]), positional)}"
                    if len(loc) == 1
                    else unknown_key(hints.get(loc[0]), loc[1:])
                ),
            )
            raise ArgumentError("\n".join(f"{owner}: {line}" for line in lines)) from None

    return call


def _plain(value: Any) -> Any:
    """Hydra passes a config's lists and mappings as OmegaConf containers: plain ones here, as
    `_convert_: all` would make them, so that they validate as the lists and dicts they are."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def suggest(name: str, choices: Iterable[str]) -> str:
    """`; did you mean 'x'?` for the closest of `choices`, or nothing."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _members(hint: Any) -> list[Any]:
    """The types a hint may hold, `Annotated` and unions unwrapped, `None` left out."""
    while typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(hint) for m in _members(a) if m is not type(None)]
    return [hint]


def _keys(hint: Any) -> dict[str, Any] | None:
    """A TypedDict's or dataclass's keys and their hints (None for any other type)."""
    if dataclasses.is_dataclass(hint) or typing_extensions.is_typeddict(hint):
        return typing.get_type_hints(hint, include_extras=True)
    return None


def unknown_key(hint: Any, loc: list[Any]) -> str:
    """` for <type>; did you mean ...? (valid keys: ...)`: the mapping type at `loc`'s parent."""
    for part in loc[:-1]:
        nxt = None
        for member in _members(hint):
            keys, args = _keys(member), typing.get_args(member)
            if keys is not None and part in keys:
                nxt = keys[part]
            elif isinstance(part, int) and args:
                nxt = args[0]
            elif isinstance(part, str) and len(args) == 2:
                nxt = args[1]
            if nxt is not None:
                break
        if nxt is None:
            return ""
        hint = nxt
    for member in _members(hint):
        if (keys := _keys(member)) is not None:
            name = str(loc[-1])
            return f" for {member.__name__}{suggest(name, keys)} (valid keys: {', '.join(keys)})"
    return ""


# -- pydantic's errors in recolab's words -------------------------------------------------------

#: Error types that mean "not of the expected type": the message adds what was given.
_TYPE_ERRORS = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "tuple_type": "a list",
    "set_type": "a list",
    "dict_type": "a mapping",
    "mapping_type": "a mapping",
    "none_required": "null",
    "callable_type": "a callable",
}


def type_name(value: Any) -> str:
    """A value's type as a config user reads it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _phrase(error: dict[str, Any]) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind in _TYPE_ERRORS:
        return _TYPE_ERRORS[kind]
    if kind == "greater_than_equal":
        return f"a number >= {ctx['ge']}"
    if kind == "greater_than":
        return f"a number > {ctx['gt']}"
    if kind == "less_than":
        return f"a number < {ctx['lt']}"
    if kind == "less_than_equal":
        return f"a number <= {ctx['le']}"
    if kind == "literal_error":
        return f"one of {ctx['expected']}"
    if kind == "too_short":
        return f"at least {ctx['min_length']} element(s)"
    if kind == "too_long":
        return f"at most {ctx['max_length']} element(s)"
    if kind in ("dataclass_type", "model_type"):
        return f"a {ctx.get('class_name', 'mapping')} (or a mapping of its fields)"
    if kind == "is_instance_of":
        return f"an instance of {ctx['class']}"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    return error["msg"]


def _path(prefix: str, loc: Sequence[Any]) -> str:
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _follow(value: Any, loc: Sequence[Any]) -> tuple[list[Any], Any, bool]:
    """The error location without pydantic's union-member tags, the input found there, and
    whether it was found (a missing key's location ends past the input)."""
    kept: list[Any] = []
    for part in loc:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif (
            isinstance(value, (list, tuple))
            and isinstance(part, int)
            and -len(value) <= part < len(value)
        ):
            value = value[part]
        elif isinstance(value, dict) and isinstance(part, str) and not _is_tag(part):
            return (
                [*kept, part],
                None,
                False,
            )  # a key the input lacks (missing) or should not have (extra)
        else:
            continue  # a union member's tag, e.g. 'int' or "literal['a','b']"
        kept.append(part)
    return kept, value, True


def _is_tag(part: str) -> bool:
    """Whether a location part is pydantic's name of a union member (`int`, `list[int]`,
    `literal['a','b']`, `function-after[...]`) rather than a key."""
    return part in _MEMBER_TAGS or "[" in part


_MEMBER_TAGS = {"int", "float", "str", "bool", "none", "list", "dict", "tuple", "callable"}


def explain(
    error: ValidationError,
    values: Any,
    *,
    prefix: str,
    unknown: Callable[[list[Any]], str] | None = None,
    positional: Sequence[str] = (),
) -> list[str]:
    """One line per offending value of `values` (the arguments by name): `<prefix>.<key>=<value>:
    expected <what>` (`, got <type>` where the type is wrong), the alternatives of a union joined
    by "or"; unknown and missing keys by name."""
    grouped: dict[str, tuple[Any, bool, list[dict[str, Any]]]] = {}
    locs: dict[str, list[Any]] = {}
    for e in error.errors(include_url=False):
        loc = [p for p in e["loc"] if p != "kwargs"]
        if positional and loc and isinstance(loc[0], int):  # a call's positional argument
            loc[0] = positional[loc[0]]
        loc, value, found = _follow(values, loc)
        key = _path(prefix, loc)
        grouped.setdefault(key, (value, found, []))[2].append(e)
        locs[key] = loc
    lines = []
    for key, (value, found, errors) in grouped.items():
        kinds = {e["type"] for e in errors}
        if "extra_forbidden" in kinds or "unexpected_keyword_argument" in kinds:
            lines.append(f"{key}: unknown key{unknown(locs[key]) if unknown else ''}")
        elif "missing" in kinds or "missing_keyword_only_argument" in kinds or not found:
            lines.append(f"{key}: required, but not set")
        else:
            literals = [e["ctx"]["expected"] for e in errors if e["type"] == "literal_error"]
            phrases = list(
                dict.fromkeys(_phrase(e) for e in errors if e["type"] != "literal_error")
            )
            if literals:  # the members of every Literal of a union, as one list
                phrases.insert(0, f"one of {', '.join(literals)}")
            if len(phrases) > 1 and value is not None:  # "or null" says nothing to a value
                phrases = [p for p in phrases if p != "null"]
            got = f", got {type_name(value)}" if kinds <= set(_TYPE_ERRORS) else ""
            lines.append(f"{key}={value!r}: expected {' or '.join(phrases)}{got}")
    return lines
