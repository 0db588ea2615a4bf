"""Optuna studies over workbench configs: `python sweep.py sweeps/<spec>.yaml [overrides] [--workers N]`.

from workbench.sweeps import run_sweep, load_results
res = run_sweep("sweeps/capacity_factor.yaml", ["n_trials=4", "+debug=default"])
res.trials, res.pareto           # DataFrames
res.plot("param_importances")    # Optuna's plots (matplotlib)
"""

from __future__ import annotations

__all__ = ["SweepResults", "load_results", "load_spec", "run_sweep"]


def __getattr__(name: str):
    # Lazy: importing the package does not import Optuna, MLflow or Lightning.
    if name == "load_spec":
        from workbench.sweeps.spec import load_spec

        return load_spec
    if name == "run_sweep":
        from workbench.sweeps.study import run_sweep

        return run_sweep
    if name in ("SweepResults", "load_results"):
        from workbench.sweeps.results import SweepResults

        return SweepResults if name == "SweepResults" else SweepResults.load
    raise AttributeError(f"module 'workbench.sweeps' has no attribute {name!r}")
