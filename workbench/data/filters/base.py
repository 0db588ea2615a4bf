"""The filter contract: score once, decide cheaply.

A filter is a small class with typed thresholds (`Params`, a dataclass whose defaults cite their origin, checked
by `workbench.config.params`) and two methods:

- `signals(texts) -> {column: array}` computes per-document signals (word counts, ratios, a content hash, a
  MinHash signature, a classifier score) for a batch of texts. It must be a pure function of the texts and of
  the parameters named in `signal_keys`, so its columns can be cached keyed by (source content, filter type,
  those parameters, `version`) and computed in any number of worker processes with identical results.
- `decide(columns, ctx) -> reasons` turns the whole source's (or the whole mixture's) signal columns into one
  reason per document: "" keeps it, a short name (`word_count`, `near_duplicate`) says why it is dropped.
  Changing a threshold that is not in `signal_keys` re-runs only `decide`.

Column conventions: every array's first axis is the document; 2-D arrays are fine (a MinHash signature is
(n_docs, num_perm)). A ragged per-document list is two columns, `<name>.flat` and `<name>.offsets` (length
n_docs + 1), built with `ragged()`.

Filter types register by their `name` with `@register`; `workbench/data/filters/__init__.py` imports every
module that holds one. A mixture addresses its filters by its own names (`pipeline.py`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from workbench.config.params import bounded, check_fields, key_of

REGISTRY: dict[str, type[Filter]] = {}
FILTERS_KEY = "data.mixture.filters"


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


def fraction(default: float) -> Any:
    """A `Params` field holding a share in [0, 1]."""
    return bounded(default, ge=0, le=1)


def check_params(params: Any, where: str) -> Any:
    """Declared bounds and choices of a `Params` instance, then its own `check(where)`; returns it."""
    check_fields(params, where)
    check = getattr(params, "check", None)
    if check is not None:
        check(where)
    return params


class Filter:
    """Base class: subclasses set `name`, `Params`, `signal_keys`, and implement `signals` and `decide`."""

    name: ClassVar[str] = ""  # the filter type (registry key, cache key); a mixture may name it otherwise
    Params: ClassVar[type] = object
    # parameters that change the signals (the rest are thresholds)
    signal_keys: ClassVar[tuple[str, ...]] = ()
    version: ClassVar[int] = 1  # bump when the signal computation changes, so cached columns are recomputed
    corpus_level: ClassVar[bool] = False  # True: decide compares documents (dedup); sees all sources at once
    # parameters holding names of mixture sources (checked against the mixture; `prepare` learns from them)
    source_params: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: Any = None, label: str | None = None) -> None:
        self.label = label or self.name  # its name in data.mixture.filters: how the report names it
        self.params = check_params(params if params is not None else self.Params(), self.key)

    @property
    def key(self) -> str:
        """Where its parameters live: `data.mixture.filters.<label>`."""
        return key_of(FILTERS_KEY, self.label)

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
        return [s for key in self.source_params for s in getattr(self.params, key)]

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """What `prepare` learned, as (numeric arrays, JSON-able values): the prepared-state cache stores it
        without pickle. A filter that learns implements this and `load_state`."""
        return {}, {}

    def load_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        """Restore what `state` returned, instead of calling `prepare`."""

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
    """Class decorator: make a filter type available to `data.mixture.filters` under `cls.name`."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    REGISTRY[cls.name] = cls
    return cls


def utf8(text: str) -> bytes:
    # surrogatepass: a lone surrogate (seen in scraped text) must hash, not raise
    return text.encode("utf-8", "surrogatepass")


def drop_where(drop: np.ndarray, reason: str) -> np.ndarray:
    """`reason` where `drop` is true, "" elsewhere."""
    return np.where(drop, reason, "")


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
