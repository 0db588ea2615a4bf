"""A study's results for people: trials and the cost-vs-quality Pareto front as DataFrames, the printed
Pareto table, Optuna's standard plots, and the artifacts of the study's MLflow parent run."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState
from rich.table import Table

from workbench.sweeps import trial as T
from workbench.sweeps.spec import Objective, SweepSpec, load_spec
from workbench.sweeps.storage import PARENT, counts, default_storages, open_storage, resolve_storage
from workbench.sweeps.ui import console

PLOTS = (
    "pareto_front",
    "optimization_history",
    "param_importances",
    "parallel_coordinate",
    "slice",
    "contour",
    "intermediate_values",
    "timeline",
    "edf",
)


def non_dominated(df: pd.DataFrame, objectives: tuple[Objective, ...]) -> pd.DataFrame:
    """Rows no other row beats in every objective (and strictly in one), sorted by the last (cost) column."""
    cols = [o.metric for o in objectives]
    data = df.dropna(subset=cols)
    signs = [1.0 if o.direction == "minimize" else -1.0 for o in objectives]
    pts = [
        [s * float(v) for s, v in zip(signs, row, strict=True)] for row in data[cols].itertuples(index=False)
    ]
    keep = []
    for i, p in enumerate(pts):
        dominated = any(
            all(q[j] <= p[j] for j in range(len(p))) and any(q[j] < p[j] for j in range(len(p)))
            for k, q in enumerate(pts)
            if k != i
        )
        if not dominated:
            keep.append(data.index[i])
    return data.loc[keep].sort_values(cols[::-1])


class SweepResults:
    """What a study produced. `trials` and `pareto` are DataFrames; `plot(kind)` draws Optuna's plots."""

    def __init__(
        self,
        study: optuna.Study,
        spec: SweepSpec,
        storage_url: str | None = None,
        parent_run_id: str | None = None,
    ) -> None:
        self.study, self.spec, self.storage_url = study, spec, storage_url
        self.parent_run_id = parent_run_id or study.user_attrs.get(PARENT)

    @classmethod
    def load(cls, spec_path: str | Path, overrides=(), storage: str | None = None) -> SweepResults:
        """Open a study from its spec (and the same overrides it ran with) without running anything."""
        spec = load_spec(spec_path, [*overrides, *([f"storage={storage}"] if storage else [])])
        url = resolve_storage(spec, 1)
        if spec.study_name not in optuna.get_all_study_names(open_storage(url)):
            others = [u for u in default_storages() if u != url]
            raise KeyError(
                f"no study '{spec.study_name}' in {url}" + (f" (nor {others[0]})" if others else "")
            )
        study = optuna.load_study(study_name=spec.study_name, storage=open_storage(url))
        return cls(study, spec, storage_url=url)

    # -- tables ------------------------------------------------------------------------------------------
    @property
    def trials(self) -> pd.DataFrame:
        """One row per trial: number, state, every tracked metric, each parameter, steps, reasons, run id."""
        rows = []
        for t in self.study.get_trials(deepcopy=False):
            row: dict[str, Any] = {"number": t.number, "state": t.state.name}
            for m in self.spec.tracked_metrics():
                row[m] = t.user_attrs.get(T.METRIC + m, math.nan)
            row.update({f"param:{k}": v for k, v in t.params.items()})
            row["train_steps"] = t.user_attrs.get(T.STEPS)
            row["pruned_at"] = t.user_attrs.get("workbench.pruned_at")
            row["reason"] = t.user_attrs.get(T.REASON)
            row["retry_of"] = t.user_attrs.get("workbench.retry_of")
            row["duplicate_of"] = t.user_attrs.get(T.DUPLICATE)
            row["duration_s"] = t.duration.total_seconds() if t.duration else None
            row["mlflow_run_id"] = t.user_attrs.get(T.RUN_ID)
            rows.append(row)
        return pd.DataFrame(rows)

    @property
    def pareto(self) -> pd.DataFrame:
        """Completed trials on the cost-vs-quality front (`pareto` in the spec; the objectives when two)."""
        df = self.trials
        if df.empty:
            return df
        done = df[(df["state"] == "COMPLETE") & df["duplicate_of"].isna()]  # a re-recorded twin is one point
        return non_dominated(done, self.spec.pareto)

    @property
    def best(self) -> pd.DataFrame:
        """The best trial (one objective) or Optuna's Pareto set over the objectives (several)."""
        df = self.trials
        numbers = (
            [t.number for t in self.study.best_trials]
            if any(t.state == TrialState.COMPLETE for t in self.study.get_trials(deepcopy=False))
            else []
        )
        return df[df["number"].isin(numbers)]

    def table(self, rows: pd.DataFrame | None = None, title: str | None = None) -> Table:
        rows = self.pareto if rows is None else rows
        q, c = self.spec.pareto
        table = Table(title=title or f"study {self.spec.study_name}: Pareto front, {q.metric} vs {c.metric}")
        table.add_column("trial", justify="right")
        metrics = self.spec.tracked_metrics()
        for m in metrics:
            arrow = (
                "↓"
                if next(
                    (o.direction for o in (*self.spec.objectives, *self.spec.pareto) if o.metric == m),
                    "minimize",
                )
                == "minimize"
                else "↑"
            )
            table.add_column(
                f"{m} {arrow}" if m in (q.metric, c.metric) or m in self.objective_metrics else m,
                justify="right",
            )
        params = [c for c in rows.columns if c.startswith("param:")]
        for p in params:
            table.add_column(p[len("param:") :])
        for _, r in rows.iterrows():
            table.add_row(
                str(r["number"]),
                *(_fmt(r.get(m)) for m in metrics),
                *(str(r.get(p)) if not _isnan(r.get(p)) else "-" for p in params),
            )
        return table

    @property
    def objective_metrics(self) -> list[str]:
        return [o.metric for o in self.spec.objectives]

    def summary(self) -> dict[str, Any]:
        c = counts(self.study.get_trials(deepcopy=False))
        out: dict[str, Any] = {
            f"sweep/{k}_trials": v for k, v in c.items() if k not in ("running", "waiting")
        }
        steps = [t.user_attrs.get(T.STEPS) or 0 for t in self.study.get_trials(deepcopy=False)]
        out["sweep/train_steps"] = int(sum(steps))
        if not self.spec.multi_objective and c["complete"]:
            o = self.spec.objectives[0]
            out[f"sweep/best_{o.metric}"] = self.study.best_value
            out["sweep/best_trial"] = self.study.best_trial.number
        return out

    def print(self) -> None:
        screen = console()
        front = self.pareto
        if front.empty:
            screen.print(f"study {self.spec.study_name}: no completed trial yet")
        else:
            screen.print(self.table(front))
        s = self.summary()
        screen.print(
            f"{s['sweep/done_trials']} trials: {s['sweep/complete_trials']} complete, {s['sweep/pruned_trials']} "
            f"pruned, {s['sweep/failed_trials']} failed ({s['sweep/lost_trials']} lost to dead workers or "
            f"interrupts, re-run); {s['sweep/train_steps']:,} training steps in all",
            highlight=False,
        )
        if self.storage_url:
            screen.print(
                f"storage: {self.storage_url}  (browse: pip install optuna-dashboard; optuna-dashboard {self.storage_url.replace('journal:', '')})",
                highlight=False,
                soft_wrap=True,
            )

    # -- plots -------------------------------------------------------------------------------------------
    def plot(self, kind: str = "pareto_front", **kwargs):
        """Optuna's standard plots (matplotlib backend); `pareto_front` draws the spec's cost-vs-quality pair
        over every completed trial. Returns the matplotlib Axes."""
        import warnings

        import matplotlib.pyplot as plt

        if kind not in PLOTS:
            raise ValueError(f"plot kind {kind!r} is not one of: {', '.join(PLOTS)}")
        if kind == "pareto_front":
            return self._plot_front(**kwargs)
        from optuna.visualization import matplotlib as ovm

        fn = {"edf": ovm.plot_edf}.get(kind) or getattr(ovm, f"plot_{kind}")
        if self.spec.multi_objective and kind in (
            "optimization_history",
            "param_importances",
            "slice",
            "contour",
            "parallel_coordinate",
            "edf",
        ):
            kwargs.setdefault("target", lambda t: t.values[0])
            kwargs.setdefault("target_name", self.spec.objectives[0].metric)
        elif kind not in ("intermediate_values", "timeline"):
            kwargs.setdefault("target_name", self.spec.objectives[0].metric)
        # Optuna's matplotlib plots call plt.style.use("ggplot"), which would restyle every later figure of the
        # user's session: rc_context restores the user's rcParams once the figure is drawn.
        with warnings.catch_warnings(), plt.rc_context():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
            ax = fn(self.study, **kwargs)
            plt.tight_layout()
        return ax

    def figure(self, kind: str = "pareto_front", **kwargs):
        """The matplotlib Figure of `plot(kind)`."""
        ax = self.plot(kind, **kwargs)
        return (ax.flat[0] if hasattr(ax, "flat") else ax).figure

    def _plot_front(self, ax=None):
        import matplotlib.pyplot as plt

        q, c = self.spec.pareto
        df = self.trials
        done = df[df["state"] == "COMPLETE"].dropna(subset=[q.metric, c.metric])
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 4))
        ax.scatter(done[c.metric], done[q.metric], color="tab:blue", label="completed trial")
        for _, r in done.iterrows():
            ax.annotate(
                str(r["number"]),
                (r[c.metric], r[q.metric]),
                textcoords="offset points",
                xytext=(3, 3),
                fontsize=7,
            )
        front = non_dominated(done, (c, q)) if not done.empty else done
        ax.plot(front[c.metric], front[q.metric], color="tab:red", marker="o", label="Pareto front")
        ax.set_xlabel(f"{c.metric} ({'lower' if c.direction == 'minimize' else 'higher'} is better)")
        ax.set_ylabel(f"{q.metric} ({'lower' if q.direction == 'minimize' else 'higher'} is better)")
        ax.set_title(f"study {self.spec.study_name}")
        ax.legend()
        return ax

    def param_importances(self) -> dict[str, float]:
        """Optuna's default importance evaluator over the first objective; {} before two completed trials."""
        done = [t for t in self.study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        if len(done) < 2:
            return {}
        import warnings

        try:
            target = (lambda t: t.values[0]) if self.spec.multi_objective else None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "few trials per regime": true of every small study
                return dict(optuna.importance.get_param_importances(self.study, target=target))
        except Exception:  # e.g. every completed trial has the same parameters
            return {}

    # -- the MLflow parent run ---------------------------------------------------------------------------
    def finalize(self, finished: bool, elapsed_s: float, print_table: bool = True) -> None:
        """Print the Pareto table and give the parent run the study's artifacts, summary metrics and status."""
        if print_table:
            self.print()
        if not self.parent_run_id:
            return
        import matplotlib.pyplot as plt
        import yaml

        from workbench.sweeps.trial import tracking_uri
        from workbench.tracking.sweep_runs import close_study_run

        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            (d / "sweep_spec.yaml").write_text(
                yaml.safe_dump(json.loads(json.dumps(self.spec.as_dict(), default=str)), sort_keys=False)
            )
            self.trials.to_csv(d / "trials.csv", index=False)
            self.pareto.to_csv(d / "pareto.csv", index=False)
            (d / "best_trials.json").write_text(self.best.to_json(orient="records", indent=2))
            importances = self.param_importances()
            (d / "param_importances.json").write_text(json.dumps(importances, indent=2))
            for kind in ("pareto_front", "optimization_history", "param_importances"):
                if kind == "param_importances" and not importances:
                    continue
                if not (self.trials["state"] == "COMPLETE").any():
                    break
                try:
                    fig = self.figure(kind)
                    fig.savefig(d / f"{kind}.png", dpi=110, bbox_inches="tight")
                    plt.close(fig)  # pyplot keeps every figure until closed
                except Exception as exc:  # a plot Optuna refuses for this study shape; the rest still land
                    (d / f"{kind}.txt").write_text(f"not drawn: {type(exc).__name__}: {exc}\n")
            summary = {**self.summary(), "sweep/elapsed_s": float(elapsed_s)}
            close_study_run(self.parent_run_id, summary, d, finished, tracking_uri(self.spec))


def _isnan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _fmt(v) -> str:
    if _isnan(v):
        return "-"
    v = float(v)
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.3e}"
    return f"{v:.4f}"
