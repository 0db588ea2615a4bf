"""Lightning's MLFlowLogger on a TrackingSession's run, that never logs a step twice.

A resumed run repeats the steps between its checkpoint and the moment the previous attempt died; MLflow
metric histories are append-only, so logging them again would give every replayed step two values. The
logger drops metrics at steps up to `logged_through` (the last step the run logged before), keeping the first
attempt's values (bit-identical on CPU: training is deterministic for a seed and a checkpoint).

The run's status belongs to the TrackingSession: MLFlowLogger.finalize would mark it FINISHED when `fit`
returns (before the final validation and the run's summary, so a kill then left a "finished" run without its
results) and FAILED on an interrupt, which the session records as KILLED.
"""

from __future__ import annotations

from lightning.pytorch.loggers import MLFlowLogger

from workbench.tracking.session import client_for


class StepLogger(MLFlowLogger):
    def __init__(self, *, logged_through: int = -1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.logged_through = logged_through
        # the same store through a client whose calls an interrupt does not cut in half (a locked store)
        self._mlflow_client = client_for(self._tracking_uri)

    def log_metrics(self, metrics, step=None) -> None:
        if step is not None and step <= self.logged_through:
            return
        super().log_metrics(metrics, step)

    def finalize(self, status: str = "success") -> None:
        """No status change: the session closes the run (FINISHED, FAILED or KILLED, with its reason)."""
