"""Quality over quantity: does a filtered mixture reach the unfiltered baseline's quality with fewer tokens?

Trains `data_unfiltered` (the embedded corpus plus injected exact/near copies and junk, conf/data/
mixture_injected.yaml) and `data_filtered` (the same sources through charset, code, exact and MinHash dedup
filters) with the same model, token budget and clean held-out set (the clean sources' validation split), in one
process. Reads each run's validation curve back from MLflow and reports the training tokens the filtered run
needed to reach the baseline's final val bpb. Prints one JSON record.

    python benchmarks/data_filtering.py [--tokens 1228800] [extra overrides for both runs ...]
"""

from __future__ import annotations

import argparse

import harness
import mlflow

import workbench


def curve(client, run_id: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, "val/bpb"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1228800, help="training tokens of each run")
    ap.add_argument("overrides", nargs="*", help="extra overrides for both runs (e.g. +debug=default)")
    ap.add_argument("--allocator", choices=harness.ALLOCATORS, default="fixed")
    args = ap.parse_args()
    allocator = harness.set_allocator(args.allocator)
    load = harness.LoadMeter()
    common = [f"budget.tokens={args.tokens}", f"data.mixture.tokens={args.tokens}", *args.overrides]
    results = {}
    for name in ("data_unfiltered", "data_filtered"):
        cfg = workbench.compose(name, common)
        results[name] = workbench.run(cfg, print_summary=False)
    base, filt = results["data_unfiltered"], results["data_filtered"]
    client = mlflow.MlflowClient(tracking_uri=base.tracking_uri)
    target = base.metrics["val/bpb"]
    tokens_per_step = base.metrics["cost/tokens"] / max(1, curve(client, base.run_id)[-1][0])
    reached = next(((s, v) for s, v in curve(client, filt.run_id) if v <= target), None)
    record = {
        "benchmark": "data_filtering",
        "allocator": allocator,
        "baseline": {
            "val_bpb": target,
            "tokens": base.metrics["cost/tokens"],
            "docs_kept": base.metrics["data/docs_kept"],
            "run_id": base.run_id,
        },
        "filtered": {
            "val_bpb": filt.metrics["val/bpb"],
            "tokens": filt.metrics["cost/tokens"],
            "docs_kept": filt.metrics["data/docs_kept"],
            "docs_removed": filt.metrics["data/docs_removed"],
            "run_id": filt.run_id,
            "curve": curve(client, filt.run_id),
        },
        "baseline_curve": curve(client, base.run_id),
    }
    if reached is not None:
        tokens = reached[0] * tokens_per_step
        record["filtered"]["tokens_to_reach_baseline"] = tokens
        record["filtered"]["step_reached"] = reached[0]
        record["token_saving"] = 1 - tokens / base.metrics["cost/tokens"]
    else:
        record["token_saving"] = None  # the filtered run never reached the baseline's quality
    record["meets_claim"] = record["token_saving"] is not None and record["token_saving"] > 0
    record["load"] = load.record()
    harness.emit(record)


if __name__ == "__main__":
    main()
