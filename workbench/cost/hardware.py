"""Hardware table: dense peak FLOP/s per compute dtype and an on-demand price per device-hour.

GPU peaks are the vendors' dense (no 2:4 sparsity) tensor-core numbers, as in torchtitan's
`get_peak_flops` and nanoGPT PR #464 (H100's 1,979 TFLOP/s is with sparsity; dense is 989).
fp32 uses the non-tensor-core peak, because torch's default matmul precision on CUDA is "highest".
Prices are typical 2026 on-demand cloud rates; override them with `cost.usd_per_hour`.
The CPU peak is not tabled: it is measured once with a matmul probe and cached (see `measure_cpu_peak`).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from workbench.config import ConfigError, check_fields
from workbench.config.choices import HardwareName
from workbench.config.schema import CostConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hardware:
    name: str
    peak_flops: dict[str, float]  # compute dtype -> dense FLOP/s per device
    usd_per_hour: float


# One row per `cost.hardware` choice (workbench.config.choices.HardwareName).
HARDWARE: dict[HardwareName, Hardware] = {
    # A100 SXM: 312 TFLOP/s bf16/fp16 dense, 19.5 fp32 (NVIDIA A100 datasheet).
    HardwareName.a100: Hardware("a100", {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12}, usd_per_hour=1.80),
    # H100 SXM: 989 TFLOP/s bf16/fp16 dense, 67 fp32 (NVIDIA H100 datasheet).
    HardwareName.h100: Hardware("h100", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}, usd_per_hour=2.50),
    # H200: the same tensor cores as H100 SXM, more and faster HBM.
    HardwareName.h200: Hardware("h200", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}, usd_per_hour=3.50),
    # CPU: peak measured at run time; the price is a small cloud VM's share per process.
    HardwareName.cpu: Hardware("cpu", {}, usd_per_hour=0.10),
}


def validate_cost(c: CostConfig, accelerator: str) -> None:
    """The `cost` slice's rules, given the accelerator the run trains on."""
    check_fields(c, "cost")
    if c.hardware != "cpu" and accelerator == "cpu":
        raise ConfigError(
            f"cost.hardware={c.hardware} with trainer.accelerator=cpu: MFU would use a GPU peak for a CPU run"
        )


_PROBE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def compute_dtype(policy: str) -> str:
    """The dtype the matmuls run in under a precision policy."""
    if policy.startswith("bf16"):
        return "bf16"
    if policy.startswith("fp16"):
        return "fp16"
    return "fp32"


def _probe_cache_path() -> Path:
    root = os.environ.get("WORKBENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "workbench")
    return Path(root) / "cpu_peak.json"


# Bumped whenever the probe changes, so values measured by an older probe are measured again.
# 2: contended measurements are refused (a peak cached under load made MFU read 168 %).
_PROBE_VERSION = 2
# The probe's threads must have held at least this share of their cores for the measurement to count as a peak.
QUIET_CPU_SHARE = 0.9


def _cpu_key(dtype: str) -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{model}|threads={torch.get_num_threads()}|{dtype}|torch={torch.__version__}|probe={_PROBE_VERSION}"
    )


def _probe(a: torch.Tensor, b: torch.Tensor, repeats: int) -> tuple[float, float]:
    """(best seconds of one a @ b, the share of its threads' cores the process held over the repeats).

    The share is process CPU time over wall time x threads: a matmul on N threads keeps N cores busy, so a
    share well under 1 means another process took the cores and the best time is not this CPU's peak.
    """
    best = float("inf")
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    wall = time.perf_counter() - wall0
    return best, (time.process_time() - cpu0) / (wall * torch.get_num_threads())


def measure_cpu_peak(
    dtype: str = "fp32", n: int = 1024, repeats: int = 20, use_cache: bool = True, attempts: int = 3
) -> float:
    """Best FLOP/s of an n x n matmul on this CPU, cached per CPU model, thread count and dtype.

    Only a quiet measurement is cached: when another process holds the cores (see `_probe`) the probe is
    repeated up to `attempts` times; if it never runs quiet, the best contended value is returned for this
    run only, with a warning, and the next run measures again.
    """
    path = _probe_cache_path()
    key = _cpu_key(dtype)
    cache: dict[str, float] = {}
    if use_cache and path.exists():
        try:
            cache = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            cache = {}
        if key in cache:
            return float(cache[key])
    tdtype = _PROBE_DTYPES[dtype]
    a = torch.randn(n, n).to(tdtype)
    b = torch.randn(n, n).to(tdtype)
    for _ in range(2):  # warm-up: thread pool start, first-touch allocation
        a @ b
    best, share = float("inf"), 0.0
    for _ in range(attempts):
        seconds, share = _probe(a, b, repeats)
        best = min(best, seconds)
        if share >= QUIET_CPU_SHARE:
            break
    flops = 2.0 * n**3 / best
    if share < QUIET_CPU_SHARE:
        log.warning(
            "CPU peak probe (%s, %d threads) ran contended: the process held %.0f%% of its cores, so the "
            "peak (%.1f GFLOP/s) is too low and MFU reads high; not cached, measured again next run",
            dtype,
            torch.get_num_threads(),
            100 * share,
            flops / 1e9,
        )
        return flops
    if use_cache:
        cache[key] = flops
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(cache, indent=1))
        except OSError:
            pass  # a read-only home only costs a re-measurement next time
    return flops


def peak_flops(hardware: str, policy: str, override: float | None = None) -> float:
    """Peak FLOP/s of one device for the compute dtype of `policy`."""
    if override is not None:
        return float(override)
    dtype = compute_dtype(policy)
    if hardware == "cpu":
        return measure_cpu_peak(dtype)
    return HARDWARE[hardware].peak_flops[dtype]


def price_per_hour(hardware: str, override: float | None = None) -> float:
    return float(override) if override is not None else HARDWARE[hardware].usd_per_hour
