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


def ui_command(tracking_uri: str) -> str:
    """The command that opens the MLflow UI on this store."""
    if tracking_uri.startswith(("http://", "https://", "databricks")):
        return f"open {tracking_uri} in a browser"
    art = artifact_root(tracking_uri)
    extra = f" --default-artifact-root {art}" if art else ""
    return f"mlflow ui --backend-store-uri {tracking_uri}{extra}"


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
