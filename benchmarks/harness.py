"""The benchmark rule (benchmarks/README.md), in one place: every script that compares speeds times through here.

- The allocator is set explicitly for the whole process before anything is timed (`set_allocator`), so both
  sides run under the same settings, and the settings go into the record.
- Candidates run in the same process, interleaved within each repeat in a rotating order (`time_interleaved`),
  so machine noise hits them alike; at least `MIN_REPEATS` repeats after warm-up, summarised as median, IQR
  and min (`summarize`).
- Every path the baseline offers is timed and listed; the ratio is taken against the fastest
  (`against_fastest`).
- The machine's load is recorded: the 1-minute load average at start and end, and the share of the machine's
  CPU time that other processes used while the benchmark ran (`LoadMeter`), which is what says whether a number
  can be trusted.

Scripts are run as `python benchmarks/<name>.py`, which puts this folder on sys.path; they import it as
`import harness`.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable

MIN_REPEATS = 20
ALLOCATORS = ("fixed", "glibc-default")

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# A fixed mmap threshold of 1 GiB and no trimming: freed blocks are kept and reused, so no side page-faults its
# big activations anew each step. glibc's default threshold is dynamic (it rises up to 32 MiB on 64-bit as
# blocks are freed), so which allocations are fresh mmaps depends on what ran before: not a fair setting.
FIXED_MMAP_THRESHOLD = 2**30
FIXED_TRIM_THRESHOLD = 2**31 - 1


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def set_allocator(mode: str = "fixed") -> dict:
    """Apply the allocator settings for the whole process; returns what the record says about them.

    "fixed": glibc with a fixed mmap threshold and no trim (see above); "glibc-default": leave glibc as it is.
    A preloaded allocator (LD_PRELOAD of jemalloc or tcmalloc) is recorded, and then mallopt is not called.
    """
    if mode not in ALLOCATORS:
        raise ValueError(f"--allocator {mode!r} is not one of: {', '.join(ALLOCATORS)}")
    preload = os.environ.get("LD_PRELOAD", "")
    record = {"mode": mode, "ld_preload": preload or None, "libc": "-".join(platform.libc_ver())}
    if preload and any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc")):
        record["mode"] = f"preloaded: {os.path.basename(preload)}"
        return record
    if mode == "fixed":
        libc = ctypes.CDLL("libc.so.6")
        if not (
            libc.mallopt(_M_MMAP_THRESHOLD, FIXED_MMAP_THRESHOLD)
            and libc.mallopt(_M_TRIM_THRESHOLD, FIXED_TRIM_THRESHOLD)
        ):
            raise RuntimeError("glibc mallopt refused the fixed allocator settings")
        record.update(mmap_threshold=FIXED_MMAP_THRESHOLD, trim_threshold=FIXED_TRIM_THRESHOLD)
    else:
        record.update(
            mmap_threshold="glibc dynamic (128 KiB rising to 32 MiB)", trim_threshold="glibc default"
        )
    return record


def _machine_cpu_seconds() -> float | None:
    """CPU seconds all processes have used (user + nice + system + irq + softirq + steal), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class LoadMeter:
    """The machine's load around a benchmark: load averages, and other processes' share of the CPU time."""

    def __init__(self) -> None:
        self.start_load = os.getloadavg()[0]
        self.start_wall = time.monotonic()
        self.start_machine = _machine_cpu_seconds()
        self.start_self = time.process_time()

    def record(self) -> dict:
        wall = time.monotonic() - self.start_wall
        cores = os.cpu_count() or 1
        out = {
            "loadavg_1min_start": round(self.start_load, 2),
            "loadavg_1min_end": round(os.getloadavg()[0], 2),
            "cores": cores,
            "wall_s": round(wall, 1),
        }
        machine = _machine_cpu_seconds()
        if machine is not None and self.start_machine is not None and wall > 0:
            other = (machine - self.start_machine) - (time.process_time() - self.start_self)
            # Near 0 on a quiet machine; 0.5 means other work held half of every core.
            out["other_processes_cpu_share"] = round(max(0.0, other) / (wall * cores), 3)
        return out


def header(benchmark: str, allocator: dict, **fields) -> dict:
    """The fields every record starts with."""
    import numpy

    record = {
        "benchmark": benchmark,
        "allocator": allocator,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    if "torch" in sys.modules:
        record["torch"] = sys.modules["torch"].__version__
        record["torch_threads"] = sys.modules["torch"].get_num_threads()
    record.update(fields)
    return record


def add_timing_arguments(
    parser, warmup: int = 3, quick_help: str = "smoke run: 1 warm-up, 3 repeats"
) -> None:
    """--warmup, --repeats, --allocator and --quick, the same in every script that times through here."""
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--repeats", type=int, default=MIN_REPEATS)
    parser.add_argument("--allocator", choices=ALLOCATORS, default="fixed")
    parser.add_argument("--quick", action="store_true", help=quick_help)


def begin(args) -> dict:
    """Apply the parsed timing arguments: the allocator (returns its record), a smoke run's 1 warm-up and 3
    repeats under --quick, and the refusal of fewer than MIN_REPEATS otherwise."""
    allocator = set_allocator(args.allocator)
    if args.quick:
        args.warmup, args.repeats = 1, 3
    check_repeats(args.repeats, args.quick)
    return allocator


def check_repeats(repeats: int, quick: bool) -> None:
    if repeats < MIN_REPEATS and not quick:
        raise SystemExit(
            f"--repeats {repeats}: the benchmark rule needs at least {MIN_REPEATS} (use --quick for a smoke run)"
        )


def time_interleaved(
    candidates: dict[str, Callable[[], object]], warmup: int = 3, repeats: int = MIN_REPEATS
) -> dict[str, list[float]]:
    """Seconds per call of each candidate; every repeat calls each once, the order rotating by one each time."""
    names = list(candidates)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(warmup + repeats):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            candidates[name]()
            elapsed = time.perf_counter() - t0
            if i >= warmup:
                times[name].append(elapsed)
        log(f"  repeat {i + 1}/{warmup + repeats}" + (" (warm-up)" if i < warmup else ""))
    return times


def summarize(times: dict[str, list[float]], scale: float = 1e3, unit: str = "ms") -> dict[str, dict]:
    """Median, IQR (q3 - q1), min and count per candidate, in `unit` (seconds x `scale`)."""
    out = {}
    for name, values in times.items():
        q1, _, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0],) * 3
        out[name] = {
            f"median_{unit}": scale * statistics.median(values),
            f"iqr_{unit}": scale * (q3 - q1),
            f"min_{unit}": scale * min(values),
            "repeats": len(values),
        }
    return out


def against_fastest(summary: dict[str, dict], ours: str, baselines: Iterable[str], unit: str = "ms") -> dict:
    """Every baseline path's median and ours over the fastest of them (< 1: ours is faster)."""
    paths = {name: summary[name][f"median_{unit}"] for name in baselines}
    fastest = min(paths, key=paths.__getitem__)
    ours_median = summary[ours][f"median_{unit}"]
    return {
        "paths": paths,
        "fastest": fastest,
        "ours_over_fastest": ours_median / paths[fastest],
        "fastest_over_ours": paths[fastest] / ours_median,
    }


def emit(record: dict) -> None:
    print(json.dumps(record))
