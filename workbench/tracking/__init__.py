"""MLflow glue: where runs are stored, the session object every run records through, and run comparisons."""

from workbench.config.compose import flatten
from workbench.tracking.mlflow_utils import resolve_tracking_uri, ui_command
from workbench.tracking.session import TrackingSession

__all__ = ["TrackingSession", "flatten", "resolve_tracking_uri", "ui_command"]
