"""Precision policies run end to end; hardware peaks, prices and the cached CPU probe."""

from __future__ import annotations

import math

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
    first = hardware.measure_cpu_peak("fp32", n=256, repeats=3)
    assert first > 1e8  # any CPU of this decade does more than 0.1 GFLOP/s on a matmul
    assert (tmp_path / "cpu_peak.json").is_file()
    calls = []
    monkeypatch.setattr(torch, "randn", lambda *a, **k: calls.append(a) or torch.zeros(*a))
    assert hardware.measure_cpu_peak("fp32", n=256, repeats=3) == first
    assert calls == []  # the cache answered; no matmul ran


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
