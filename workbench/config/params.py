"""One way to check a config value, and one message format for every failure.

Every check in the workbench reports through these functions: the training config, each filter's, source's and
generator's parameters, and the sweep spec. Each error is one line that names the full key:

    moe.capacity_factor=-1.0 must be > 0 (use moe.dropless=true for no capacity limit)
    cost.hardware='tpu' is not allowed; choose one of: a100, h100, h200, cpu
    model.d_modle: unknown key; keys allowed in model: ffn, vocab_size, d_model, ...

Per-field bounds are declared on the schema, `capacity_factor: float = bounded(1.25, gt=0)`, and
`check_fields` enforces them (with the Enum choices of objects built in Python, which OmegaConf never saw).
`parse` builds a typed dataclass from a plain mapping by OmegaConf's strict structured merge, so a filter's
parameters get exactly the type checks and messages a YAML file gets.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from omegaconf import MISSING, DictConfig, Node, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
)

from workbench.config.errors import ConfigError

T = TypeVar("T")
BOUNDS = "workbench.bounds"  # dataclass field metadata key
HINT = "workbench.hint"  # shown after any error at (or under) the field


# -- messages -----------------------------------------------------------------------------------------------


def key_of(where: str, key: object) -> str:
    """`where.key`, or `key` at the root."""
    return f"{where}.{key}" if where else str(key)


def show(value: object) -> str:
    """A value as the user wrote it: strings quoted, None as null, Enum members by value."""
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None:
        return "null"
    return repr(value) if isinstance(value, str) else str(value)


def must(key: str, value: object, what: str) -> ConfigError:
    """`key=value must be what` (what: `> 0`, `in [0, 1)`, `an integer`, ...)."""
    return ConfigError(f"{key}={show(value)} must be {what}")


def not_allowed(key: str, value: object, allowed: Iterable[object]) -> ConfigError:
    return ConfigError(f"{key}={show(value)} is not allowed; choose one of: {', '.join(map(str, allowed))}")


def unknown_key(
    key: str, allowed: Iterable[object], hint: str = "", parent: str | None = None
) -> ConfigError:
    """`parent` names where the key was looked up, when `key` itself has dots (a parameter name)."""
    where = (key.rpartition(".")[0] if parent is None else parent) or "the root config"
    allowed = list(allowed)
    listed = ", ".join(map(str, allowed)) if allowed else "(none)"
    return ConfigError(
        f"{key}: unknown key; keys allowed in {where}: {listed}" + (f" ({hint})" if hint else "")
    )


# -- bounds declared on schemas ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Bounds:
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    hint: str = ""

    def describe(self) -> str:
        low = f"[{self.ge:g}" if self.ge is not None else (f"({self.gt:g}" if self.gt is not None else None)
        high = f"{self.le:g}]" if self.le is not None else (f"{self.lt:g})" if self.lt is not None else None)
        if low and high:
            return f"in {low}, {high}"
        if low:
            return f">= {self.ge:g}" if self.ge is not None else f"> {self.gt:g}"
        return f"<= {self.le:g}" if self.le is not None else f"< {self.lt:g}"

    def holds(self, v: float) -> bool:
        return not (
            (self.gt is not None and not v > self.gt)
            or (self.ge is not None and not v >= self.ge)
            or (self.lt is not None and not v < self.lt)
            or (self.le is not None and not v <= self.le)
        )


def bounded(
    default: Any = MISSING,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    hint: str = "",
) -> Any:
    """A dataclass field whose numeric value must lie in the given bounds (None always passes: unset)."""
    return dataclasses.field(default=default, metadata={BOUNDS: Bounds(gt, ge, lt, le, hint)})


def hinted(hint: str, default: Any = MISSING, default_factory: Any = MISSING) -> Any:
    """A dataclass field whose errors carry `hint` (say what the allowed form is)."""
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={HINT: hint})
    return dataclasses.field(default=default, metadata={HINT: hint})


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """(the type inside Optional[...], whether None is allowed)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else tp), len(args) < len(typing.get_args(tp))
    return tp, False


def enum_type(tp: Any) -> type[enum.Enum] | None:
    """The Enum behind a field type: `X`, `X | None`, `list[X]`."""
    tp, _ = _unwrap(tp)
    if typing.get_origin(tp) in (list, tuple):
        args = typing.get_args(tp)
        tp = args[0] if args else None
    return tp if isinstance(tp, type) and issubclass(tp, enum.Enum) else None


def choices(enum_cls: type[enum.Enum]) -> list[str]:
    return [str(m.value) for m in enum_cls]


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_fields(obj: Any, where: str) -> None:
    """Enforce declared bounds and Enum choices on a dataclass instance and the dataclasses inside it."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = key_of(where, f.name)
        bounds = f.metadata.get(BOUNDS)
        if bounds is not None and value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise must(key, value, "a number")
            if not bounds.holds(value):
                raise ConfigError(
                    f"{key}={show(value)} must be {bounds.describe()}"
                    + (f" ({bounds.hint})" if bounds.hint else "")
                )
        allowed = enum_type(hints.get(f.name))
        if allowed is not None and value is not None:
            values = choices(allowed)
            for v in value if isinstance(value, list | tuple) else [value]:
                if v not in values:
                    raise not_allowed(key, v, values)
        _check_nested(value, key)


def _check_nested(value: Any, key: str) -> None:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        check_fields(value, key)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            if dataclasses.is_dataclass(v):
                check_fields(v, key_of(key, k))
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            if dataclasses.is_dataclass(v):
                check_fields(v, f"{key}[{i}]")


# -- OmegaConf errors as one line -------------------------------------------------------------------------

_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def describe_type(tp: Any) -> str:
    inner, optional = _unwrap(tp)
    origin = typing.get_origin(inner) or inner
    if isinstance(inner, type) and issubclass(inner, enum.Enum):
        text = "one of: " + ", ".join(choices(inner))
    elif origin in (list, tuple):
        text = "a list"
    elif origin in (dict, Mapping) or dataclasses.is_dataclass(inner):
        text = "a mapping"
    else:
        text = _TYPE_WORDS.get(origin, getattr(origin, "__name__", str(origin)))
    return text + (" or null" if optional else "")


def _path(full_key: str) -> list[str]:
    return [p for p in re.split(r"[.\[\]]+", full_key) if p]


def key_parts(exc: OmegaConfBaseException) -> list[str]:
    """The parts of the key an OmegaConf error is about, from its nodes: a dict key with dots
    (`params.moe.capacity_factor.low`) stays one part, which splitting `full_key` at dots would break up."""
    parts = _path(getattr(exc, "full_key", None) or "")
    node, chain = getattr(exc, "parent_node", None), []
    if getattr(exc, "key", None) is not None:
        chain.append(str(exc.key))
    while node is not None and node._key() is not None:
        chain.insert(0, str(node._key()))
        node = node._get_parent()
    return chain if [p for k in chain for p in _path(k)] == parts else parts


def field_at(
    schema: type | None, full_key: str | list[str]
) -> tuple[type | None, Any, dataclasses.Field | None, str]:
    """Walk a dotted key (or its parts) from a root dataclass: (the dataclass holding the last part, the last
    part's type, its field, the hint of the nearest hinted field on the way). Dict and list levels are
    stepped through."""
    node: Any = schema
    owner: type | None = None
    tp: Any = schema
    fld: dataclasses.Field | None = None
    hint = ""
    for part in _path(full_key) if isinstance(full_key, str) else full_key:
        inner, _ = _unwrap(node)
        if dataclasses.is_dataclass(inner):
            fields = {f.name: f for f in dataclasses.fields(inner)}
            if part not in fields:
                return inner, None, None, hint
            owner, fld = inner, fields[part]
            tp = _hints(inner)[part]
            hint = fld.metadata.get(HINT, hint)
        elif typing.get_origin(inner) in (dict, list, tuple, Mapping):
            args = typing.get_args(inner)
            owner, fld = None, None
            tp = args[-1] if args else Any
        else:
            return None, None, None, hint
        node = tp
    return owner, tp, fld, hint


def omegaconf_message(exc: OmegaConfBaseException, where: str = "", schema: type | None = None) -> str:
    """One line for an OmegaConf error, from its attributes (full_key, value, object_type) and the schema."""
    full_key = getattr(exc, "full_key", None) or ""
    key = key_of(where, full_key) if full_key else where
    parts = key_parts(exc)
    owner, tp, _, hint = field_at(schema, parts) if schema is not None else (None, None, None, "")
    suffix = f" ({hint})" if hint else ""
    if isinstance(exc, ConfigAttributeError | ConfigKeyError):
        parent_type = getattr(exc, "object_type", None)
        if dataclasses.is_dataclass(parent_type):
            allowed = [f.name for f in dataclasses.fields(parent_type)]
        elif owner is not None and tp is None:
            allowed = [f.name for f in dataclasses.fields(owner)]
        else:  # an open mapping (filter parameters, tags): its keys are whatever the config set
            parent = getattr(exc, "parent_node", None)
            allowed = list(parent.keys()) if isinstance(parent, DictConfig) else []
            at_field = schema is not None and field_at(schema, parts[:-1])[2] is not None
            if not (at_field and hint):  # Hydra adds a key the composed config lacks only with a leading +
                plus = f"a key the YAML does not set needs a leading +: +{key}=..."
                hint = f"{hint}; {plus}" if hint else plus
        return str(unknown_key(key, allowed, hint))
    if isinstance(exc, MissingMandatoryValue):
        return f"{key} is not set; it has no default" + suffix
    if tp is not None:
        allowed = enum_type(tp)
        value = getattr(exc, "value", None)
        if isinstance(value, Node):  # a list or dict merge reports the wrapped node, not the value
            value = value._value()
        if allowed is not None and typing.get_origin(_unwrap(tp)[0]) is None:
            return str(not_allowed(key, value, choices(allowed))) + suffix
        if value is None:  # OmegaConf does not always carry the rejected value
            return f"{key} must be {describe_type(tp)}" + suffix
        return str(must(key, value, describe_type(tp))) + suffix
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{key}: {first}" + suffix if key else first


# -- typed parameters from plain mappings -----------------------------------------------------------------


def parse(schema: type[T], values: Mapping[str, Any] | None, where: str, file: str = "") -> T:
    """`values` merged into `schema` (OmegaConf's strict structured merge: unknown keys and wrong types fail),
    bounds and choices checked, then the schema's own `check(where)` if it has one. `file` prefixes the
    message (`sweeps/aux_loss.yaml: ...`)."""
    prefix = f"{file}: " if file else ""
    if values is not None and not isinstance(values, Mapping | DictConfig):
        raise ConfigError(
            f"{prefix}{where}={show(values)} must be a mapping of: {', '.join(field_names(schema))}"
        )
    try:
        node = OmegaConf.merge(OmegaConf.structured(schema), values or {})
        obj = OmegaConf.to_object(node)
    except OmegaConfBaseException as exc:
        unkeyed = None if getattr(exc, "full_key", None) else _scalar_for_mapping(schema, values or {}, where)
        raise ConfigError(prefix + (unkeyed or omegaconf_message(exc, where, schema))) from None
    try:
        check_fields(obj, where)
        check = getattr(obj, "check", None)
        if check is not None:
            check(where)
    except ConfigError as exc:
        raise ConfigError(prefix + str(exc)) from None
    return obj  # type: ignore[return-value]


def _scalar_for_mapping(schema: type, values: Mapping[str, Any], where: str) -> str | None:
    """The key of a scalar given where the schema has a dataclass (`sampler: tpe`), which OmegaConf's merge
    reports without any key; None if there is none."""
    hints = _hints(schema)
    for name, value in values.items():
        tp = _unwrap(hints.get(name))[0] if name in hints else None
        nested = {name: value} if dataclasses.is_dataclass(tp) else {}
        if typing.get_origin(tp) in (dict, Mapping) and isinstance(value, Mapping):
            tp = typing.get_args(tp)[-1]
            nested = {key_of(name, k): v for k, v in value.items()} if dataclasses.is_dataclass(tp) else {}
        for key, v in nested.items():
            if v is not None and not isinstance(v, Mapping):
                return str(must(key_of(where, key), v, f"a mapping of: {', '.join(field_names(tp))}"))
            found = _scalar_for_mapping(tp, v, key_of(where, key)) if v is not None else None
            if found:
                return found
    return None


def field_names(schema: type) -> list[str]:
    return [f.name for f in dataclasses.fields(schema)]


__all__ = [
    "Bounds",
    "ConfigError",
    "bounded",
    "check_fields",
    "choices",
    "describe_type",
    "enum_type",
    "field_at",
    "field_names",
    "hinted",
    "key_of",
    "key_parts",
    "must",
    "not_allowed",
    "omegaconf_message",
    "parse",
    "show",
    "unknown_key",
]
