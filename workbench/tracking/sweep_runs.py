"""How a sweep appears in MLflow, through TrackingSession: one parent run per study, one child run per trial
nested under it, and with several seeds one run per seed nested under its trial's run.

Conventions: trial runs are named `<study>-t<number>` and tagged `optuna.study`, `optuna.trial_number` and,
once told, `optuna.state`; the searched values are params `trial.<name>`. Trial bookkeeping (a failure run,
a tag) is best effort: the Optuna storage holds the outcome, and a tracking hiccup must not end a study.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from workbench.tracking.mlflow_utils import git_commit
from workbench.tracking.session import TrackingSession, client_for


def trial_run_name(study_name: str, number: int) -> str:
    return f"{study_name}-t{number:04d}"


def trial_tags(study_name: str, number: int) -> dict[str, str]:
    return {"optuna.study": study_name, "optuna.trial_number": str(number)}


def mean_over_seeds(results: list[Mapping[str, float]]) -> dict[str, float]:
    """Per-metric mean over seeds, with `<metric>_std` when there are several."""
    if len(results) == 1:
        return dict(results[0])
    out: dict[str, float] = {}
    for key in results[0]:
        vals = [r[key] for r in results if key in r]
        out[key] = statistics.fmean(vals)
        out[f"{key}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return out


# -- the study's parent run -------------------------------------------------------------------------------


def open_study_run(
    experiment: str,
    study_name: str,
    spec_path: str,
    storage_url: str,
    params: Mapping[str, Any],
    known_run_id: str | None,
    tracking_uri: str | None = None,
) -> TrackingSession:
    """The study's parent run: the one it started with (reopened) when the store still has it, else new."""
    if known_run_id:
        try:
            return TrackingSession.resume(known_run_id, tracking_uri)
        except Exception:
            pass  # the MLflow store changed since the study began: start a new parent there
    sha, dirty = git_commit()
    tags = {
        "workbench.sweep": study_name,
        "workbench.experiment": f"sweep:{study_name}",
        "optuna.study": study_name,
        "optuna.storage": storage_url,
        "workbench.spec": spec_path,
        **({"mlflow.source.git.commit": sha, "workbench.git_dirty": str(dirty)} if sha else {}),
    }
    session = TrackingSession.start(experiment, f"sweep-{study_name}", tags, tracking_uri)
    session.log_params(params)
    return session


def close_study_run(
    run_id: str, metrics: Mapping[str, Any], artifacts: Path, finished: bool, tracking_uri: str | None = None
) -> None:
    """Summary metrics, the study's files, and FINISHED (or KILLED while trials are missing)."""
    session = TrackingSession(client_for(tracking_uri), run_id)
    session.log_metrics({k: v for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)})
    session.log_artifacts(artifacts)
    session.set_tags({"workbench.study_state": "finished" if finished else "incomplete"})
    session.finish("FINISHED" if finished else "KILLED")


# -- trial runs -------------------------------------------------------------------------------------------


def open_seeds_run(
    experiment: str,
    study_name: str,
    number: int,
    values: Mapping[str, Any],
    seeds: int,
    preset: str,
    parent_run_id: str | None,
    tracking_uri: str | None = None,
) -> TrackingSession:
    """With several seeds a trial is its own run (a child of the study); each seed's run nests under it."""
    tags = {**trial_tags(study_name, number), "workbench.experiment": preset}
    session = TrackingSession.start(
        experiment, trial_run_name(study_name, number), tags, tracking_uri, parent_run_id=parent_run_id
    )
    session.log_params({**{f"trial.{k}": v for k, v in values.items()}, "trial.seeds": seeds})
    return session


def close_seeds_run(session: TrackingSession | None, results: list[Mapping[str, float]], status: str) -> None:
    """The seeds' mean (and spread) on the trial's run, then its status."""
    if session is None:
        return
    session.log_metrics(mean_over_seeds(results))
    session.finish(status)


def find_trial_run(parent_run_id: str, number: int, tracking_uri: str | None = None) -> str | None:
    """The run a trial already made under the study's parent (the training run, FAILED by the runner)."""
    try:
        client = client_for(tracking_uri)
        parent = client.get_run(parent_run_id)
        found = client.search_runs(
            [parent.info.experiment_id],
            f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.`optuna.trial_number` = '{number}'",
            max_results=1,
        )
        return found[0].info.run_id if found else None
    except Exception:
        return None


def record_failed_trial(
    parent_run_id: str,
    study_name: str,
    number: int,
    values: Mapping[str, Any],
    reason: str,
    tracking_uri: str | None = None,
) -> str | None:
    """A trial that failed before any training run existed (its config did not compose, say) still gets a
    child run, FAILED with the reason, so the MLflow view lists every trial."""
    try:
        client = client_for(tracking_uri)
        experiment = client.get_experiment(client.get_run(parent_run_id).info.experiment_id).name
        session = TrackingSession.start(
            experiment,
            trial_run_name(study_name, number),
            trial_tags(study_name, number),
            tracking_uri,
            parent_run_id=parent_run_id,
        )
        session.log_params({f"trial.{k}": v for k, v in values.items()})
        session.fail(reason)
        return session.run_id
    except Exception:
        return None


def close_trial_run(
    parent_run_id: str | None,
    number: int,
    run_id: str | None,
    reason: str,
    killed: bool,
    tracking_uri: str | None = None,
) -> None:
    """Close a trial's MLflow runs that are still RUNNING (its worker died, or was interrupted before it
    could): FAILED, or KILLED for an interrupt, with `reason` as `workbench.failure_reason`."""
    try:
        client = client_for(tracking_uri)
        ids = {run_id} if run_id else set()
        if parent_run_id:
            parent = client.get_run(parent_run_id)
            found = client.search_runs(
                [parent.info.experiment_id],
                f"tags.`optuna.study` = '{parent.data.tags.get('optuna.study', '')}' "
                f"and tags.`optuna.trial_number` = '{number}' and attributes.status = 'RUNNING'",
            )
            ids |= {r.info.run_id for r in found}
        for rid in ids:
            if client.get_run(rid).info.status == "RUNNING":
                TrackingSession(client, rid).fail(reason, killed=killed)
                client.set_tag(rid, "optuna.state", "FAIL")
    except Exception:
        pass  # best effort: the Optuna storage holds the outcome


def tag_trial_run(run_id: str | None, state: str, values: Mapping[str, Any], tracking_uri: str | None = None):
    """Mark a trial's run with its Optuna state and its searched values."""
    if not run_id:
        return
    try:
        session = TrackingSession(client_for(tracking_uri), run_id)
        session.set_tags({"optuna.state": state})
        session.log_params({f"trial.{k}": v for k, v in values.items()})
    except Exception:
        pass  # best effort: the Optuna storage holds the outcome
