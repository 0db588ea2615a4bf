"""Document filters for data mixtures: score once into cached signal columns, decide with cheap thresholds.

See `base.py` for the contract; `heuristics.py` (Gopher, C4, FineWeb, code, toxicity, charset), `dedup.py`
(exact and MinHash near-duplicate), `classifier.py` (a quality classifier trained in the workbench).
"""

from workbench.data.filters.base import REGISTRY, DecideContext, Filter, build_filter, register

__all__ = ["REGISTRY", "DecideContext", "Filter", "build_filter", "register"]
