"""workbench: what each language-model training efficiency lever costs, and what quality it buys.

Python API (the same configs as `python train.py`):

    import workbench
    cfg = workbench.compose("moe_debug", ["budget.steps=50"])
    result = workbench.run(cfg)          # trains, logs to MLflow, returns final metrics
    df = workbench.runs()                # every finished run as a DataFrame
    res = workbench.sweep("sweeps/capacity_factor.yaml", ["n_trials=4"])   # an Optuna study; res.pareto
    rep = workbench.report("ci")         # the cost-benefit table, measured (python -m workbench.report)
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["compose", "run", "runs", "sweep", "sweep_results", "report", "ConfigError"]


def __getattr__(name: str):
    # Lazy: `import workbench` stays cheap; Lightning is imported only when a run starts.
    if name == "compose":
        from workbench.preflight import compose

        return compose
    if name == "ConfigError":
        from workbench.config import ConfigError

        return ConfigError
    if name == "run":
        from workbench.runner import run

        return run
    if name == "runs":
        from workbench.tracking.query import runs

        return runs
    if name == "sweep":
        from workbench.sweeps.study import run_sweep

        return run_sweep
    if name == "report":
        from workbench.report import build_report

        return build_report
    if name == "sweep_results":
        from workbench.sweeps.results import SweepResults

        return SweepResults.load
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")
