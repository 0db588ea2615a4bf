"""MinHash signature throughput on one core: the workbench's vectorised NumPy path vs datasketch's MinHash.update.

Deterministic ~400-word documents (a seeded Zipf draw from a synthetic 20k-word vocabulary, with capitals and
punctuation so the normaliser has work to do). Both sides use the same normalised word 5-grams, 112 permutations
and seed 1; datasketch hashes each shingle with `MinHash.update(shingle_bytes)` (its per-shingle path, given the
permutations precomputed once, which only helps it). The process is pinned to one CPU and BLAS/OpenMP pools are
limited to one thread, so docs/s is per core. Also reports how well each estimates the true word-5-gram Jaccard
of a few edited document pairs. Prints one JSON record.

    python benchmarks/minhash.py [--docs 2000] [--baseline-docs 200] [--words 400]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
from threadpoolctl import threadpool_limits

from workbench.data.filters.minhash import jaccard, minhash_signatures, shingle_sets, words

NGRAM, NUM_PERM, SEED = 5, 112, 1


def make_docs(n: int, n_words: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = np.array(["".join(rng.choice(letters, size=rng.integers(2, 10))) for _ in range(20_000)])
    weights = 1.0 / np.arange(1, len(vocab) + 1)  # Zipf-like word frequencies
    weights /= weights.sum()
    docs = []
    for _ in range(n):
        w = vocab[rng.choice(len(vocab), size=n_words, p=weights)].astype(object)
        ends = rng.random(n_words) < 0.07  # sentence ends
        w[ends] = w[ends] + "."
        commas = (rng.random(n_words) < 0.05) & ~ends
        w[commas] = w[commas] + ","
        starts = np.flatnonzero(np.r_[True, ends[:-1]])
        w[starts] = [s.capitalize() for s in w[starts]]
        docs.append(" ".join(w))
    return docs


def edited_pairs(docs: list[str], n_pairs: int, seed: int = 1) -> list[tuple[str, str]]:
    """(original, copy with a random fraction of its words replaced) for a spread of similarities."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n_pairs):
        w = docs[i].split()
        frac = 0.01 + 0.09 * i / max(n_pairs - 1, 1)
        pos = rng.choice(len(w), size=max(1, int(frac * len(w))), replace=False)
        for p in pos:
            w[p] = f"edit{rng.integers(1 << 30)}"
        pairs.append((docs[i], " ".join(w)))
    return pairs


def datasketch_signatures(texts: list[str]) -> np.ndarray:
    from datasketch import MinHash

    template = MinHash(num_perm=NUM_PERM, seed=SEED)
    # datasketch >= 2.0 needs the hashing scheme named when permutations are passed in; 1.x has no such argument
    scheme = {"scheme": template.scheme} if hasattr(template, "scheme") else {}
    out = np.empty((len(texts), NUM_PERM), dtype=np.uint64)
    for i, text in enumerate(texts):
        m = MinHash(num_perm=NUM_PERM, seed=SEED, permutations=template.permutations, **scheme)
        w = words(text)
        grams = [b" ".join(w[j : j + NGRAM]) for j in range(len(w) - NGRAM + 1)] or [b" ".join(w)]
        for g in grams:
            m.update(g)
        out[i] = m.hashvalues
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=2000, help="documents for the workbench path")
    parser.add_argument("--baseline-docs", type=int, default=200, help="documents for datasketch (slower)")
    parser.add_argument("--words", type=int, default=400)
    parser.add_argument("--pairs", type=int, default=20, help="edited pairs for the Jaccard-estimate check")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    docs = make_docs(max(args.docs, args.baseline_docs, args.pairs), args.words)
    with threadpool_limits(limits=1):
        minhash_signatures(docs[:50], NGRAM, NUM_PERM, SEED)  # warm-up
        t0 = time.perf_counter()
        minhash_signatures(docs[: args.docs], NGRAM, NUM_PERM, SEED)
        ours_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        datasketch_signatures(docs[: args.baseline_docs])
        base_s = time.perf_counter() - t0

        pairs = edited_pairs(docs, args.pairs)
        flat = [t for pair in pairs for t in pair]
        true_j = [jaccard(a, b) for a, b in zip(*[iter(shingle_sets(flat, NGRAM))] * 2, strict=True)]
        ours = minhash_signatures(flat, NGRAM, NUM_PERM, SEED)
        theirs = datasketch_signatures(flat)
    est_ours = (ours[0::2] == ours[1::2]).mean(axis=1)
    est_theirs = (theirs[0::2] == theirs[1::2]).mean(axis=1)

    import datasketch

    ours_rate = args.docs / ours_s
    base_rate = args.baseline_docs / base_s
    record = {
        "benchmark": "minhash",
        "docs": args.docs,
        "baseline_docs": args.baseline_docs,
        "words_per_doc": args.words,
        "ngram": NGRAM,
        "num_perm": NUM_PERM,
        "cores": 1,
        "ours_docs_per_s": ours_rate,
        "datasketch_docs_per_s": base_rate,
        "speedup": ours_rate / base_rate,
        "ours_docs_per_s_per_core": ours_rate,
        "jaccard_mae_ours": float(np.abs(est_ours - true_j).mean()),
        "jaccard_mae_datasketch": float(np.abs(est_theirs - true_j).mean()),
        "true_jaccard_range": [float(min(true_j)), float(max(true_j))],
        "targets": {
            "docs_per_s_per_core>=3000": bool(ours_rate >= 3000),
            "speedup>=10": bool(ours_rate / base_rate >= 10),
        },
        "numpy": np.__version__,
        "datasketch": datasketch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    record["targets_met"] = all(record["targets"].values())
    print(json.dumps(record))


if __name__ == "__main__":
    main()
