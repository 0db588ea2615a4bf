"""The MLflow UI, in a real browser, shows what workbench runs recorded: the experiment's runs table with
both runs, and on a run's page its metrics (`val/bpb`, `cost/usd`).

Why a browser: MLflow 3.17 opens an experiment on one of two pages, the runs table (its "Model training"
workflow) or the GenAI overview of traces (the "GenAI" workflow, the default), and nothing the tracking API
returns says which. The UI picks by the sidebar's workflow switch (kept in the browser's local storage) or by
`?workflowType=` in the address. The experiment's `mlflow.experimentKind` tag, which `experiment_id` sets, is
read only while a UI feature flag is off, and the 3.17.2 bundle hard-codes it on; measured here, a bare link
opens the GenAI overview for a tagged experiment and an untagged one alike. So a link to the runs table
carries `?workflowType=machine_learning` (`runs_table_url`, what every run prints), and the last test pins where a bare link lands: an MLflow that
starts honouring the tag fails it, and says so.

One `mlflow server` on a free loopback port serves a store built in a temporary folder; Debian's chromium
(never a Playwright browser download) drives the UI, and every request to an address off 127.0.0.1 is
refused. Without a chromium the tests skip, or fail when WORKBENCH_REQUIRE_BROWSER is set (CI sets it).
Screenshots of each page are left in the test's tmp_path.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from workbench.tracking.mlflow_utils import runs_table_url

pytestmark = pytest.mark.slow

RUN_NAMES = ("moe_top2 capacity_factor=1.0", "moe_top2 capacity_factor=1.25")
SERVER_START_S = 90
# A page of the UI takes 3-11 s to show its data on a 2-core machine (the first one loads the whole bundle);
# Playwright's `expect` waits 5 s unless told, and the context's default timeout does not reach it.
PAGE_TIMEOUT_MS = 30_000


@dataclass(frozen=True)
class MlflowUI:
    base: str  # http://127.0.0.1:PORT
    experiments: dict[str, str]  # "tagged" / "untagged" -> experiment id
    run_ids: dict[str, str]  # run name -> run id, in the tagged experiment


@pytest.fixture(scope="module", autouse=True)
def chromium() -> str:
    """Debian's chromium; looked up first, so that a machine without it skips before a server starts."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        reason = "no chromium on PATH for the MLflow UI test (apt-get install chromium)"
        if os.environ.get("WORKBENCH_REQUIRE_BROWSER"):
            pytest.fail(f"WORKBENCH_REQUIRE_BROWSER is set but there is {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def mlflow_ui(tmp_path_factory) -> Iterator[MlflowUI]:
    root = tmp_path_factory.mktemp("mlflow-ui")
    uri = f"sqlite:///{root}/mlflow.db"
    env = {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        # no background job runners (scorers, trace archival): fewer processes and a faster start
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    env.pop("MLFLOW_TRACKING_URI", None)  # the server's store is the one named on its command line
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        experiments, run_ids = _fill_store(uri, root / "artifacts")
    port = _free_port()
    log_path = root / "server.log"
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        uri,
        "--default-artifact-root",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with open(log_path, "wb") as log:  # a file, not a pipe: nobody reads a pipe while the tests run
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_until_healthy(server, base, log_path)
        yield MlflowUI(base, experiments, run_ids)
    finally:
        _stop(server)


@pytest.fixture(scope="module")
def browser_context(chromium):
    """One browser profile for the module, so that the UI bundle loads from its cache after the first page.
    Nothing here flips the sidebar's workflow switch, and `?workflowType=` in an address is not remembered
    (measured), so what one test opens does not change where the next lands."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        context.route("**/*", _loopback_only)
        context.set_default_timeout(PAGE_TIMEOUT_MS)
        yield context
        context.close()
        browser.close()


@pytest.fixture
def page(browser_context):
    page = browser_context.new_page()
    yield page
    page.close()


def test_an_experiment_opens_on_its_runs_table(mlflow_ui, page, tmp_path):
    exp_id = mlflow_ui.experiments["tagged"]
    page.goto(runs_table_url(exp_id, mlflow_ui.base))  # the address every run and multirun prints
    page.wait_for_url(re.compile(rf"#/experiments/{exp_id}/runs\?"))  # the UI redirects to its landing tab
    _shows(page.get_by_role("columnheader", name="Run Name").first)
    for name in RUN_NAMES:
        _shows(page.get_by_text(name, exact=True).first)
    _shows(page.get_by_text("2 matching runs"))
    page.screenshot(path=tmp_path / "experiment.png")


def test_a_run_page_shows_its_metrics(mlflow_ui, page, tmp_path):
    name = RUN_NAMES[1]
    exp_id, run_id = mlflow_ui.experiments["tagged"], mlflow_ui.run_ids[name]
    page.goto(f"{mlflow_ui.base}/#/experiments/{exp_id}/runs/{run_id}")
    _shows(page.get_by_text(name, exact=True).first)
    for metric in ("val/bpb", "cost/usd"):  # the overview's metrics table, below the run's details
        cell = page.get_by_text(metric, exact=True).first
        _shows(cell)
        cell.scroll_into_view_if_needed()  # for the screenshot
    page.screenshot(path=tmp_path / "run.png")


@pytest.mark.parametrize("kind", ["tagged", "untagged"])
def test_without_the_workflow_param_the_ui_opens_the_genai_overview(mlflow_ui, page, tmp_path, kind):
    """MLflow 3.17 ignores the experiment's kind tag: a bare link opens the traces overview, tag or not."""
    exp_id = mlflow_ui.experiments[kind]
    page.goto(f"{mlflow_ui.base}/#/experiments/{exp_id}")
    page.wait_for_url(re.compile(rf"#/experiments/{exp_id}/overview\b.*workflowType=genai"))
    _shows(page.get_by_text("Token Usage", exact=True).first)  # a chart of the overview's Usage tab
    page.screenshot(path=tmp_path / f"genai-{kind}.png")
    expect(page.get_by_role("columnheader", name="Run Name")).to_have_count(0)
    expect(page.get_by_text(RUN_NAMES[0], exact=True)).to_have_count(0)


def _shows(locator) -> None:
    expect(locator).to_be_visible(timeout=PAGE_TIMEOUT_MS)


def _fill_store(uri: str, artifacts: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Two finished runs of a capacity-factor pair, in a tagged experiment and in an untagged one."""
    import mlflow

    from workbench.tracking.session import EXPERIMENT_KIND, experiment_id

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiments = {
        "tagged": experiment_id(client, "ui-test"),
        "untagged": client.create_experiment("ui-test-untagged", artifact_location=artifacts.as_uri()),
    }
    assert client.get_experiment(experiments["tagged"]).tags[EXPERIMENT_KIND[0]] == EXPERIMENT_KIND[1]
    run_ids = {}
    for kind, exp_id in experiments.items():
        for i, (name, capacity) in enumerate(zip(RUN_NAMES, (1.0, 1.25), strict=True)):
            run_id = client.create_run(exp_id, run_name=name).info.run_id
            client.log_param(run_id, "moe.top_k", 2)
            client.log_param(run_id, "moe.capacity_factor", capacity)
            client.log_metric(run_id, "val/bpb", 1.42 - 0.01 * i, step=100)
            client.log_metric(run_id, "cost/usd", 0.031 + 0.004 * i, step=100)
            client.set_terminated(run_id, "FINISHED")
            if kind == "tagged":
                run_ids[name] = run_id
    return experiments, run_ids


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_healthy(server: subprocess.Popen, base: str, log_path: Path) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy from the env
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow server exited with {server.returncode}:\n{_tail(log_path)}")
        try:
            with opener.open(f"{base}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    pytest.fail(f"mlflow server did not answer {base}/health within {SERVER_START_S} s:\n{_tail(log_path)}")


def _stop(server: subprocess.Popen) -> None:
    """The server's whole process group: SIGTERM, then SIGKILL whatever is left after 10 s."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.wait(10)


def _tail(log_path: Path, lines: int = 40) -> str:
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])


def _loopback_only(route) -> None:
    host = urllib.parse.urlsplit(route.request.url).hostname
    if host == "127.0.0.1" or route.request.url.startswith(("data:", "blob:")):
        route.continue_()
    else:
        route.abort()
