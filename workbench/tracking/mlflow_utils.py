"""Where the MLflow store is and what every run records (params, tags, artifacts)."""

from __future__ import annotations

import logging
import os
import subprocess

from workbench.paths import project_root


def resolve_tracking_uri(configured: str | None = None) -> str:
    """`tracking.tracking_uri`, else $MLFLOW_TRACKING_URI, else a SQLite store in the project root."""
    if configured:
        return configured
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{project_root() / 'mlflow.db'}"


def artifact_root(tracking_uri: str) -> str | None:
    """Artifacts beside a local SQLite store (absolute, so notebooks and the CLI agree); servers choose their own."""
    if tracking_uri.startswith("sqlite:///"):
        db_path = tracking_uri[len("sqlite:///") :]
        return "file://" + os.path.join(os.path.dirname(os.path.abspath(db_path)), "mlartifacts")
    return None


# MLflow 3.17's UI opens an experiment on its GenAI overview unless the sidebar's workflow switch (kept in the
# browser) says "Model training" or the address carries this; the experiment's mlflow.experimentKind tag is not
# read by the 3.17.2 bundle (tests/test_mlflow_ui.py pins both).
RUNS_TABLE_QUERY = "?workflowType=machine_learning"


def runs_table_url(experiment_id: str, base: str = "http://127.0.0.1:5000") -> str:
    """The address of an experiment's runs table in the MLflow UI served at `base`."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}{RUNS_TABLE_QUERY}"


def ui_command(tracking_uri: str, experiment_id: str | None = None) -> str:
    """The command that opens the MLflow UI on this store (and, given an experiment, the runs table's address)."""
    if tracking_uri.startswith(("http://", "https://", "databricks")):
        where = runs_table_url(experiment_id, tracking_uri) if experiment_id else tracking_uri
        return f"open {where} in a browser"
    art = artifact_root(tracking_uri)
    extra = f" --default-artifact-root {art}" if art else ""
    then = f", then open {runs_table_url(experiment_id)}" if experiment_id else ""
    return f"mlflow ui --backend-store-uri {tracking_uri}{extra}{then}"


def quiet_mlflow_logs() -> None:
    """MLflow and alembic announce every schema migration of a new SQLite store at INFO."""
    for name in ("mlflow", "alembic", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)


def git_commit() -> tuple[str | None, bool]:
    """(HEAD commit of the project checkout, whether the work tree has uncommitted changes)."""
    root = project_root()
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        )
        return sha or None, dirty
    except (OSError, subprocess.SubprocessError):
        return None, False
