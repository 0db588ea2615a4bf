"""The data report: per source and per rule, what a mixture's filters removed, printed and as `data/*` metrics."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.table import Table


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def render(
    report: dict[str, Any], mixing: dict[str, Any] | None = None, console: Console | None = None
) -> None:
    """Print the per-source accounting, the per-rule table, overlaps, samples and filter notes."""
    console = console or (Console() if sys.stdout.isatty() else Console(width=160))
    src = Table(title="data mixture: sources (documents in = kept + removed + sampled out)")
    for col in (
        "source",
        "docs in",
        "kept train",
        "kept val",
        "removed",
        "sampled out",
        "tokens in",
        "tokens kept",
    ):
        src.add_column(col, justify="right" if col != "source" else "left")
    if mixing:
        src.add_column("mixture share", justify="right")
        src.add_column("epochs", justify="right")
    for name, s in report["sources"].items():
        removed = sum(s["removed"].values())
        row = [
            name,
            f"{s['docs_in']:,}",
            f"{s['docs_kept_train']:,}",
            f"{s['docs_kept_val']:,}",
            f"{removed:,} ({_pct(removed, s['docs_in'])})",
            f"{s.get('sampled_out', 0):,}",
            f"{s['tokens_in']:,}",
            f"{s['tokens_kept']:,}",
        ]
        if mixing:
            m = mixing.get(name)
            row += [f"{m['share']:.3f}", f"{m['epochs']:.2f}"] if m else ["0", "0"]
        src.add_row(*row)
    console.print(src)

    rules = Table(title=f"rules (first rule that fired; tokens = {report.get('token_unit', 'tokens')})")
    for col in ("rule", "docs removed", "% of docs in", "tokens removed", "docs flagged (any order)"):
        rules.add_column(col, justify="right" if col != "rule" else "left")
    for rule, r in report["rules"].items():
        rules.add_row(
            rule,
            f"{r['docs_removed_first']:,}",
            _pct(r["docs_removed_first"], report["docs_in"]),
            f"{r['tokens_removed_first']:,}",
            f"{r['docs_flagged']:,}",
        )
    console.print(rules)
    if report.get("overlaps"):
        ov = Table(title="overlaps: documents flagged by both rules")
        ov.add_column("rule")
        ov.add_column("and rule")
        ov.add_column("docs", justify="right")
        for o in report["overlaps"][:12]:
            ov.add_row(o["rules"][0], o["rules"][1], f"{o['docs']:,}")
        console.print(ov)
    for label, lines in report.get("describe", {}).items():
        for line in lines:
            console.print(f"{label}: {line}", highlight=False)
    for rule, r in report["rules"].items():
        for sample in r.get("samples", []):
            text = " ".join(sample["text"].split())[:140]
            console.print(f"[dim]{rule}[/dim] {sample['id']}: {text}", highlight=False, soft_wrap=True)
    console.print(
        f"{report['docs_in']:,} documents in, {report['docs_kept']:,} kept, {report['docs_removed']:,} removed, "
        f"{report.get('docs_sampled_out', 0):,} sampled out by max_docs; "
        f"signals: {report.get('signal_tasks_cached', 0)} cached, {report.get('signal_tasks_computed', 0)} computed; "
        f"{report.get('seconds', 0):.1f} s" + (" (from cache)" if report.get("from_cache") else ""),
        highlight=False,
    )


def report_metrics(report: dict[str, Any], mixing: dict[str, Any] | None = None) -> dict[str, float]:
    """`data/*` metrics: docs in/kept, per-rule removals (docs and tokens), per-source sizes and epochs."""
    out: dict[str, float] = {
        "data/docs_in": float(report["docs_in"]),
        "data/docs_kept": float(report["docs_kept"]),
        "data/docs_removed": float(report["docs_removed"]),
        "data/docs_sampled_out": float(report.get("docs_sampled_out", 0)),
    }
    for rule, r in report["rules"].items():
        key = rule.replace(":", "/")
        out[f"data/removed/{key}"] = float(r["docs_removed_first"])
        out[f"data/removed_tokens/{key}"] = float(r["tokens_removed_first"])
    for name, s in report["sources"].items():
        out[f"data/source/{name}/docs_in"] = float(s["docs_in"])
        out[f"data/source/{name}/docs_kept"] = float(s["docs_kept"])
        if mixing and name in mixing:
            out[f"data/source/{name}/train_tokens"] = float(mixing[name]["tokens"])
            out[f"data/source/{name}/epochs"] = float(mixing[name]["epochs"])
    return out


def sources_frame(report: dict[str, Any]):
    """The per-source accounting as a pandas DataFrame (one row per source)."""
    import pandas as pd

    rows = [
        {
            "source": name,
            **{k: v for k, v in s.items() if not isinstance(v, dict)},
            "removed": sum(s["removed"].values()),
        }
        for name, s in report["sources"].items()
    ]
    return pd.DataFrame(rows).set_index("source")


def rules_frame(report: dict[str, Any]):
    """The per-rule table as a pandas DataFrame: docs and tokens removed as first rule, docs flagged at all."""
    import pandas as pd

    rows = [
        {"rule": rule, "filter": rule.split(":")[0], **{k: v for k, v in r.items() if k != "samples"}}
        for rule, r in report["rules"].items()
    ]
    return pd.DataFrame(rows).set_index("rule")
