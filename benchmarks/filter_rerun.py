"""Score once, decide cheaply: a data pipeline rerun after one threshold change, against its first run.

Builds a mixture of the embedded corpus (code and prose), a synthetic arithmetic source and injected copies and
junk through every filter kind (charset, code, Gopher quality and repetition, C4, FineWeb, toxicity, exact,
line and MinHash dedup, the quality classifier) from an empty cache, then builds it again with one threshold
changed (`gopher_quality.min_words` 50 -> 30), in one process. The rerun reads the cached sources and signal
columns and only decides. Prints one JSON record; target: rerun <= 10% of the first run.

    python benchmarks/filter_rerun.py [--workers 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import workbench
from workbench.config.schema import MixtureConfig, SourceConfig
from workbench.data.mixture import build_mixture

ROOT = Path(__file__).resolve().parents[1]


def filters(min_words: int) -> list[dict]:
    return [
        {"type": "charset"},
        {"type": "code"},
        {"type": "gopher_quality", "min_words": min_words},
        {"type": "gopher_repetition"},
        {"type": "c4"},
        {"type": "fineweb"},
        {"type": "toxicity", "words_file": str(ROOT / "tests/fixtures/toxic_words.txt")},
        {"type": "exact_dedup"},
        {"type": "line_dedup"},
        {"type": "minhash"},
        {"type": "quality_classifier", "positive": ["prose"], "negative": ["injected"], "mode": "threshold"},
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    sources = [
        SourceConfig(name="code", embedded_kinds=["code"]),
        SourceConfig(name="prose", embedded_kinds=["prose"]),
        SourceConfig(name="arithmetic", kind="synthetic", generator="arithmetic", docs=500, filter=False),
        SourceConfig(
            name="injected",
            kind="inject",
            base="code",
            docs=600,
            weight=0,  # the classifier's negative examples; every one is filtered out, so none is trained on
            params={"junk": 0.5, "exact": 0.25, "near": 0.25},
        ),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        data = workbench.compose("dense_debug", [f"data.cache_dir={tmp}", "data.max_docs=null"]).data

        def build(min_words: int):
            mix = MixtureConfig(
                sources=sources,
                filters=filters(min_words),
                validation=["code", "prose"],
                workers=args.workers,
            )
            t0 = time.perf_counter()
            result = build_mixture(dataclasses.replace(data, source="mixture", mixture=mix), progress=False)
            return time.perf_counter() - t0, result.report

        first_s, first = build(50)
        rerun_s, rerun = build(30)
    ratio = rerun_s / first_s
    record = {
        "benchmark": "filter_rerun",
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
        "kept": {"min_words_50": first["docs_kept"], "min_words_30": rerun["docs_kept"]},
        "signal_seconds_first": first["signal_seconds"],
        "target": "rerun_over_first <= 0.10",
        "meets_target": ratio <= 0.10,
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
