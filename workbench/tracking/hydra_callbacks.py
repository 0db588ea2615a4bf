"""Hydra callback: after a multirun, print every job's quality and cost side by side."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class CompareRuns(Callback):
    """Collects each job's returned metrics (in-process launchers) and prints one comparison table.

    Columns are labelled by the preset name plus the overrides that differ between jobs, so
    `-m +experiment=quickstart_moe moe.top_k=1,2` prints columns `quickstart_moe moe.top_k=1` and `... =2`.
    """

    def __init__(self) -> None:
        self.jobs: list[tuple[str, list[str], dict[str, float]]] = []
        self.experiment_id: str | None = None

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        value = getattr(job_return, "_return_value", None)
        if not isinstance(value, dict):
            return  # the job failed; Hydra reports it
        overrides = list(getattr(job_return, "overrides", None) or [])
        metrics = {k: v for k, v in value.items() if isinstance(v, float)}
        self.jobs.append((str(value.get("name")), overrides, metrics))
        self.experiment_id = value.get("experiment_id") or self.experiment_id

    def labels(self) -> list[str]:
        common = set.intersection(*(set(o) for _, o, _ in self.jobs)) if self.jobs else set()
        out = []
        for name, overrides, _ in self.jobs:
            varying = [
                o for o in overrides if o not in common and not o.lstrip("+").startswith("experiment=")
            ]
            label = " ".join([name, *varying])
            out.append(label if label not in out else f"{label} #{len(out)}")
        return out

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if len(self.jobs) < 2:
            return
        from workbench.tracking.mlflow_utils import resolve_tracking_uri, ui_command
        from workbench.tracking.report import print_comparison

        columns = {label: metrics for label, (_, _, metrics) in zip(self.labels(), self.jobs, strict=True)}
        uri = resolve_tracking_uri(config.get("tracking", {}).get("tracking_uri"))
        print_comparison(
            columns, title="Side by side", footer=[f"MLflow UI: {ui_command(uri, self.experiment_id)}"]
        )
