"""The rows of the cost-benefit table (`../shared/reference/cost-benefit.md`): for each lever the arms it trains
and how its measured cell is computed from their runs.

An arm is a preset with overrides, trained once per seed; a row reads its arms' finished runs (one DataFrame row
per run, from `workbench.tracking.query.runs`) and their validation curves. Two sizes: `ci` (debug models, two
seeds, seconds per run: checks that every row fills) and `full` (the quickstart models, three seeds: the study).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

SIZES = ("ci", "full")


@dataclass(frozen=True)
class Arm:
    """One configuration of a lever, trained once per seed."""

    label: str
    preset: str
    overrides: tuple[str, ...] = ()

    def command(self, seeds: Sequence[int]) -> str:
        """The command line that trains this arm's runs."""
        seed = ",".join(str(s) for s in seeds)
        multirun = "-m " if len(seeds) > 1 else ""
        return " ".join(
            ["python train.py", f"{multirun}+experiment={self.preset}", *self.overrides, f"seed={seed}"]
        )


@dataclass(frozen=True)
class Row:
    """A lever: its arms, the estimate usually quoted, and `measure(runs, curves) -> Measured`."""

    lever: str
    estimate: str
    arms: tuple[Arm, ...]
    seeds: tuple[int, ...]
    measure: Callable[[pd.DataFrame, pd.DataFrame], Measured]


@dataclass
class Measured:
    """A row's measured cell: one sentence, its headline numbers (logged as report/<lever>/<name> metrics) and
    figures drawn from the runs."""

    text: str
    numbers: dict[str, float] = field(default_factory=dict)
    figures: list[Any] = field(default_factory=list)  # matplotlib Figures


def _settings(size: str) -> dict[str, Any]:
    if size not in SIZES:
        raise ValueError(f"size={size!r} is not one of: {', '.join(SIZES)}")
    if size == "ci":
        return {
            "dense": "dense_debug",
            "moe": "moe_debug",
            "debug": ("+debug=default",),
            "seeds": (0, 1),
            "common": (),
            "data_common": (),
        }
    # The settings of notebooks 01 (150 steps of the quickstart models) and 04 (the data presets as they are), so
    # a store holding the notebooks' full-size runs already holds these rows' (reused by their config digest).
    return {
        "dense": "quickstart_dense",
        "moe": "quickstart_moe",
        "debug": (),
        "seeds": (0, 1, 2),
        "common": ("budget.tokens=614400", "trainer.val_every_n_steps=25", "trainer.log_every_n_steps=25"),
        "data_common": ("trainer.log_every_n_steps=25",),
    }


def moe_preset(size: str) -> str:
    """The MoE preset the table's MoE rows train at `size`."""
    return _settings(size)["moe"]


def rows(size: str, d_ff_total: int) -> list[Row]:
    """The table's rows at `size`; `d_ff_total` is the dense width with the MoE's total FFN parameters."""
    s = _settings(size)
    common = s["common"]
    dense_active = Arm("dense, equal active", s["dense"], common)
    moe = Arm("MoE", s["moe"], common)
    dense_total = Arm("dense, equal total", s["dense"], (*common, f"model.d_ff={d_ff_total}"))
    unfiltered = Arm("unfiltered", "data_unfiltered", (*s["debug"], *s["data_common"]))
    filtered = Arm("filtered", "data_filtered", (*s["debug"], *s["data_common"]))
    eager = Arm("eager", s["dense"], common)
    compiled = Arm("torch.compile", s["dense"], (*common, "trainer.compile=true"))
    island_off = tuple(f"precision.router_{stage}_dtype=compute" for stage in ("logits", "scores", "combine"))
    precisions = (
        *(Arm(p, s["moe"], (*common, f"precision={p}")) for p in ("fp32", "bf16-mixed", "bf16-true")),
        # the router's fp32 island off: its logits, scores and combine in the compute dtype
        Arm("bf16-mixed, router in bf16", s["moe"], (*common, "precision=bf16-mixed", *island_off)),
    )
    seeds = s["seeds"]
    return [
        Row(
            "Mixture-of-Experts",
            "60-70% less active compute per token than a dense model of the same total size; about the cost "
            "of a dense model a third of its size, and much better",
            (dense_active, moe, dense_total),
            seeds,
            measure_moe,
        ),
        Row(
            "data filtering",
            "20-30% fewer training tokens to reach a target quality",
            (unfiltered, filtered),
            seeds,
            measure_filtering,
        ),
        Row(
            "kernels and compile",
            "2-3x training throughput per device",
            (eager, compiled),
            seeds[:2],
            measure_compile,
        ),
        Row(
            "mixed precision",
            "large speed and memory saving without losing stability",
            precisions,
            seeds[:2],
            measure_precision,
        ),
        Row(
            "utilization",
            "raising MFU from 40% to 60% = 1.5x effective compute",
            (dense_active, moe),
            seeds,
            measure_utilization,
        ),
    ]


# -- measurements ------------------------------------------------------------------------------------------


def _mean_std(runs: pd.DataFrame, arm: str, metric: str) -> tuple[float, float, int]:
    x = runs.loc[runs["arm"] == arm, metric].astype(float)
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0, len(x)


def _pm(runs: pd.DataFrame, arm: str, metric: str, fmt: str = ".3f") -> str:
    m, s, n = _mean_std(runs, arm, metric)
    return f"{m:{fmt}} ± {s:{fmt}}" if n > 1 else f"{m:{fmt}}"


def at_x(curves: pd.DataFrame, run_id: str, x: str, at: float, y: str = "val/bpb") -> float:
    """`y` of one run's curve at `x` = `at`, interpolated linearly between validation points (NaN outside)."""
    c = curves[curves["run_id"] == run_id].dropna(subset=[x, y]).sort_values(x)
    if c.empty or at < c[x].iloc[0] or at > c[x].iloc[-1]:
        return float("nan")
    return float(np.interp(at, c[x], c[y]))


def first_reaching(curves: pd.DataFrame, run_id: str, target: float, x: str, y: str = "val/bpb") -> float:
    """The `x` at which one run's curve first falls to `target` (linear between validation points), or NaN
    when it never does."""
    c = curves[curves["run_id"] == run_id].dropna(subset=[x, y]).sort_values("step")
    xs, ys = c[x].to_numpy(float), c[y].to_numpy(float)
    for i in range(len(ys)):
        if ys[i] <= target:
            if i == 0:
                return float(xs[0])
            frac = (ys[i - 1] - target) / (ys[i - 1] - ys[i])
            return float(xs[i - 1] + frac * (xs[i] - xs[i - 1]))
    return float("nan")


def _figure(curves: pd.DataFrame, runs: pd.DataFrame, x: str, title: str, logx: bool = False):
    """Validation bpb against `x`, one line per arm (mean over seeds, one std shaded)."""
    from matplotlib.figure import Figure

    from workbench.tracking.query import plot_curves, seed_spread

    arm_of = dict(zip(runs["run_id"], runs["arm"], strict=True))
    spread = seed_spread(curves.assign(arm=curves["run_id"].map(arm_of)), by="arm")
    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    plot_curves(spread, x, by="arm", ax=ax, logx=logx)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def measure_moe(runs: pd.DataFrame, curves: pd.DataFrame) -> Measured:
    """Active FLOPs/token against the equal-total dense model; val bpb of the three arms at equal training
    FLOPs (the MoE's budget; the equal-total dense model's curve interpolated there)."""
    flops = {a: _mean_std(runs, a, "cost/flops_per_token")[0] for a in ("MoE", "dense, equal total")}
    ratio = flops["MoE"] / flops["dense, equal total"]
    budget = _mean_std(runs, "MoE", "cost/train_flops")[0]
    total = runs[runs["arm"] == "dense, equal total"]
    at_budget = [at_x(curves, r, "cost/train_flops", budget) for r in total["run_id"]]
    at_budget = [v for v in at_budget if v == v]
    wide = (
        f"{np.mean(at_budget):.3f}" + (f" ± {np.std(at_budget, ddof=1):.3f}" if len(at_budget) > 1 else "")
        if at_budget
        else "n/a (its curve does not reach the budget)"
    )
    text = (
        f"{100 * (1 - ratio):.0f}% less active compute per token than the equal-total dense model "
        f"({ratio:.2f}x its FLOPs/token). Val bpb at the MoE's {budget:.3g} training FLOPs: MoE "
        f"{_pm(runs, 'MoE', 'val/bpb')}, dense at equal active {_pm(runs, 'dense, equal active', 'val/bpb')}, "
        f"dense at equal total {wide}."
    )
    numbers = {
        "flops_per_token_ratio": ratio,
        "bpb_moe": _mean_std(runs, "MoE", "val/bpb")[0],
        "bpb_dense_active": _mean_std(runs, "dense, equal active", "val/bpb")[0],
    }
    if at_budget:
        numbers["bpb_dense_total_at_equal_flops"] = float(np.mean(at_budget))
    fig = _figure(curves, runs, "cost/train_flops", "MoE vs dense: val bpb against training FLOPs", logx=True)
    return Measured(text, numbers, [fig])


def measure_filtering(runs: pd.DataFrame, curves: pd.DataFrame) -> Measured:
    """Training tokens the filtered mixture needs to reach the unfiltered run's final val bpb (same seed), on the
    same clean held-out text."""
    fractions, reached = [], 0
    filtered = runs[runs["arm"] == "filtered"]
    for _, base in runs[runs["arm"] == "unfiltered"].iterrows():
        twin = filtered[filtered["seed"] == base["seed"]]
        if twin.empty:
            continue
        row = twin.iloc[0]
        tokens = first_reaching(curves, row["run_id"], float(base["val/bpb"]), "cost/tokens")
        if tokens == tokens:
            reached += 1
            fractions.append(tokens / float(base["cost/tokens"]))
    n = int((runs["arm"] == "unfiltered").sum())
    if fractions:
        f = float(np.mean(fractions))
        spread = f" ± {100 * np.std(fractions, ddof=1):.0f} pts" if len(fractions) > 1 else ""
        text = (
            f"the filtered mixture reaches the unfiltered final val bpb ({_pm(runs, 'unfiltered', 'val/bpb')}) "
            f"after {100 * f:.0f}%{spread} of the tokens ({100 * (1 - f):.0f}% fewer; {reached} of {n} seeds "
            f"reach it); final val bpb filtered {_pm(runs, 'filtered', 'val/bpb')}."
        )
        numbers = {"tokens_fraction_to_baseline": f}
    else:
        text = (
            f"the filtered mixture does not reach the unfiltered final val bpb "
            f"({_pm(runs, 'unfiltered', 'val/bpb')}) within the budget in any of {n} seeds "
            f"(final: {_pm(runs, 'filtered', 'val/bpb')})."
        )
        numbers = {}
    numbers["bpb_unfiltered"] = _mean_std(runs, "unfiltered", "val/bpb")[0]
    numbers["bpb_filtered"] = _mean_std(runs, "filtered", "val/bpb")[0]
    fig = _figure(curves, runs, "cost/tokens", "filtered vs unfiltered: val bpb on clean held-out text")
    return Measured(text, numbers, [fig])


def steady_throughput(curves: pd.DataFrame, run_id: str) -> float:
    """Tokens per second of training between a run's first and last validation points: what a step costs once
    the first interval (where torch.compile compiles) is behind it."""
    c = (
        curves[curves["run_id"] == run_id]
        .dropna(subset=["cost/tokens", "cost/train_seconds"])
        .sort_values("step")
    )
    if len(c) < 2:
        return float("nan")
    first, last = c.iloc[0], c.iloc[-1]
    return float(
        (last["cost/tokens"] - first["cost/tokens"])
        / (last["cost/train_seconds"] - first["cost/train_seconds"])
    )


def paired_ratios(values: dict[tuple[str, int], float], arm: str, base: str) -> list[float]:
    """`arm` over `base` seed by seed (the seeds both have): each seed's runs share data order and init."""
    seeds = sorted({s for a, s in values if a == arm} & {s for a, s in values if a == base})
    return [values[(arm, s)] / values[(base, s)] for s in seeds]


def _ratio_text(ratios: list[float]) -> str:
    ratios = [r for r in ratios if r == r]
    if not ratios:
        return "n/a"
    mean = float(np.mean(ratios))
    return f"{mean:.2f}x" + (f" ± {np.std(ratios, ddof=1):.2f}" if len(ratios) > 1 else "")


def _by_arm_seed(runs: pd.DataFrame, metric: str) -> dict[tuple[str, int], float]:
    return {(a, int(s)): float(v) for a, s, v in zip(runs["arm"], runs["seed"], runs[metric], strict=True)}


def measure_compile(runs: pd.DataFrame, curves: pd.DataFrame) -> Measured:
    """Training throughput with torch.compile over eager PyTorch, same model and batch, on this machine: steady
    (after the first validation interval) and over the whole run (compilation included), seed by seed."""
    steady = {
        (a, int(s)): steady_throughput(curves, r)
        for a, s, r in zip(runs["arm"], runs["seed"], runs["run_id"], strict=True)
    }
    whole = _by_arm_seed(runs, "cost/tokens_per_s")
    steady_ratios = paired_ratios(steady, "torch.compile", "eager")
    whole_ratios = paired_ratios(whole, "torch.compile", "eager")

    def mean_of(values: dict, arm: str) -> float:
        return float(np.nanmean([v for (a, _), v in values.items() if a == arm]))

    text = (
        f"torch.compile: {_ratio_text(steady_ratios)} the eager tokens/s once compiled "
        f"({mean_of(steady, 'torch.compile'):,.0f} vs {mean_of(steady, 'eager'):,.0f}), "
        f"{_ratio_text(whole_ratios)} over the whole run (compilation included); no GPU record yet "
        f"(Triton kernels: issue 11)."
    )
    return Measured(
        text,
        {
            "compile_steady_throughput_ratio": float(np.nanmean(steady_ratios)),
            "compile_run_throughput_ratio": float(np.nanmean(whole_ratios)),
        },
    )


def measure_precision(runs: pd.DataFrame, curves: pd.DataFrame) -> Measured:
    """Tokens/s and peak memory of each precision policy over fp32 (seed by seed), its quality and its router
    flip rate."""
    parts, numbers = [], {}
    tps, mem = _by_arm_seed(runs, "cost/tokens_per_s"), _by_arm_seed(runs, "cost/peak_mem_gb")
    for arm in dict.fromkeys(runs["arm"]):
        if arm == "fp32":
            part = f"fp32: {_pm(runs, arm, 'cost/tokens_per_s', ',.0f')} tokens/s, "
            part += (
                f"{_pm(runs, arm, 'cost/peak_mem_gb', '.2f')} GB peak, val bpb {_pm(runs, arm, 'val/bpb')}"
            )
            parts.append(part)
            continue
        tps_r, mem_r = paired_ratios(tps, arm, "fp32"), paired_ratios(mem, arm, "fp32")
        part = (
            f"{arm}: {_ratio_text(tps_r)} tokens/s, {_ratio_text(mem_r)} peak memory, "
            f"val bpb {_pm(runs, arm, 'val/bpb')}"
        )
        key = slug(arm)
        numbers |= {
            f"{key}_throughput_ratio": float(np.mean(tps_r)),
            f"{key}_memory_ratio": float(np.mean(mem_r)),
        }
        flips = (
            runs.loc[runs["arm"] == arm, "moe/router_flip_rate"] if "moe/router_flip_rate" in runs else None
        )
        if flips is not None and flips.notna().any():  # logged only where a router stage is not fp32
            part += f", router decisions flipped against fp32 {100 * float(flips.mean()):.2f}%"
            numbers[f"{key}_router_flip_rate"] = float(flips.mean())
        parts.append(part)
    return Measured(
        "; ".join(parts) + " (ratios against fp32 seed by seed; the router in fp32 unless named).", numbers
    )


def slug(text: str) -> str:
    """A lever or arm name as a metric-key part: "mixed precision" -> "mixed_precision"."""
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")


def measure_utilization(runs: pd.DataFrame, curves: pd.DataFrame) -> Measured:
    """MFU of the dense and the MoE run against this machine's peak; what the MoE loses to routing and dispatch
    shows as the MFU gap at nearly equal FLOPs per token."""
    dense = _mean_std(runs, "dense, equal active", "cost/mfu")
    moe = _mean_std(runs, "MoE", "cost/mfu")
    hardware = runs["param:cost.hardware"].iloc[0] if "param:cost.hardware" in runs else "cpu"
    peak = "the measured CPU peak" if hardware == "cpu" else f"the {hardware} peak"
    text = (
        f"MFU dense {100 * dense[0]:.0f}%, MoE {100 * moe[0]:.0f}% (± {100 * max(dense[1], moe[1]):.0f} pts over "
        f"seeds) of {peak}; at nearly equal FLOPs/token the gap is what routing and dispatch (small per-expert "
        f"matmuls) cost."
    )
    return Measured(text, {"mfu_dense": dense[0], "mfu_moe": moe[0]})
