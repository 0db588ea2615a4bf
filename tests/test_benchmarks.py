"""The benchmark rule (benchmarks/README.md): the shared harness, and every speed script's record in a smoke run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import harness  # noqa: E402


def test_summary_and_ratio_against_the_fastest_baseline_path():
    times = {
        "ours": [0.010, 0.012, 0.011, 0.013, 0.009],
        "slow_path": [0.040, 0.041, 0.039, 0.040, 0.042],
        "fast_path": [0.021, 0.022, 0.023, 0.022, 0.020],
    }
    summary = harness.summarize(times)
    assert summary["ours"]["median_ms"] == pytest.approx(11.0)
    assert summary["ours"]["min_ms"] == pytest.approx(9.0)
    assert summary["ours"]["repeats"] == 5
    # statistics.quantiles (exclusive method) of 9, 10, 11, 12, 13: q1 = 9.5, q3 = 12.5
    assert summary["ours"]["iqr_ms"] == pytest.approx(3.0)
    vs = harness.against_fastest(summary, "ours", ["slow_path", "fast_path"])
    assert vs["fastest"] == "fast_path"
    assert set(vs["paths"]) == {"slow_path", "fast_path"}
    assert vs["ours_over_fastest"] == pytest.approx(0.5)
    assert vs["fastest_over_ours"] == pytest.approx(2.0)


def test_interleaving_runs_every_candidate_once_per_repeat_in_a_rotating_order():
    calls: list[str] = []
    candidates = {name: (lambda n=name: calls.append(n)) for name in ("a", "b", "c")}
    times = harness.time_interleaved(candidates, warmup=1, repeats=3)
    assert {n: len(t) for n, t in times.items()} == {"a": 3, "b": 3, "c": 3}  # warm-up not kept
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]


def test_too_few_repeats_and_unknown_allocators_are_refused():
    with pytest.raises(SystemExit, match="at least 20"):
        harness.check_repeats(5, quick=False)
    harness.check_repeats(3, quick=True)  # a smoke run says so in its record
    with pytest.raises(ValueError, match="fixed, glibc-default"):
        harness.set_allocator("tcmalloc")
    assert harness.set_allocator("glibc-default")["mode"] == "glibc-default"  # changes nothing


def test_load_meter_reports_other_processes_share():
    load = harness.LoadMeter().record()
    assert {"loadavg_1min_start", "loadavg_1min_end", "cores", "wall_s"} <= set(load)
    assert 0.0 <= load.get("other_processes_cpu_share", 0.0) <= 1.0


def run_quick(script: str, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads(out.stdout)
    assert record["quick"] is True
    assert record["allocator"]["mode"] == "fixed"
    assert record["allocator"]["mmap_threshold"] == harness.FIXED_MMAP_THRESHOLD
    assert "other_processes_cpu_share" in record["load"]
    return record


@pytest.mark.slow
def test_moe_layer_record_lists_every_hf_path_and_checks_routing_parity():
    record = run_quick("moe_layer.py", "--cases", "E8_k2")
    case = record["cases"]["E8_k2"]
    assert set(case["hf"]["paths"]) == {"hf_eager", "hf_batched_mm", "hf_grouped_mm"}  # 64 tokens: all fit
    assert case["hf"]["fastest"] in case["hf"]["paths"]
    assert case["max_abs_diff_vs_hf"] < 1e-5
    assert case["timings"]["dense"]["repeats"] == 3


@pytest.mark.slow
def test_train_model_record_compares_equal_parameter_counts_over_every_hf_path():
    record = run_quick("train_model.py", "--sizes", "quickstart")
    size = record["sizes"]["quickstart"]
    hf = {p for p in size["params"] if p.startswith("hf_")}
    assert hf == {f"hf_{e}_{a}" for e in ("eager", "batched_mm", "grouped_mm") for a in ("sdpa", "eager")}
    assert {size["params"][p] for p in hf} == {size["params"]["ours_moe"]}
    assert size["flops_ratio"] == pytest.approx(1.0, abs=0.01)  # the dense model has equal active compute
    assert set(size["targets"]) == {"moe>=1.3x_fastest_hf", "moe_over_dense<=1.10"}


@pytest.mark.slow
def test_minhash_record_times_every_datasketch_path():
    record = run_quick("minhash.py")
    paths = {"datasketch_update", "datasketch_update_batch", "datasketch_bulk", "datasketch_bulk_xxh32"}
    assert set(record["datasketch"]["paths"]) == paths
    assert record["update_batch_identical_to_update"] is True
    assert record["speedup_over_fastest"] == pytest.approx(
        record["docs_per_s"]["ours"] / max(record["docs_per_s"][p] for p in paths), rel=1e-6
    )


@pytest.mark.slow
def test_train_step_record_interleaves_the_two_presets():
    record = run_quick("train_step.py")
    assert record["quickstart_dense"]["repeats"] == record["quickstart_moe"]["repeats"] == 3
    assert record["moe_over_dense"] == pytest.approx(
        record["quickstart_moe"]["median_s"] / record["quickstart_dense"]["median_s"]
    )
