"""`python -m workbench.report [--size full|ci] [--rerun]`: the cost-benefit table, measured (`make report`).

Trains only the runs the MLflow store lacks (a FINISHED run with the same config digest is reused), writes
`reports/cost-benefit-<size>.md` and `.html`, logs both to an MLflow run `report <size>`, and prints the table.
"""

from __future__ import annotations

import argparse
import os


def main(argv: list[str] | None = None) -> int:
    from workbench.report.levers import SIZES

    parser = argparse.ArgumentParser(prog="python -m workbench.report", description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="full", help="full: the study; ci: debug models")
    parser.add_argument("--rerun", action="store_true", help="train every run again instead of reusing")
    parser.add_argument(
        "--out", default="reports", help="folder for the Markdown and HTML (default: reports)"
    )
    parser.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or ./mlflow.db")
    parser.add_argument(
        "--experiment", default="workbench", help="MLflow experiment of the runs and the report"
    )
    parser.add_argument("--verbose", action="store_true", help="show the traceback of a failure")
    args = parser.parse_args(argv)

    from workbench.config.errors import interrupt_on_signals, one_line_errors

    interrupt_on_signals()
    with one_line_errors(args.verbose or os.environ.get("HYDRA_FULL_ERROR") == "1"):
        from workbench.report.build import build_report

        report = build_report(args.size, args.rerun, args.out, args.tracking_uri, args.experiment)
    print(report.markdown)
    print(f"trained {len(report.trained)} runs; wrote {report.paths['md']} and {report.paths['html']}")
    print(f"MLflow run {report.mlflow_run_id} (report {args.size})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
