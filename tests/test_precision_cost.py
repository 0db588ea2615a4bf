"""Precision policies run end to end; hardware peaks, prices and the cached CPU probe."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import pytest
import torch

import workbench
from workbench.cost import hardware
from workbench.training.precision import lightning_precision


def test_policy_mapping():
    assert lightning_precision("fp32", "cpu") == ("32-true", None)
    assert lightning_precision("bf16-mixed", "cpu") == ("bf16-mixed", None)
    assert lightning_precision("bf16-true", "cpu") == ("bf16-true", None)
    assert lightning_precision("fp16-mixed", "gpu") == ("16-mixed", None)
    precision, note = lightning_precision("fp16-mixed", "cpu")
    assert precision == "bf16-mixed" and "precision.policy=fp16-mixed" in note


@pytest.mark.parametrize("policy", ["bf16-mixed", "bf16-true", "fp16-mixed"])
def test_half_precision_policies_train_on_cpu(policy, debug_overrides):
    cfg = workbench.compose(
        "moe_debug", [*debug_overrides, f"precision={policy}", "budget.steps=6", "data.max_docs=60"]
    )
    result = workbench.run(cfg, print_summary=False)
    assert math.isfinite(result.metrics["val/loss"]) and result.metrics["val/loss"] < math.log(257)
    import mlflow

    params = mlflow.MlflowClient().get_run(result.run_id).data.params
    assert params["precision.policy"] == policy and all(
        params[f"precision.router_{stage}_dtype"] == "fp32"
        for stage in ("param", "logits", "scores", "combine")
    )


def test_gpu_table_uses_the_compute_dtype_peak():
    assert hardware.peak_flops("h100", "bf16-mixed") == 989e12
    assert hardware.peak_flops("h200", "fp16-mixed") == 989e12
    assert hardware.peak_flops("a100", "fp32") == 19.5e12
    assert hardware.peak_flops("a100", "bf16-true", override=1e12) == 1e12
    assert hardware.price_per_hour("h100") == 2.50 and hardware.price_per_hour("h100", 4.0) == 4.0


def test_cpu_peak_is_measured_once_then_read_from_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    real_probe = hardware._probe
    # the test suite runs on two workers: count the probe's own CPU share as quiet, whatever the other worker does
    monkeypatch.setattr(hardware, "_probe", lambda a, b, repeats: (real_probe(a, b, repeats)[0], 1.0))
    first = hardware.measure_cpu_peak("fp32", n=256, repeats=3)
    assert first > 1e8  # any CPU of this decade does more than 0.1 GFLOP/s on a matmul
    assert (tmp_path / "cpu_peak.json").is_file()
    calls = []
    monkeypatch.setattr(torch, "randn", lambda *a, **k: calls.append(a) or torch.zeros(*a))
    assert hardware.measure_cpu_peak("fp32", n=256, repeats=3) == first
    assert calls == []  # the cache answered; no matmul ran


def test_a_contended_cpu_peak_is_retried_and_never_cached(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    shares = iter([0.5, 0.55, 0.6])  # another process holds half the cores on every attempt
    calls = []

    def contended(a, b, repeats):
        calls.append(repeats)
        return 2.0 * a.shape[0] ** 3 / (1e9 * (1 + len(calls))), next(shares)  # 2, 3, 4 GFLOP/s

    monkeypatch.setattr(hardware, "_probe", contended)
    with caplog.at_level("WARNING", logger="workbench.cost.hardware"):
        peak = hardware.measure_cpu_peak("fp32", n=64, repeats=4)
    assert calls == [4, 4, 4]  # three attempts
    assert peak == pytest.approx(4e9)  # the best of them
    assert not (tmp_path / "cpu_peak.json").exists()
    assert "ran contended: the process held 60% of its cores" in caplog.text

    # the next run measures again; a quiet attempt ends the retries and is cached
    monkeypatch.setattr(hardware, "_probe", lambda a, b, repeats: (2.0 * 64**3 / 5e9, 0.97))
    assert hardware.measure_cpu_peak("fp32", n=64, repeats=4) == pytest.approx(5e9)
    assert list(json.loads((tmp_path / "cpu_peak.json").read_text()).values()) == [pytest.approx(5e9)]


def test_the_probe_sees_another_process_take_the_cores():
    # A busy loop on every core: the probe's thread gets about 2/3 of a core (3 runnable, 2 cores).
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    threads = torch.get_num_threads()
    try:
        time.sleep(0.5)  # the hogs are past interpreter start-up
        torch.set_num_threads(1)
        a = torch.randn(256, 256)
        _, share = hardware._probe(a, a, repeats=1000)
    finally:
        torch.set_num_threads(threads)
        for h in hogs:
            h.kill()
            h.wait()
    assert share < hardware.QUIET_CPU_SHARE


def test_bpe_runs_report_bits_per_byte_over_bytes_not_tokens(debug_overrides):
    cfg = workbench.compose(
        "dense_debug",
        [
            *debug_overrides,
            "data.tokenizer=bpe",
            "data.bpe_vocab_size=512",
            "budget.steps=6",
            "data.max_docs=60",
        ],
    )
    result = workbench.run(cfg, print_summary=False)
    m = result.metrics
    bytes_per_token = result.data_stats["bytes_val"] / result.data_stats["tokens_val"]
    assert bytes_per_token > 1.5  # BPE tokens cover several bytes each
    assert m["val/bpb"] < m["val/loss"] / math.log(2)  # fewer bits per byte than per token
    assert result.config.model.vocab_size == 512


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp16_mixed_scales_gradients_on_gpu(debug_overrides):
    cfg = workbench.compose(
        "moe_debug", [*debug_overrides, "precision=fp16-mixed", "trainer.accelerator=gpu", "budget.steps=8"]
    )
    result = workbench.run(cfg, print_summary=False)
    import mlflow

    history = mlflow.MlflowClient().get_metric_history(result.run_id, "train/grad_scale")
    assert history and all(h.value > 0 for h in history)
    assert math.isfinite(result.metrics["val/loss"])


def test_cpu_peak_memory_covers_the_run_not_what_the_process_did_before(debug_overrides):
    from workbench.training.callbacks import peak_memory_gb

    big = torch.ones(500_000_000)  # 2 GB, touched: the process's high-water mark is now above 2 GB
    del big
    before = peak_memory_gb(None)
    assert before > 2.0
    cfg = workbench.compose("dense_debug", [*debug_overrides, "budget.steps=4"])
    peak = workbench.run(cfg, print_summary=False).metrics["cost/peak_mem_gb"]
    # the run's peak is the resident set while it trained: torch, Lightning and MLflow loaded, and a tiny model
    assert 0.1 < peak < before - 1.5
