"""Lightning's MLFlowLogger on a TrackingSession's run, that never logs a step twice.

A resumed run repeats the steps between its checkpoint and the moment the previous attempt died; MLflow
metric histories are append-only, so logging them again would give every replayed step two values. The
logger drops metrics at steps up to `logged_through` (the last step the run logged before), keeping the first
attempt's values (bit-identical on CPU: training is deterministic for a seed and a checkpoint).
"""

from __future__ import annotations

from lightning.pytorch.loggers import MLFlowLogger


class StepLogger(MLFlowLogger):
    def __init__(self, *, logged_through: int = -1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.logged_through = logged_through

    def log_metrics(self, metrics, step=None) -> None:
        if step is not None and step <= self.logged_through:
            return
        super().log_metrics(metrics, step)
