"""The cost-benefit report: every lever's measured row, from runs it finds in MLflow or trains (README "Report")."""

from __future__ import annotations

from workbench.report.build import Report, build_report

__all__ = ["Report", "build_report"]
