"""Printed summaries: one run's quality and cost, and several runs side by side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.console import Console
from rich.table import Table

# (metric, label, format) in the order a reader compares runs: quality first, then cost.
SUMMARY_ROWS: list[tuple[str, str, str]] = [
    ("val/bpb", "val bits/byte", "{:.4f}"),
    ("val/loss", "val loss (nats/token)", "{:.4f}"),
    ("train/loss", "train loss", "{:.4f}"),
    ("model.total_params", "params, total", "{:,.0f}"),
    ("model.active_params", "params, active", "{:,.0f}"),
    ("cost/flops_per_token", "train FLOPs/token", "{:.3e}"),
    ("cost/train_flops", "train FLOPs", "{:.3e}"),
    ("cost/tokens", "tokens", "{:,.0f}"),
    ("cost/tokens_per_s", "tokens/s", "{:,.0f}"),
    ("cost/train_seconds", "train time (s)", "{:,.1f}"),
    ("cost/mfu", "MFU", "{:.2%}"),
    ("cost/device_hours", "device-hours", "{:.4f}"),
    ("cost/usd", "cost (USD)", "${:.4f}"),
    ("cost/peak_mem_gb", "peak memory (GB)", "{:.2f}"),
    ("moe/max_vio", "MoE MaxVio, last batch", "{:.3f}"),
    ("moe/max_vio_global", "MoE MaxVio, whole run", "{:.3f}"),
    ("moe/load_cv", "MoE load CV", "{:.3f}"),
    ("moe/drop_frac", "MoE dropped fraction", "{:.3%}"),
    ("moe/router_entropy", "MoE router entropy (nats)", "{:.3f}"),
    ("moe/aux_loss", "MoE aux loss (unscaled)", "{:.4f}"),
    ("moe/z_loss", "MoE z-loss (unscaled)", "{:.4f}"),
    ("moe/bias_range", "MoE aux-free bias range", "{:.4f}"),
]


def _fmt(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def comparison_table(columns: Mapping[str, Mapping[str, float]], title: str = "Quality and cost") -> Table:
    """A rich Table: one row per metric, one column per run."""
    table = Table(title=title, show_lines=False)
    table.add_column("metric", style="bold")
    for name in columns:
        table.add_column(name, justify="right")
    for key, label, fmt in SUMMARY_ROWS:
        values = [columns[name].get(key) for name in columns]
        if all(v is None for v in values):
            continue
        table.add_row(label, *(_fmt(v, fmt) for v in values))
    return table


def print_comparison(
    columns: Mapping[str, Mapping[str, float]], title: str = "Quality and cost", footer: Sequence[str] = ()
) -> None:
    import sys

    # Piped to a log file rich would wrap at 80 columns and cut the run names; give the table room there.
    width = min(250, max(100, 30 + sum(max(len(name), 12) + 3 for name in columns)))
    console = Console() if sys.stdout.isatty() else Console(width=width)
    console.print(comparison_table(columns, title))
    for line in footer:
        console.print(line, highlight=False, soft_wrap=True)
