"""Hydra callback: after a multirun, print every job's quality and cost side by side."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class CompareRuns(Callback):
    """Collects each job's returned metrics (in-process launchers) and prints one comparison table."""

    def __init__(self) -> None:
        self.columns: dict[str, dict[str, float]] = {}
        self.tracking_uri: str | None = None

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        value = getattr(job_return, "_return_value", None)
        if not isinstance(value, dict):
            return
        label = str(value.get("name"))
        if label in self.columns:  # the same preset swept over several values
            label = f"{label}#{len(self.columns)}"
        self.columns[label] = {k: v for k, v in value.items() if isinstance(v, float)}

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if len(self.columns) < 2:
            return
        from workbench.tracking.mlflow_utils import resolve_tracking_uri, ui_command
        from workbench.tracking.report import print_comparison

        uri = resolve_tracking_uri(config.get("tracking", {}).get("tracking_uri"))
        print_comparison(self.columns, title="Side by side", footer=[f"MLflow UI: {ui_command(uri)}"])
