"""LSH banding + union-find at scale: 1,000,000 MinHash signatures with planted near-duplicate clusters.

Random uint32 signatures (n x 112, 448 MB at n = 1e6) stand in for distinct documents; --dup-fraction of the
documents are grouped into planted clusters of 2-6 members, each member a copy of its cluster's first document
with 0..bands-1 of its 112 values redrawn. A member therefore agrees with its representative on at least one
whole band, so every planted cluster must be found, and random rows agree on a band with probability 2^-256, so
nothing else may be: the exact answer is known. Times `lsh_clusters` (banding, sort-based grouping, vectorised
union-find; default 14 bands x 8 rows) and measures its memory as the peak RSS during the step (the kernel's
high-water mark, reset just before it via /proc/self/clear_refs; ru_maxrss when that is unavailable) minus the
RSS before it; the process peak, which includes the signatures themselves, is reported too. Prints one JSON
record with the target checks (<= 60 s, <= 1 GiB).

    python benchmarks/lsh_cluster.py [--docs 1000000] [--bands 14] [--rows 8] [--dup-fraction 0.1]
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

import harness
import numpy as np

from workbench.data.filters.minhash import lsh_clusters

NUM_PERM = 112


def planted_signatures(
    n: int, num_perm: int, bands: int, dup_fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Signatures and the expected cluster root (smallest member index) of every document."""
    rng = np.random.default_rng(seed)
    sig = rng.integers(0, 1 << 32, size=(n, num_perm), dtype=np.uint32)
    expected = np.arange(n, dtype=np.int64)
    sizes = rng.integers(2, 7, size=max(1, int(n * dup_fraction) // 4))
    sizes = sizes[np.cumsum(sizes) <= n * dup_fraction]
    perm = rng.permutation(n)[: int(sizes.sum())]
    cluster = np.repeat(np.arange(len(sizes)), sizes)
    first = np.zeros(len(perm), dtype=bool)
    first[np.cumsum(sizes) - sizes] = True
    rep = perm[first][cluster]  # each planted document's representative
    members = perm[~first]
    sig[members] = sig[rep[~first]]
    changed = rng.integers(0, bands, size=len(members))  # <= bands-1 values: at least one band stays equal
    rows_ = np.repeat(members, changed)
    cols = rng.integers(0, num_perm, size=len(rows_))
    sig[rows_, cols] = rng.integers(0, 1 << 32, size=len(rows_), dtype=np.uint32)
    smallest = np.full(len(sizes), n, dtype=np.int64)
    np.minimum.at(smallest, cluster, perm)
    expected[perm] = smallest[cluster]
    return sig, expected


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--bands", type=int, default=14)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument(
        "--dup-fraction", type=float, default=0.1, help="share of documents in planted clusters"
    )
    parser.add_argument("--allocator", choices=harness.ALLOCATORS, default="fixed")
    args = parser.parse_args()
    allocator = harness.set_allocator(args.allocator)
    load = harness.LoadMeter()

    sig, expected = planted_signatures(args.docs, NUM_PERM, args.bands, args.dup_fraction)
    planted = int((np.bincount(expected, minlength=args.docs) > 1).sum())

    rss_before = _status_kib("VmRSS")
    reset = _reset_peak()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    roots = lsh_clusters(sig, args.bands, args.rows)
    seconds = time.perf_counter() - t0
    if reset and rss_before is not None and _status_kib("VmHWM") is not None:
        peak_kib, method = _status_kib("VmHWM"), "VmHWM after clear_refs"
    else:  # lifetime peak: an upper bound only if the step set it
        peak_kib, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"
        rss_before = rss_before if rss_before is not None else maxrss_before
    growth_mib = (peak_kib - rss_before) / 1024

    sizes = np.bincount(roots, minlength=args.docs)
    found = int((sizes > 1).sum())
    record = {
        "benchmark": "lsh_cluster",
        "allocator": allocator,
        "docs": args.docs,
        "num_perm": NUM_PERM,
        "bands": args.bands,
        "rows": args.rows,
        "seconds": seconds,
        "docs_per_s": args.docs / seconds,
        "step_peak_growth_mib": growth_mib,
        "process_peak_rss_mib": peak_kib / 1024,
        "signatures_mib": sig.nbytes / 2**20,
        "memory_method": method,
        "clusters_planted": planted,
        "clusters_found": found,
        "documents_in_planted_clusters": int(
            (np.bincount(expected, minlength=args.docs)[expected] > 1).sum()
        ),
        "exact_match": bool(np.array_equal(roots, expected)),
        "targets": {"seconds<=60": bool(seconds <= 60), "step_peak_growth<=1GiB": bool(growth_mib <= 1024)},
        "numpy": np.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    record["targets_met"] = all(record["targets"].values())
    record["load"] = load.record()
    harness.emit(record)


if __name__ == "__main__":
    main()
