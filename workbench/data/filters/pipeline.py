"""`data.mixture.filters` as a pipeline: filters addressed by name, parsed without being built.

    filters:
      gopher_quality: {min_words: 30}                  # type defaults to the name
      minhash_strict: {type: minhash, threshold: 0.9}  # one filter type twice, under two names
      toxicity: {enabled: false}                       # off for an ablation
    order: [gopher_quality, minhash_strict, toxicity]  # empty: the mapping's order

Each entry's `type` (default: its name) picks a registered filter type and `enabled` (default true) keeps it in
the pipeline; every other key is a parameter of that type's `Params`, checked by `workbench.config.params.parse`,
so an override such as `data.mixture.filters.gopher_quality.min_words=30` names its filter, whatever the order of
the YAML. `parse_pipeline` gives the enabled filters' `FilterSpec`s in application order (cheap: validation runs it
on every check); `FilterSpec.build()` constructs the filter, which `build_mixture` does once per filter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from workbench.config.errors import ConfigError
from workbench.config.params import field_names, key_of, must, not_allowed, parse, unknown_key
from workbench.data.filters.base import FILTERS_KEY, REGISTRY, Filter

ORDER_KEY = "data.mixture.order"
FORM = "filters are addressed by name: data.mixture.filters.<name>.<param>=<value>"
ENTRY_KEYS = ("type", "enabled")  # what an entry holds besides its type's parameters


@dataclass(frozen=True)
class FilterSpec:
    """One enabled filter of a mixture: its name (the report's label), its type and its checked parameters."""

    name: str
    cls: type[Filter]
    params: Any

    def build(self) -> Filter:
        return self.cls(self.params, self.name)


def parse_filter(name: str, entry: Mapping[str, Any] | None, where: str = FILTERS_KEY) -> FilterSpec | None:
    """The spec of `<where>.<name>`; None when it is disabled. One-line ConfigError on a bad type or value."""
    key = key_of(where, name)
    if entry is not None and not isinstance(entry, Mapping):
        raise must(key, entry, "a mapping of the filter's parameters (or {} for its defaults)")
    values = dict(entry or {})
    kind = values.pop("type", name)
    if kind not in REGISTRY:
        error = not_allowed(key_of(key, "type"), kind, sorted(REGISTRY))
        raise ConfigError(
            f"{error} (type defaults to the filter's name)" if "type" not in (entry or {}) else error
        )
    cls = REGISTRY[kind]
    allowed = [*ENTRY_KEYS, *field_names(cls.Params)]
    for k in values:
        if k not in allowed:
            raise unknown_key(key_of(key, k), allowed)
    enabled = values.pop("enabled", True)
    if not isinstance(enabled, bool):
        raise must(key_of(key, "enabled"), enabled, "true or false")
    params = parse(cls.Params, values, key)
    return FilterSpec(name, cls, params) if enabled else None


def parse_pipeline(filters: Mapping[str, Any], order: Sequence[str] = ()) -> list[FilterSpec]:
    """The enabled filters of `data.mixture.filters`, in `order` (or the mapping's order when it is empty)."""
    if not isinstance(filters, Mapping):
        raise must(FILTERS_KEY, filters, f"a mapping of filter name -> parameters ({FORM})")
    names = [str(n) for n in filters]
    for name in names:
        if name.isdigit():  # `+data.mixture.filters.2.min_words=3`: the list positions of old configs
            raise unknown_key(key_of(FILTERS_KEY, name), [n for n in names if not n.isdigit()], FORM)
    if order:
        _check_order(list(order), names)
    specs = [parse_filter(name, filters[name]) for name in (order or names)]
    return [s for s in specs if s is not None]


def _check_order(order: list[str], names: list[str]) -> None:
    """`order` must name every filter of the mapping exactly once (enabled or not)."""
    missing = [n for n in names if n not in order]
    unknown = [n for n in order if n not in names]
    repeated = sorted({n for n in order if order.count(n) > 1})
    problems = [
        f"{what}: {', '.join(found)}"
        for what, found in (("missing", missing), ("not a filter", unknown), ("repeated", repeated))
        if found
    ]
    if problems:
        raise must(ORDER_KEY, order, f"each name of {FILTERS_KEY} once, or empty ({'; '.join(problems)})")


def build_pipeline(specs: Sequence[FilterSpec]) -> list[Filter]:
    """The filters of a run, each constructed exactly once."""
    return [spec.build() for spec in specs]


def build_filter(entry: Mapping[str, Any], name: str | None = None) -> Filter:
    """One filter from a config mapping, e.g. `build_filter({"type": "gopher_quality", "min_words": 30})`
    (notebooks and tests); `name` defaults to the type. A disabled entry is a ConfigError."""
    name = name or str(entry.get("type", ""))
    spec = parse_filter(name, entry)
    if spec is None:
        raise must(key_of(key_of(FILTERS_KEY, name), "enabled"), False, "true to build the filter")
    return spec.build()
