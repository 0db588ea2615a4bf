"""`python -m workbench.data [overrides] report`: build a config's data (mixture) and print its report.

    python -m workbench.data +experiment=data_filtered report
    python -m workbench.data +experiment=data_filtered data.mixture.filters.charset.min_script_fraction=0.8 report

Nothing is trained. Signals are cached, so a second call with another threshold only re-decides.
"""

from __future__ import annotations

import argparse
import json
import sys

COMMANDS = ("report",)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench.data", description=__doc__.splitlines()[0])
    parser.add_argument("args", nargs="+", help="Hydra overrides, then the command: report")
    parser.add_argument("--json", help="also write the report as JSON to this file")
    parser.add_argument("--no-progress", action="store_true")
    ns = parser.parse_args(argv)
    *overrides, command = ns.args
    if command not in COMMANDS:
        print(
            f"error: the last argument must be a command ({', '.join(COMMANDS)}), got {command!r}",
            file=sys.stderr,
        )
        return 2

    from workbench.config import ConfigError, compose_dictconfig, to_object
    from workbench.data import validate_data

    try:
        cfg = to_object(compose_dictconfig(None, overrides))
        validate_data(cfg.data)
        if cfg.data.source != "mixture":
            from workbench.data.corpus import build_corpus

            corpus = build_corpus(cfg.data)
            print(json.dumps({k: v for k, v in corpus.stats.items() if not k.endswith("examples")}, indent=1))
            return 0
        from workbench.data.mixture import build_mixture
        from workbench.data.report import render

        result = build_mixture(cfg.data, progress=not ns.no_progress)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    render(result.report)
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump(result.report, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
