"""One MLflow run as an object: opened (or resumed), given params, tags, metrics and artifacts, and closed with
a final status (and, on failure, its reason). Training runs, sweep parents and sweep trials all use it.

MLflow params are immutable, so `log_params` skips keys the run already has (a resumed run keeps the values
it started with and records only what is new). Everything goes through one `MlflowClient`; Lightning's
`MLFlowLogger` attaches to the same run id for the step metrics of `fit`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from workbench.tracking.mlflow_utils import artifact_root, quiet_mlflow_logs, resolve_tracking_uri

FAILURE_REASON = "workbench.failure_reason"
# MLflow 3.17's UI opens an experiment on its GenAI overview unless the experiment carries this kind.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
MAX_PARAM_CHARS = 6000
MAX_TAG_CHARS = 5000


def client_for(tracking_uri: str | None = None):
    """An MlflowClient on `tracking_uri` (None: $MLFLOW_TRACKING_URI, else the project's SQLite store)."""
    import mlflow

    quiet_mlflow_logs()
    return mlflow.MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))


def experiment_id(client, name: str) -> str:
    """The id of experiment `name`, created (artifacts beside a local store) and tagged for the UI if new."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        exp_id = client.create_experiment(name, artifact_location=artifact_root(client.tracking_uri))
    else:
        exp_id = exp.experiment_id
        if exp.tags.get(EXPERIMENT_KIND[0]) == EXPERIMENT_KIND[1]:
            return exp_id
    client.set_experiment_tag(exp_id, *EXPERIMENT_KIND)
    return exp_id


class TrackingSession:
    """An open MLflow run. `with TrackingSession.start(...) as s:` marks it FAILED (KILLED for Ctrl-C) with the
    exception as its reason if the block raises; `finish()` closes it as FINISHED."""

    def __init__(self, client, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.closed = False

    @property
    def tracking_uri(self) -> str:
        return self.client.tracking_uri

    # -- opening ------------------------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        experiment: str,
        run_name: str,
        tags: Mapping[str, Any] = (),
        tracking_uri: str | None = None,
        parent_run_id: str | None = None,
    ) -> TrackingSession:
        """A new run in `experiment` (nested under `parent_run_id` when given)."""
        client = client_for(tracking_uri)
        tags = {str(k): str(v)[:MAX_TAG_CHARS] for k, v in dict(tags).items()}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(experiment_id(client, experiment), run_name=run_name, tags=tags)
        return cls(client, run.info.run_id)

    @classmethod
    def resume(cls, run_id: str, tracking_uri: str | None = None) -> TrackingSession:
        """An existing run, set RUNNING again (a resumed training run, a sweep's parent on a second launch)."""
        client = client_for(tracking_uri)
        client.get_run(run_id)  # raises if the store does not have it
        client.update_run(run_id, status="RUNNING")
        return cls(client, run_id)

    # -- recording ----------------------------------------------------------------------------------------
    def existing_params(self) -> dict[str, str]:
        return dict(self.client.get_run(self.run_id).data.params)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Params in batches of 100, values cut to MLflow's limit; keys the run already has are skipped."""
        from mlflow.entities import Param

        existing = self.existing_params()
        items = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in params.items() if k not in existing]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(str(k), str(v)[:MAX_TAG_CHARS]) for k, v in tags.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, tags=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Finite metrics in batches of 500 at `step` (a NaN would break MLflow's charts)."""
        import math

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if math.isfinite(float(v))]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i : i + 500])

    def log_text(self, text: str, path: str) -> None:
        self.client.log_text(self.run_id, text, path)

    def log_dict(self, data: Mapping[str, Any], path: str) -> None:
        self.client.log_dict(self.run_id, dict(data), path)

    def log_artifact(self, local_path: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(local_path), folder)

    def log_artifacts(self, local_dir: str | Path, folder: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), folder)

    def log_figure(self, figure, path: str) -> None:
        """A matplotlib Figure saved as the artifact `path` (no pyplot, no backend change)."""
        self.client.log_figure(self.run_id, figure, path)

    # -- closing ------------------------------------------------------------------------------------------
    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)
        self.closed = True

    def fail(self, reason: str, killed: bool = False) -> None:
        """FAILED (or KILLED) with `reason` in the `workbench.failure_reason` tag."""
        self.client.set_tag(self.run_id, FAILURE_REASON, reason[:MAX_TAG_CHARS])
        self.finish("KILLED" if killed else "FAILED")

    def __enter__(self) -> TrackingSession:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None and not self.closed:
            self.fail(f"{exc_type.__name__}: {exc}", killed=isinstance(exc, KeyboardInterrupt))
