"""Document filters for data mixtures: score once into cached signal columns, decide with cheap thresholds.

`base.py` is the contract, `pipeline.py` turns `data.mixture.filters` (filters by name) into filters. One module
per concept: `gopher.py` (Gopher quality and repetition), `web.py` (C4, FineWeb), `code.py`, `charset.py`,
`toxicity.py` (their shared rule helpers in `rules.py`), `exact.py` (exact and line/paragraph dedup),
`minhash.py` (near duplicates) and `classifier.py` (a quality classifier trained in the workbench).

A new filter is its own module, whose class carries `@register`, plus one line below.
"""

from workbench.data.filters import (  # noqa: F401  importing a module registers its filter types
    charset,
    classifier,
    code,
    exact,
    gopher,
    minhash,
    toxicity,
    web,
)
from workbench.data.filters.base import REGISTRY, DecideContext, Filter, register
from workbench.data.filters.pipeline import FilterSpec, build_filter, build_pipeline, parse_pipeline

__all__ = [
    "REGISTRY",
    "DecideContext",
    "Filter",
    "FilterSpec",
    "build_filter",
    "build_pipeline",
    "parse_pipeline",
    "register",
]
