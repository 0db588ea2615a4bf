"""`python -m workbench.report`: every row of the cost-benefit table filled from runs it trained, Markdown and
HTML written and logged to an MLflow `report` run, and a second call that trains nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from workbench.report.levers import at_x, first_reaching, paired_ratios

ROOT = Path(__file__).resolve().parents[1]


def test_curve_interpolation_and_first_crossing():
    import pandas as pd

    c = pd.DataFrame(
        {"run_id": "r", "step": [1, 2, 3], "val/bpb": [3.0, 2.0, 1.0], "cost/tokens": [100.0, 200.0, 300.0]}
    )
    assert at_x(c, "r", "cost/tokens", 150.0) == 2.5
    assert at_x(c, "r", "cost/tokens", 50.0) != at_x(c, "r", "cost/tokens", 50.0)  # NaN outside the curve
    assert first_reaching(c, "r", 1.5, "cost/tokens") == 250.0
    assert first_reaching(c, "r", 3.5, "cost/tokens") == 100.0  # reached at the first validation
    assert first_reaching(c, "r", 0.5, "cost/tokens") != first_reaching(c, "r", 0.5, "cost/tokens")  # never


def test_ratios_pair_the_seeds_both_arms_have():
    values = {("a", 0): 2.0, ("a", 1): 3.0, ("a", 2): 9.0, ("base", 0): 1.0, ("base", 1): 2.0}
    assert paired_ratios(values, "a", "base") == [2.0, 1.5]  # seed 2 has no base run


@pytest.mark.slow
def test_report_trains_what_is_missing_then_reuses_it(tmp_path, data_cache):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    cmd = [sys.executable, "-m", "workbench.report", "--size", "ci", "--out", str(tmp_path / "reports")]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=1500)
    assert first.returncode == 0, first.stderr[-3000:]
    trained = int(re.search(r"trained (\d+) runs", first.stdout).group(1))
    # MoE 3 arms x 2 seeds, filtering 2 x 2, compile 2 more (eager is the equal-active dense run), precision
    # 3 x 2 (its fp32 arm is the MoE run: precision=fp32 is the default, the same digest), utilization 0
    assert trained == 6 + 4 + 2 + 6
    md = (tmp_path / "reports" / "cost-benefit-ci.md").read_text()
    for lever in (
        "Mixture-of-Experts",
        "data filtering",
        "kernels and compile",
        "mixed precision",
        "utilization",
    ):
        (line,) = [row for row in md.splitlines() if row.startswith(f"| {lever} |")]
        assert "nan" not in line.lower() and "python train.py" in line, line
    assert "less active compute per token" in md
    page = (tmp_path / "reports" / "cost-benefit-ci.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "http" not in page.replace("http-equiv", "")

    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "trained 0 runs" in again.stdout
    assert not [line for line in again.stdout.splitlines() if line.startswith("training ")]  # nothing trained
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("workbench")
    reports = client.search_runs([exp.experiment_id], "tags.`workbench.kind` = 'report'")
    assert len(reports) == 2 and {r.info.run_name for r in reports} == {"report ci"}
    artifacts = {a.path for a in client.list_artifacts(reports[0].info.run_id)}
    assert {"cost-benefit-ci.md", "cost-benefit-ci.html"} <= artifacts
    assert "report/mixture_of_experts/flops_per_token_ratio" in reports[0].data.metrics
