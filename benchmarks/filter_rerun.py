"""Score once, decide cheaply: a data pipeline rerun after one threshold change, against its first run.

Builds conf/data/mixture_all_filters.yaml (standard-library code, prose, synthetic arithmetic and sorting tasks,
injected copies and junk; every filter kind) with all of `code`, filtered too, from an empty cache; then
builds it again with one threshold changed (`gopher_quality.min_words` 20 -> 30), in one process. The rerun reads
the cached sources, signal columns and trained classifier and only decides. Prints one JSON record; target:
rerun <= 10% of the first run.

    python benchmarks/filter_rerun.py [--workers 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import harness

import workbench
from workbench.data.mixture import build_mixture


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--allocator", choices=harness.ALLOCATORS, default="fixed")
    args = ap.parse_args()
    allocator = harness.set_allocator(args.allocator)
    load = harness.LoadMeter()
    with tempfile.TemporaryDirectory() as tmp:

        def build(min_words: int):
            cfg = workbench.compose(
                "dense_debug",
                [
                    "data=mixture_all_filters",
                    f"data.cache_dir={tmp}",
                    "data.mixture.sources.code.max_docs=null",
                    "data.mixture.sources.code.filter=true",  # all of the stdlib through every filter too
                    f"data.mixture.workers={args.workers}",
                    f"data.mixture.filters.gopher_quality.min_words={min_words}",
                ],
            )
            t0 = time.perf_counter()
            result = build_mixture(cfg.data, progress=False)
            return time.perf_counter() - t0, result.report

        first_s, first = build(20)
        rerun_s, rerun = build(30)
    ratio = rerun_s / first_s
    record = {
        "benchmark": "filter_rerun",
        "allocator": allocator,
        "docs_in": first["docs_in"],
        "filters": len(first["filters"]),
        "first_run_s": round(first_s, 2),
        "rerun_s": round(rerun_s, 2),
        "rerun_over_first": round(ratio, 4),
        "signal_tasks": {
            "first_computed": first["signal_tasks_computed"],
            "rerun_cached": rerun["signal_tasks_cached"],
            "rerun_computed": rerun["signal_tasks_computed"],
        },
        "kept": {"min_words_20": first["docs_kept"], "min_words_30": rerun["docs_kept"]},
        "signal_seconds_first": first["signal_seconds"],
        "target": "rerun_over_first <= 0.10",
        "meets_target": ratio <= 0.10,
    }
    record["load"] = load.record()
    harness.emit(record)


if __name__ == "__main__":
    main()
