"""One MLflow run as an object: opened (or resumed), given params, tags, metrics and artifacts, and closed with
a final status (and, on failure, its reason). Training runs, sweep parents and sweep trials all use it.

MLflow params are immutable, so `log_params` skips keys the run already has (a resumed run keeps the values
it started with and records only what is new). Everything goes through one `MlflowClient`; Lightning's
`MLFlowLogger` attaches to the same run id for the step metrics of `fit`.
"""

from __future__ import annotations

import functools
import inspect
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from workbench.config.errors import Unavailable, deferred_interrupts, failure_reason, first_line
from workbench.tracking.mlflow_utils import artifact_root, quiet_mlflow_logs, resolve_tracking_uri

FAILURE_REASON = "workbench.failure_reason"
# Which process holds a RUNNING run: a run whose process is gone was killed and is closed (`close_dead_runs`).
HOST, PID, PID_STARTED = "workbench.host", "workbench.pid", "workbench.pid_started"
PROGRESS = "workbench.progress"  # a training run's computed totals at its last log (lost work on resume)
# The experiment kind MLflow records for training runs (its UI read it to choose the runs table over the GenAI
# overview; the 3.17.2 bundle decides by the workflow switch instead: mlflow_utils.RUNS_TABLE_QUERY).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
MAX_PARAM_CHARS = 6000
MAX_TAG_CHARS = 5000


def client_for(tracking_uri: str | None = None):
    """An MlflowClient on `tracking_uri` (None: $MLFLOW_TRACKING_URI, else the project's SQLite store) whose
    calls an interrupt does not cut in half (`deferred_interrupts`)."""
    cls = shielded_client_class()  # imports mlflow, which sets up its loggers: quieted after
    quiet_mlflow_logs()
    return cls(tracking_uri=resolve_tracking_uri(tracking_uri))


@functools.cache
def shielded_client_class() -> type:
    """MlflowClient with every public method run under `deferred_interrupts`: an interrupt inside a write
    leaves the SQLite connection holding the write lock, and one inside a read (a cursor not fully fetched)
    holds the shared lock that every writer waits for; both lock the store for every process (measured in a
    Ctrl-C of a two-worker sweep). Made once, on first use (mlflow is imported late: it is slow to import)."""
    import mlflow

    def wrap(method):
        @functools.wraps(method)
        def call(self, *args, **kwargs):
            with deferred_interrupts():
                return method(self, *args, **kwargs)

        return call

    base = mlflow.MlflowClient
    body = {
        name: wrap(attr)
        for name, attr in vars(base).items()
        if not name.startswith("_") and inspect.isfunction(attr)
    }
    return type("ShieldedMlflowClient", (base,), body)


def check_tracking(tracking_uri: str | None = None, key: str = "tracking.tracking_uri"):
    """An MlflowClient on the store, after one cheap read proves it answers; else `Unavailable` naming the
    URI (a bad scheme, an unwritable SQLite folder, a server that does not answer). Runs before the data stage,
    so a bad store costs seconds, not a prepared corpus."""
    uri = resolve_tracking_uri(tracking_uri)
    where = key if tracking_uri else ("MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else key)
    if uri.startswith(("http://", "https://")):
        import requests

        try:  # MLflow's own client retries for minutes; one short request says whether anything listens
            requests.get(uri.rstrip("/") + "/health", timeout=10).raise_for_status()
        except Exception as exc:
            raise Unavailable(
                f"{where}={uri}: the MLflow server does not answer ({first_line(exc)})"
            ) from exc
    for attempt in range(4):
        try:
            client = client_for(uri)
            client.search_experiments(max_results=1)
            return client
        except Exception as exc:
            # Processes that create one new SQLite store at the same moment race in its schema migration;
            # the loser finds the schema made by the winner when it tries again.
            if uri.startswith("sqlite:") and attempt < 3:
                time.sleep(0.5 * (attempt + 1))
                continue
            raise Unavailable(f"{where}={uri}: cannot open the MLflow store ({first_line(exc)})") from exc


def owner_tags() -> dict[str, str]:
    """This process as the holder of a run: host, pid and the pid's start time (pids are reused)."""
    return {HOST: socket.gethostname(), PID: str(os.getpid()), PID_STARTED: _started(os.getpid()) or ""}


def _started(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (Linux /proc), or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]  # field 22, after the parenthesised name
    except (OSError, IndexError):
        return None


def dead_owner(tags: Mapping[str, str]) -> str | None:
    """Why a RUNNING run's process is known to be gone (same host, pid gone or reused), else None."""
    if tags.get(HOST) != socket.gethostname() or not tags.get(PID, "").isdigit():
        return None
    pid = int(tags[PID])
    started = _started(pid)
    if started is None or (tags.get(PID_STARTED) and started != tags[PID_STARTED]):
        return f"its process {pid} on {tags[HOST]} ended without closing the run (killed)"
    return None


def close_dead_runs(
    client, experiment_ids: list[str], older_than_s: float | None = None
) -> list[tuple[str, str]]:
    """Close RUNNING runs whose process is gone as KILLED, with the reason as `workbench.failure_reason`; with
    `older_than_s`, also runs on other hosts that logged nothing for that long. Returns (run id, reason)."""
    closed = []
    now_ms = time.time() * 1000
    runs = client.search_runs(experiment_ids, "attributes.status = 'RUNNING'", max_results=1000)
    for r in runs:
        reason = dead_owner(r.data.tags)
        if reason is None and older_than_s is not None and r.data.tags.get(HOST) != socket.gethostname():
            last = max([m.timestamp for m in _latest(client, r)] or [r.info.start_time or now_ms])
            if now_ms - last > older_than_s * 1000:
                reason = f"nothing logged for {(now_ms - last) / 1000:.0f} s (older than {older_than_s:g} s)"
        if reason is not None:
            TrackingSession(client, r.info.run_id).fail(reason, killed=True)
            closed.append((r.info.run_id, reason))
    return closed


def _latest(client, run):
    return [h for key in run.data.metrics for h in client.get_metric_history(run.info.run_id, key)[-1:]]


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
        self.reattached = False  # continued from step 0 (its attempt before died without a checkpoint)
        self._monitor = None  # MLflow's SystemMetricsMonitor while it samples

    @property
    def tracking_uri(self) -> str:
        return self.client.tracking_uri

    @property
    def experiment_id(self) -> str:
        return self.client.get_run(self.run_id).info.experiment_id

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
        tags = {**owner_tags(), **{str(k): str(v)[:MAX_TAG_CHARS] for k, v in dict(tags).items()}}
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
        session = cls(client, run_id)
        session.set_tags(owner_tags())
        return session

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

    def report_progress(self, totals: Mapping[str, float]) -> None:
        """The computed totals of a training run, overwritten at each log (a tag: metrics are append-only)."""
        import json

        self.set_tags({PROGRESS: json.dumps(dict(totals), sort_keys=True)})

    def previous_attempt(self) -> dict[str, float] | None:
        """The last `report_progress` of this run, by whichever process logged it before (a resume)."""
        import json

        text = self.client.get_run(self.run_id).data.tags.get(PROGRESS)
        return json.loads(text) if text else None

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

    def log_dataset(self, dataset, context: str = "training") -> None:
        """An `mlflow.data` dataset as an input of the run (the UI's Datasets column), tagged with `context`;
        logged once per run (a resumed run has it already)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        have = self.client.get_run(self.run_id).inputs.dataset_inputs
        if any(d.dataset.digest == dataset.digest and d.dataset.name == dataset.name for d in have):
            return
        entity = Dataset(**dataset.to_dict())
        tags = [InputTag(key="mlflow.data.context", value=context)]
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset=entity, tags=tags)])

    def log_model(
        self, network, example, name: str = "model", step: int = 0, params: Mapping[str, Any] = ()
    ) -> tuple[str, str]:
        """`network` saved with `mlflow.pytorch` as a logged model of this run (the UI's Models tab; load it with
        `mlflow.pytorch.load_model("models:/<id>")`); returns (model id, format).

        The format is `pt2` where torch.export traces the network's logits on `example` (a (1, T) batch of
        token ids): a graph and weights, loaded without unpickling code. Where it cannot trace (the grouped-mm
        MoE experts), the module is pickled, with the workbench package beside it since the pickle refers to
        its classes, and the tag `workbench.model_format` says why.

        Through the client, not `mlflow.pytorch.log_model`, which needs the fluent API's process-wide active
        run. The environment recorded is this process's torch (MLflow would otherwise infer it by loading
        the model in a subprocess)."""
        import logging
        import tempfile

        import mlflow.pytorch
        import torch
        from mlflow.entities import LoggedModelOutput
        from mlflow.models import Model

        class Logits(torch.nn.Module):  # the network's forward also returns routing statistics
            def __init__(self) -> None:
                super().__init__()
                self.network = network

            def forward(self, idx):
                return self.network(idx)[0]

        model = self.client.create_logged_model(
            self.experiment_id,
            name=name,
            source_run_id=self.run_id,
            params={str(k): str(v)[:MAX_PARAM_CHARS] for k, v in dict(params).items()},
            model_type="pytorch",
        )
        common = {"pip_requirements": [f"torch=={torch.__version__.split('+')[0]}"]}
        fmt = "pt2"
        try:
            with tempfile.TemporaryDirectory() as tmp:

                def meta() -> Model:
                    return Model(model_id=model.model_id, run_id=self.run_id)

                fake_tensor_log = logging.getLogger("torch._subclasses.fake_tensor")
                disabled, fake_tensor_log.disabled = fake_tensor_log.disabled, True  # a failed trace's pages
                try:
                    mlflow.pytorch.save_model(
                        Logits().eval(),
                        f"{tmp}/model",
                        mlflow_model=meta(),
                        input_example=example.cpu().numpy(),
                        serialization_format="pt2",
                        **common,
                    )
                except Exception as exc:
                    fmt = f"pickle (torch.export: {first_line(exc)[:200]})"
                    mlflow.pytorch.save_model(
                        network,
                        f"{tmp}/pickled",
                        mlflow_model=meta(),
                        serialization_format="pickle",
                        code_paths=[str(Path(__file__).parents[1])],  # the workbench package
                        **common,
                    )
                finally:
                    fake_tensor_log.disabled = disabled
                self.client.log_model_artifacts(
                    model.model_id, f"{tmp}/model" if fmt == "pt2" else f"{tmp}/pickled"
                )
        except BaseException:
            self.client.finalize_logged_model(model.model_id, "FAILED")
            raise
        self.client.set_logged_model_tags(model.model_id, {"workbench.model_format": fmt})
        self.client.finalize_logged_model(model.model_id, "READY")
        self.client.log_outputs(self.run_id, [LoggedModelOutput(model.model_id, step)])
        self.set_tags({"workbench.model_id": model.model_id, "workbench.model_format": fmt[:MAX_TAG_CHARS]})
        return model.model_id, fmt

    def monitor_system(self, interval: float, resumed: bool = False) -> None:
        """Sample CPU, memory, disk, network (and GPU) every `interval` s into `system/*` metrics until the run
        closes (MLflow's own monitor, in a daemon thread; a resumed run continues its steps). On several
        ranks each logs under its own node id."""
        import os

        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        world = int(os.environ.get("WORLD_SIZE", "1"))
        node = f"rank{os.environ.get('RANK', '0')}" if world > 1 else None
        self._monitor = SystemMetricsMonitor(
            self.run_id,
            sampling_interval=interval,
            resume_logging=resumed,
            node_id=node,
            tracking_uri=self.tracking_uri,
        )
        self._monitor.start()

    def _stop_monitor(self) -> None:
        if self._monitor is not None:
            monitor, self._monitor = self._monitor, None
            monitor.finish()

    # -- closing ------------------------------------------------------------------------------------------
    def finish(self, status: str = "FINISHED") -> None:
        self._stop_monitor()
        _retry(lambda: self.client.set_terminated(self.run_id, status))
        self.closed = True

    def fail(self, reason: str, killed: bool = False) -> None:
        """FAILED (or KILLED) with `reason` in the `workbench.failure_reason` tag."""
        _retry(lambda: self.client.set_tag(self.run_id, FAILURE_REASON, reason[:MAX_TAG_CHARS]))
        self.finish("KILLED" if killed else "FAILED")

    def fail_quietly(self, reason: str, killed: bool = False) -> None:
        """`fail`, for a path that is already handling an error (an interrupt, a crash): a tracking error here
        is printed, not raised, so the error being handled is the one the caller sees."""
        if self.closed:
            return
        try:
            self.fail(reason, killed)
        except Exception as exc:
            print(f"warning: MLflow run {self.run_id} could not be closed ({first_line(exc)})")

    def __enter__(self) -> TrackingSession:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None and not self.closed:
            self.fail_quietly(failure_reason(exc), killed=isinstance(exc, KeyboardInterrupt))


def _retry(write, attempts: int = 5) -> None:
    """A closing write, retried: several processes closing runs of one SQLite store at once (a Ctrl-C of a
    study) can see "database is locked" even after SQLite's busy timeout (two writers upgrading their locks)."""
    for i in range(attempts):
        try:
            return write()
        except Exception as exc:
            if i == attempts - 1 or "locked" not in str(exc):
                raise
            time.sleep(0.2 * 2**i)
