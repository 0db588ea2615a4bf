"""MLflow glue: where runs are stored, what each run records, and how runs are compared."""

from workbench.tracking.mlflow_utils import flatten, resolve_tracking_uri, ui_command

__all__ = ["flatten", "resolve_tracking_uri", "ui_command"]
