"""What pruning saves: one seeded study run twice in one process, without and with a pruner.

The study searches the learning rate and warmup of the debug MoE model (log-uniform lr over three decades,
so part of the space is bad). The sampler is Optuna's seeded RandomSampler, which ignores results, so both
studies train exactly the same configurations in the same order and any difference is the pruner's.
Training is deterministic, so "the same best value" is an exact comparison. One pair of studies per sampler
seed (the saving depends on where the good trials fall in the order). Prints one JSON record; `steps_ratio`
is training steps without pruning over steps with it, summed over seeds (target >= 2 at the same best value
for every seed); `min_seed_steps_ratio` is the worst seed's.

    python benchmarks/sweep_pruning.py [--trials 20] [--steps 60] [--pruner percentile] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import harness
import yaml


def study(tmp: Path, name: str, args, pruner: dict) -> dict:
    from workbench.sweeps.study import run_sweep

    spec = {
        "experiment": "moe_debug",
        "overrides": [
            f"budget.steps={args.steps}",
            f"trainer.val_every_n_steps={args.val_every}",
            "trainer.val_batches=4",
            "tracking.enabled=false",
            f"data.cache_dir={tmp / 'data'}",
            f"trainer.num_threads={args.threads}",
        ],
        "params": {
            "trainer.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "trainer.warmup_steps": {"type": "int", "low": 0, "high": 20},
        },
        "objectives": [{"metric": "val/bpb"}],
        "sampler": {"type": "random", "seed": args.seed},
        "pruner": pruner,
        "n_trials": args.trials,
        "storage": f"sqlite:///{tmp / (name + '.db')}",
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    t0 = time.perf_counter()
    res = run_sweep(path, quiet=True)
    wall = time.perf_counter() - t0
    df = res.trials
    best = df[df["state"] == "COMPLETE"].sort_values("val/bpb").iloc[0]
    return {
        "steps": int(df["train_steps"].sum()),
        "best": float(best["val/bpb"]),
        "best_trial": int(best["number"]),
        "pruned": int((df["state"] == "PRUNED").sum()),
        "wall_s": round(wall, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--val-every", type=int, default=10)
    ap.add_argument("--pruner", default="percentile", choices=["median", "percentile", "hyperband"])
    ap.add_argument("--percentile", type=float, default=25.0)
    ap.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampler seeds, one study pair each"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--allocator", choices=harness.ALLOCATORS, default="fixed")
    args = ap.parse_args()
    allocator = harness.set_allocator(args.allocator)
    load = harness.LoadMeter()

    pruner = {"type": args.pruner, "n_startup_trials": 3, "n_warmup_steps": args.val_every}
    if args.pruner == "percentile":
        pruner["percentile"] = args.percentile
    if args.pruner == "hyperband":
        pruner = {"type": "hyperband", "min_resource": args.val_every, "reduction_factor": 3}
    per_seed = []
    for seed in args.seeds:
        args.seed = seed
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            os.environ["WORKBENCH_ROOT"] = str(tmp)  # trial outputs and stores stay in the temp folder
            base = study(tmp, "no_pruning", args, {"type": "none"})
            pruned = study(tmp, "pruning", args, pruner)
        per_seed.append(
            {
                "sampler_seed": seed,
                "no_pruning": base,
                "pruning": pruned,
                "steps_ratio": round(base["steps"] / pruned["steps"], 3),
                "same_best": base["best"] == pruned["best"] and base["best_trial"] == pruned["best_trial"],
            }
        )
    ratio = sum(r["no_pruning"]["steps"] for r in per_seed) / sum(r["pruning"]["steps"] for r in per_seed)
    wall = sum(r["no_pruning"]["wall_s"] for r in per_seed) / sum(r["pruning"]["wall_s"] for r in per_seed)
    same = all(r["same_best"] for r in per_seed)
    record = {
        "benchmark": "sweep_pruning",
        "allocator": allocator,
        "trials": args.trials,
        "steps_per_trial": args.steps,
        "pruner": pruner,
        "sampler": "random",
        "per_seed": per_seed,
        "steps_ratio": round(ratio, 3),
        "min_seed_steps_ratio": min(r["steps_ratio"] for r in per_seed),
        "wall_ratio": round(wall, 3),
        "same_best": same,
        "target": "steps_ratio >= 2 with the same best value",
        "meets_target": ratio >= 2.0 and same,
        "host": platform.node(),
    }
    record["load"] = load.record()
    harness.emit(record)


if __name__ == "__main__":
    main()
