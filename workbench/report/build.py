"""Build the cost-benefit report: find or train every arm's runs, measure each row, write Markdown and a
self-contained HTML page, and log both to an MLflow run named `report <size>`.

A run is reused when a FINISHED run of the experiment carries the same config digest (`workbench.config_digest`:
SHA-256 of the resolved config minus where it is written), so a second call trains nothing; `rerun=True`
trains every arm again.
"""

from __future__ import annotations

import base64
import html
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.report.levers import Measured, Row, moe_preset, rows, slug

CURVE_XS = ("cost/train_flops", "cost/train_seconds", "cost/tokens")


@dataclass
class Report:
    """What `build_report` produced: the table, each row's measurement and run ids, and where it was written."""

    size: str
    table: pd.DataFrame
    measured: dict[str, Measured]
    run_ids: dict[str, list[str]]
    trained: list[str] = field(default_factory=list)  # run ids trained by this call (empty: all reused)
    markdown: str = ""
    paths: dict[str, Path] = field(default_factory=dict)
    mlflow_run_id: str | None = None


def build_report(
    size: str = "full",
    rerun: bool = False,
    out_dir: str | Path = "reports",
    tracking_uri: str | None = None,
    experiment: str = "workbench",
    log=print,
) -> Report:
    """The cost-benefit table at `size` ("ci" or "full"), training only the runs the store lacks."""
    from workbench.config.compose import DIGEST_TAG, config_digest
    from workbench.models.moe.shape import MoEShape
    from workbench.paths import resolve_path
    from workbench.preflight import compose
    from workbench.runner import run
    from workbench.tracking.query import curves, runs
    from workbench.tracking.session import client_for, experiment_id

    client = client_for(tracking_uri)
    uri = client.tracking_uri
    exp_id = experiment_id(client, experiment)
    where = [
        f"tracking.tracking_uri={uri}",
        f"tracking.experiment_name={experiment}",
        "trainer.progress_bar=false",
    ]

    moe_cfg = compose(moe_preset(size))
    shape = MoEShape.of(moe_cfg.moe, moe_cfg.model.d_ff)
    table_rows = rows(size, shape.total_hidden)

    trained: list[str] = []
    found: dict[str, str] = {}  # digest -> run id

    def ensure(arm, seed: int) -> str:
        cfg = compose(arm.preset, [*arm.overrides, f"seed={seed}", *where])
        digest = config_digest(cfg)
        if digest in found:
            return found[digest]
        hits = (
            []
            if rerun
            else client.search_runs(
                [exp_id],
                f"tags.`{DIGEST_TAG}` = '{digest}' and attributes.status = 'FINISHED'",
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
        )
        if hits:
            found[digest] = hits[0].info.run_id
        else:
            log(f"training {arm.label} seed {seed}: {arm.command([seed])}")
            t0 = time.perf_counter()
            result = run(cfg, print_summary=False)
            log(f"  val/bpb {result.metrics['val/bpb']:.4f} in {time.perf_counter() - t0:.0f} s")
            found[digest] = result.run_id
            trained.append(result.run_id)
        return found[digest]

    measured: dict[str, Measured] = {}
    run_ids: dict[str, list[str]] = {}
    lines = []
    for row in table_rows:
        keys = [(arm, seed, ensure(arm, seed)) for arm in row.arms for seed in row.seeds]
        ids = [rid for _, _, rid in keys]
        df = runs(experiment, uri, run_ids=ids)
        df["arm"] = df["run_id"].map({rid: arm.label for arm, _, rid in keys})
        df["seed"] = df["run_id"].map({rid: seed for _, seed, rid in keys})
        position = {rid: i for i, rid in enumerate(ids)}  # the row's arm order, then seed order
        df = df.sort_values("run_id", key=lambda col: col.map(position)).reset_index(drop=True)
        m = row.measure(df, curves(ids, xs=CURVE_XS, tracking_uri=uri))
        measured[row.lever], run_ids[row.lever] = m, ids
        lines.append(
            {
                "lever": row.lever,
                "estimate usually quoted": row.estimate,
                "measured here": m.text,
                "seeds": len(row.seeds),
                "runs": ", ".join(dict.fromkeys(r[:8] for r in ids)),
                "reproduce": " ; ".join(arm.command(row.seeds) for arm in row.arms),
            }
        )
    table = pd.DataFrame(lines)
    report = Report(size, table, measured, run_ids, trained)
    report.markdown = to_markdown(report)
    out = resolve_path(str(out_dir))
    out.mkdir(parents=True, exist_ok=True)
    report.paths = {"md": out / f"cost-benefit-{size}.md", "html": out / f"cost-benefit-{size}.html"}
    report.paths["md"].write_text(report.markdown)
    report.paths["html"].write_text(to_html(report, table_rows))
    report.mlflow_run_id = log_report(report, experiment, uri)
    return report


def to_markdown(report: Report) -> str:
    """The table as GitHub Markdown, with how it was made."""
    head = ["lever", "estimate usually quoted", "measured here", "runs", "reproduce"]

    def cell(text: Any) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    out = [
        f"# The cost-benefit table, measured ({report.size} size)",
        "",
        "Made by `python -m workbench.report --size "
        + report.size
        + "`; run ids are MLflow run id prefixes.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for _, r in report.table.iterrows():
        cmd = "`" + cell(r["reproduce"]).replace(" ; ", "` `") + "`"
        out.append(
            "| "
            + " | ".join(
                [
                    cell(r["lever"]),
                    cell(r["estimate usually quoted"]),
                    cell(r["measured here"]),
                    cell(r["runs"]),
                    cmd,
                ]
            )
            + " |"
        )
    return "\n".join(out) + "\n"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return base64.b64encode(buf.getvalue()).decode()


def to_html(report: Report, table_rows: list[Row]) -> str:
    """One HTML page with no outside references: the table, then each row's figures inlined as PNG."""
    esc = html.escape
    body = [f"<h1>The cost-benefit table, measured ({esc(report.size)} size)</h1>", "<table>"]
    body.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in report.table.columns) + "</tr>")
    for _, r in report.table.iterrows():
        body.append("<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in r) + "</tr>")
    body.append("</table>")
    for row in table_rows:
        for fig in report.measured[row.lever].figures:
            body.append(
                f"<h2>{esc(row.lever)}</h2><img alt='{esc(row.lever)}' src='data:image/png;base64,{_png(fig)}'>"
            )
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;font-size:13px}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>cost-benefit ({esc(report.size)})</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )


def log_report(report: Report, experiment: str, tracking_uri: str) -> str:
    """A FINISHED MLflow run `report <size>`: the headline numbers as report/<lever>/<name> metrics, the run ids
    it read as a tag per lever, report.md, report.html and each figure."""
    from workbench.tracking.session import TrackingSession

    tags = {"workbench.kind": "report", "workbench.report_size": report.size}
    tags |= {f"workbench.report.runs.{slug(lever)}": ",".join(ids) for lever, ids in report.run_ids.items()}
    with TrackingSession.start(experiment, f"report {report.size}", tags, tracking_uri) as session:
        session.log_params({"size": report.size, "trained": len(report.trained)})
        metrics = {
            f"report/{slug(lever)}/{name}": value
            for lever, m in report.measured.items()
            for name, value in m.numbers.items()
        }
        session.log_metrics(metrics)
        session.log_artifact(report.paths["md"])
        session.log_artifact(report.paths["html"])
        for lever, m in report.measured.items():
            for i, fig in enumerate(m.figures):
                session.log_figure(fig, f"figures/{slug(lever)}_{i}.png")
        session.finish()
    return session.run_id
