"""`python -m workbench runs [--fix-stale]`: the MLflow runs left RUNNING, and closing those whose process died.

A training run or sweep trial killed with SIGKILL (or lost with its machine) cannot close its MLflow run; the
next run of the same experiment on the same host closes such runs by itself. This command does it for every
experiment of the store, and with `--older-than-s N` also closes runs of other hosts that logged nothing for
N seconds (their process cannot be checked from here).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    runs = sub.add_parser("runs", help="list RUNNING MLflow runs; --fix-stale closes the dead ones as KILLED")
    runs.add_argument("--fix-stale", action="store_true", help="close runs whose process is gone")
    runs.add_argument("--older-than-s", type=float, default=None, help="also close other hosts' silent runs")
    runs.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or ./mlflow.db")
    args = parser.parse_args(argv)

    from workbench.config.errors import one_line_errors
    from workbench.tracking.session import HOST, PID, check_tracking, close_dead_runs, dead_owner

    with one_line_errors():
        client = check_tracking(args.tracking_uri, key="--tracking-uri")
        ids = [e.experiment_id for e in client.search_experiments()]
        if args.fix_stale:
            closed = close_dead_runs(client, ids, args.older_than_s)
            for run_id, reason in closed:
                print(f"closed {run_id} as KILLED: {reason}")
            print(f"{len(closed)} stale run(s) closed")
            return 0
        running = client.search_runs(ids, "attributes.status = 'RUNNING'", max_results=1000)
        for r in running:
            state = dead_owner(r.data.tags) or "alive (or on another host)"
            owner = f"{r.data.tags.get(HOST, '?')}:{r.data.tags.get(PID, '?')}"
            print(f"{r.info.run_id}  {r.info.run_name}  {owner}  {state}")
        print(f"{len(running)} RUNNING run(s); --fix-stale closes the dead ones")
    return 0


if __name__ == "__main__":
    sys.exit(main())
