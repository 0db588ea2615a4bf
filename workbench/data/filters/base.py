"""The filter contract: score once, decide cheaply.

A filter is a small class with typed thresholds (`Params`, a dataclass whose defaults cite their origin) and two
methods:

- `signals(texts) -> {column: array}` computes per-document signals (word counts, ratios, a content hash, a
  MinHash signature, a classifier score) for a batch of texts. It must be a pure function of the texts and of
  the parameters named in `signal_keys`, so its columns can be cached keyed by (source content, filter name,
  those parameters, `version`) and computed in any number of worker processes with identical results.
- `decide(columns, ctx) -> reasons` turns the whole source's (or the whole mixture's) signal columns into one
  reason per document: "" keeps it, a short name (`word_count`, `near_duplicate`) says why it is dropped.
  Changing a threshold that is not in `signal_keys` re-runs only `decide`.

Column conventions: every array's first axis is the document; 2-D arrays are fine (a MinHash signature is
(n_docs, num_perm)). A ragged per-document list is two columns, `<name>.flat` and `<name>.offsets` (length
n_docs + 1), built with `ragged()`.

Filters register themselves by `name` with `@register`; the pipeline builds them from config as
`build_filter({"type": "gopher_quality", "min_words": 30})`, and an unknown key or type is a one-line error.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from workbench.config import ConfigError

REGISTRY: dict[str, type[Filter]] = {}


@dataclass
class DecideContext:
    """What `decide` may consult besides its own columns.

    ids: stable document ids, in the order of the columns.
    sources: each document's source name.
    texts: returns the texts of the given document indices (for exact checks on a few candidates).
    columns: every filter's signal columns, keyed "<filter name>/<column>" (a keep policy may use a quality score).
    """

    ids: Sequence[str]
    sources: Sequence[str]
    texts: Callable[[Sequence[int]], list[str]]
    columns: Mapping[str, np.ndarray] = field(default_factory=dict)


class Filter:
    """Base class: subclasses set `name`, `Params`, `signal_keys`, and implement `signals` and `decide`."""

    name: ClassVar[str] = ""
    Params: ClassVar[type] = object
    signal_keys: ClassVar[
        tuple[str, ...]
    ] = ()  # parameters that change the signals (the rest are thresholds)
    version: ClassVar[int] = 1  # bump when the signal computation changes, so cached columns are recomputed
    corpus_level: ClassVar[bool] = False  # True: decide compares documents (dedup); sees all sources at once

    def __init__(self, params: Any = None) -> None:
        self.params = params if params is not None else self.Params()
        self.label = self.name  # how the report names it (a mixture may use one filter type twice)

    # -- to implement -------------------------------------------------------------------------------------
    def signals(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def decide(self, columns: Mapping[str, np.ndarray], ctx: DecideContext) -> np.ndarray:
        """One reason per document (a numpy array of str): "" keeps it."""
        raise NotImplementedError

    # -- optional -----------------------------------------------------------------------------------------
    def prepare(self, source_texts: Callable[[str], list[str]]) -> None:
        """Called once before `signals`; a filter that learns (the quality classifier) trains here on the texts
        of the sources its parameters name. `source_texts(name)` returns a source's training-split texts."""

    def training_sources(self) -> list[str]:
        """Sources `prepare` learns from; the pipeline caches the prepared state keyed by their contents and
        `signal_keys`, so a rerun with new thresholds does not train again."""
        return []

    def describe(self) -> list[str]:
        """Lines for the report next to this filter's counts (e.g. the MinHash detection-probability curve)."""
        return []

    # -- helpers ------------------------------------------------------------------------------------------
    def signal_spec(self) -> dict[str, Any]:
        """What the cached signal columns depend on, besides the texts."""
        return {
            "filter": self.name,
            "version": self.version,
            **{k: getattr(self.params, k) for k in self.signal_keys},
            **self.extra_signal_spec(),
        }

    def extra_signal_spec(self) -> dict[str, Any]:
        """Anything else the signals depend on (a trained classifier's training data key)."""
        return {}

    def reasons(self) -> list[str]:
        """Every reason this filter can report (for zero rows in the report); override when dynamic."""
        return [f.name for f in dataclasses.fields(self.Params) if f.name.startswith(("min_", "max_"))]


def register(cls: type[Filter]) -> type[Filter]:
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    REGISTRY[cls.name] = cls
    return cls


def build_filter(spec: Mapping[str, Any], where: str = "data.mixture.filters") -> Filter:
    """A filter from `{"type": <name>, <param>: <value>, ...}`; one-line ConfigError on a bad type or key."""
    _load_builtin_filters()
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind not in REGISTRY:
        raise ConfigError(
            f"{where}: type={kind!r} is not a filter; choose one of: {', '.join(sorted(REGISTRY))}"
        )
    cls = REGISTRY[kind]
    fields = {f.name: f for f in dataclasses.fields(cls.Params)}
    for key in spec:
        if key not in fields:
            raise ConfigError(f"{where}.{kind}: unknown key {key!r}; allowed: {', '.join(fields)}")
    try:
        params = cls.Params(**spec)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}.{kind}: {exc}") from exc
    check = getattr(params, "check", None)
    if check is not None:
        try:
            check()
        except ValueError as exc:
            raise ConfigError(f"{where}.{kind}.{exc}") from exc
    return cls(params)


def _load_builtin_filters() -> None:
    # Importing the modules registers their filters.
    from workbench.data.filters import classifier, dedup, heuristics  # noqa: F401


def stable_hash64(data: bytes) -> int:
    """64-bit BLAKE2b of bytes (never Python's salted hash())."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def ragged(
    name: str, per_doc: Sequence[Sequence[int]] | Sequence[np.ndarray], dtype=np.uint64
) -> dict[str, np.ndarray]:
    """Columns `<name>.flat` and `<name>.offsets` for a ragged per-document list."""
    lengths = np.fromiter((len(x) for x in per_doc), dtype=np.int64, count=len(per_doc))
    offsets = np.zeros(len(per_doc) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = (
        np.concatenate([np.asarray(x, dtype=dtype) for x in per_doc]) if len(per_doc) else np.zeros(0, dtype)
    )
    return {f"{name}.flat": flat.astype(dtype, copy=False), f"{name}.offsets": offsets}


def concat_columns(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Join signal columns of consecutive document batches (ragged offsets are shifted)."""
    if not parts:
        return {}
    out: dict[str, np.ndarray] = {}
    for key in parts[0]:
        if key.endswith(".offsets"):
            pieces, base = [np.zeros(1, dtype=np.int64)], 0
            for p in parts:
                pieces.append(p[key][1:] + base)
                base += int(p[key][-1])
            out[key] = np.concatenate(pieces)
        else:
            out[key] = np.concatenate([p[key] for p in parts])
    return out
