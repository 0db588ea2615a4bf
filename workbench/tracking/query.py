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


def curves(
    run_ids: Sequence[str],
    y: str = QUALITY,
    xs: Sequence[str] = ("cost/train_flops", "cost/train_seconds"),
    tracking_uri: str | None = None,
) -> pd.DataFrame:
    """One row per (run, step at which `y` was logged): `run_id`, `step`, `y` and each of `xs` at that step
    (the last value logged at or before it), e.g. validation bits per byte against training FLOPs and
    seconds of training so far."""
    import mlflow

    quiet_mlflow_logs()
    client = mlflow.MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))

    def history_of(run_id: str, key: str) -> pd.DataFrame:  # one value per step: the last one logged there
        h = pd.DataFrame(
            [(m.step, m.value) for m in client.get_metric_history(run_id, key)], columns=["step", key]
        )
        return h.drop_duplicates("step", keep="last").sort_values("step")

    frames = []
    for run_id in run_ids:
        history = history_of(run_id, y)
        for x in xs:
            xh = history_of(run_id, x)
            history = (
                pd.merge_asof(history, xh, on="step") if len(xh) else history.assign(**{x: float("nan")})
            )
        frames.append(history.assign(run_id=run_id))
    columns = ["run_id", "step", y, *xs]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def seed_spread(curves_df: pd.DataFrame, by: str, y: str = QUALITY) -> pd.DataFrame:
    """`curves` of several seeds per group (`by`, a column such as an arm's label) as one curve per group:
    at each step the mean of every column, the standard deviation of `y` (`<y>_std`, 0 for one seed) and the
    seed count `n`."""
    grouped = curves_df.drop(columns=["run_id"]).groupby([by, "step"], sort=True)
    out = grouped.mean(numeric_only=True)
    out[f"{y}_std"] = grouped[y].std(ddof=1).fillna(0.0)
    out["n"] = grouped.size()
    return out.reset_index()


def plot_curves(spread: pd.DataFrame, x: str, by: str, y: str = QUALITY, ax=None, logx: bool = False):
    """`seed_spread` drawn as one line per group against `x`, shaded by one standard deviation over seeds;
    returns the matplotlib Axes (a new pyplot figure when `ax` is None)."""
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 4))
    for label, g in spread.groupby(by, sort=False):
        line = ax.plot(g[x], g[y], marker="o", markersize=3, label=f"{label} (n={int(g['n'].max())})")[0]
        ax.fill_between(g[x], g[y] - g[f"{y}_std"], g[y] + g[f"{y}_std"], color=line.get_color(), alpha=0.2)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(f"{y} (lower is better)")
    ax.legend(fontsize=8)
    return ax


def arm_table(df: pd.DataFrame, by: str, metrics: Sequence[str]) -> pd.DataFrame:
    """Runs of several seeds per arm (`by`) summarised: for each metric its mean and `<metric>_std` (sample
    standard deviation over seeds; 0 for one seed), and the seed count `n`; one row per arm, in first-seen
    order."""
    order = list(dict.fromkeys(df[by]))
    grouped = df.groupby(by, sort=False)
    out = grouped[list(metrics)].mean()
    std = grouped[list(metrics)].std(ddof=1).fillna(0.0)
    for m in metrics:
        out[f"{m}_std"] = std[m]
    out["n"] = grouped.size()
    return out.loc[order]


def compare_arms(df: pd.DataFrame, by: str, a: str, b: str, metric: str = QUALITY) -> dict[str, float]:
    """Arm `a` against arm `b` on `metric` over their seeds: means, difference a - b, ratio a / b, and the
    two-sided p-value of Welch's t-test (scipy.stats.ttest_ind, unequal variances; NaN with fewer than two
    seeds on either side or no spread at all)."""
    from scipy import stats

    xa = df.loc[df[by] == a, metric].astype(float).to_numpy()
    xb = df.loc[df[by] == b, metric].astype(float).to_numpy()
    if not len(xa) or not len(xb):
        raise KeyError(f"{by}: no runs of {a!r} or {b!r} with {metric}")
    spread = min(len(xa), len(xb)) >= 2 and (xa.std() > 0 or xb.std() > 0)  # a count (FLOPs) has none
    p = float(stats.ttest_ind(xa, xb, equal_var=False).pvalue) if spread else float("nan")
    return {
        "a": float(xa.mean()),
        "b": float(xb.mean()),
        "diff": float(xa.mean() - xb.mean()),
        "ratio": float(xa.mean() / xb.mean()),
        "p": p,
    }
