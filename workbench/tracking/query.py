"""Runs as DataFrames, cost-quality Pareto fronts and their plot: the notebook side of the MLflow store."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from workbench.tracking.mlflow_utils import quiet_mlflow_logs, resolve_tracking_uri

QUALITY = "val/bpb"
COST = "cost/train_flops"


def runs(
    experiment_name: str = "workbench",
    tracking_uri: str | None = None,
    names: Sequence[str] | None = None,
    run_ids: Sequence[str] | None = None,
    finished_only: bool = True,
) -> pd.DataFrame:
    """One row per run: `name`, `run_id`, and a column per metric (`val/bpb`, `cost/usd`, ...) and param.

    `names` keeps runs of those presets (the `workbench.experiment` tag); `run_ids` keeps exactly those runs.
    """
    import mlflow

    quiet_mlflow_logs()
    client = mlflow.MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))
    exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        return pd.DataFrame(columns=["name", "run_id"])
    filters = ["attributes.status = 'FINISHED'"] if finished_only else []
    found = client.search_runs([exp.experiment_id], " and ".join(filters), max_results=5000)
    rows = []
    for r in found:
        if run_ids is not None and r.info.run_id not in run_ids:
            continue
        name = r.data.tags.get("workbench.experiment", r.info.run_name)
        if names is not None and name not in names:
            continue
        rows.append(
            {
                "name": name,
                "run_id": r.info.run_id,
                "run_name": r.info.run_name,
                "start_time": pd.to_datetime(r.info.start_time, unit="ms"),
                **r.data.metrics,
                **{f"param:{k}": v for k, v in r.data.params.items()},
            }
        )
    return pd.DataFrame(rows)


def pareto_front(df: pd.DataFrame, cost: str = COST, quality: str = QUALITY) -> pd.DataFrame:
    """Rows not dominated in (lower cost, lower quality metric), sorted by cost."""
    data = df.dropna(subset=[cost, quality]).sort_values([cost, quality])
    keep, best = [], float("inf")
    for idx, q in zip(data.index, data[quality], strict=True):
        if q < best:
            keep.append(idx)
            best = q
    return data.loc[keep]


def plot_cost_quality(df: pd.DataFrame, cost: str = COST, quality: str = QUALITY, ax=None, logx: bool = True):
    """Scatter of every run with its Pareto front drawn through it; returns the matplotlib Axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    data = df.dropna(subset=[cost, quality])
    ax.scatter(data[cost], data[quality], color="tab:blue")
    for _, row in data.iterrows():
        ax.annotate(
            str(row["name"]), (row[cost], row[quality]), textcoords="offset points", xytext=(4, 4), fontsize=8
        )
    front = pareto_front(data, cost, quality)
    ax.step(front[cost], front[quality], where="post", color="tab:red", label="Pareto front")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(cost)
    ax.set_ylabel(f"{quality} (lower is better)")
    ax.legend()
    return ax
