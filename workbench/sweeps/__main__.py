"""`python -m workbench.sweeps SPEC [overrides] [--workers N]`: the command behind sweep.py."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sweep.py",
        description="Run or resume an Optuna study over workbench training configs.",
        epilog="overrides: spec fields (n_trials=8 sampler.type=grid pruner.type=none storage=journal:sweeps.log), "
        "a searched parameter to pin it (moe.drop_policy=position), or training overrides for every trial "
        "(budget.tokens=200000 +debug=default).",
    )
    parser.add_argument("spec", help="a study spec, e.g. sweeps/capacity_factor.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on a shared journal storage")
    parser.add_argument("--report", action="store_true", help="print the study's Pareto table; run nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log files, CI)")
    parser.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--verbose", action="store_true", help="show the traceback of a failure")
    args = parser.parse_args(argv)

    from workbench.config.errors import interrupt_on_signals, one_line_errors

    # SIGTERM stops a study like Ctrl-C. A worker records its interrupted trial and exits; repeated signals
    # (the terminal's Ctrl-C and the launcher's SIGTERM both reach it) do not cut that bookkeeping short.
    interrupt_on_signals(repeat="ignore" if args.worker_index is not None else "raise")
    verbose = args.verbose or os.environ.get("HYDRA_FULL_ERROR") == "1"
    try:
        with one_line_errors(verbose):
            if args.report:
                from workbench.sweeps.results import SweepResults

                SweepResults.load(args.spec, args.overrides).print()
                return 0
            from workbench.sweeps.study import run_sweep

            run_sweep(
                args.spec,
                args.overrides,
                workers=args.workers,
                progress=not args.no_progress,
                worker_index=args.worker_index,
            )
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume the study", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
