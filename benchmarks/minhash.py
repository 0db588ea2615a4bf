"""MinHash signature throughput on one core: the workbench's vectorised NumPy path vs every datasketch path.

Deterministic ~400-word documents (a seeded Zipf draw from a synthetic 20k-word vocabulary, with capitals and
punctuation so the normaliser has work to do). Every side signs the same --docs documents in each repeat, from
the same normalised word 5-grams, 112 permutations and seed 1. datasketch's documented ways to build many
MinHashes are all timed, given the permutations precomputed once (which only helps it): `update` per shingle,
`update_batch` per document, `MinHash.bulk`, and `bulk` with xxhash's 32-bit hash in place of SHA-1; the ratio
is taken against the fastest (benchmarks/README.md). The process is pinned to one CPU and BLAS/OpenMP pools are
limited to one thread, so docs/s is per core. Also reports how well each estimates the true word-5-gram Jaccard
of a few edited document pairs. Prints one JSON record.

    python benchmarks/minhash.py [--docs 400] [--words 400] [--repeats 20] [--allocator fixed] [--quick]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import harness
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


def shingles(text: str) -> list[bytes]:
    """The normalised word 5-grams as bytes, the input every datasketch path takes."""
    w = words(text)
    return [b" ".join(w[j : j + NGRAM]) for j in range(len(w) - NGRAM + 1)] or [b" ".join(w)]


def datasketch_paths() -> dict[str, Callable[[list[str]], np.ndarray]]:
    """Every way datasketch documents to build many MinHashes, as texts -> (n, num_perm) signatures."""
    import xxhash  # a dependency of `datasets`; datasketch's docs suggest it as a faster hash function
    from datasketch import MinHash

    template = MinHash(num_perm=NUM_PERM, seed=SEED)
    # datasketch >= 2.0 needs the hashing scheme named when permutations are passed in; 1.x has no such argument
    scheme = {"scheme": template.scheme} if hasattr(template, "scheme") else {}
    kwargs = dict(num_perm=NUM_PERM, seed=SEED, permutations=template.permutations, **scheme)

    def per_shingle(texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), NUM_PERM), dtype=np.uint64)
        for i, text in enumerate(texts):
            m = MinHash(**kwargs)
            for g in shingles(text):
                m.update(g)
            out[i] = m.hashvalues
        return out

    def batch(texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), NUM_PERM), dtype=np.uint64)
        for i, text in enumerate(texts):
            m = MinHash(**kwargs)
            m.update_batch(shingles(text))
            out[i] = m.hashvalues
        return out

    def bulk(texts: list[str], **extra) -> np.ndarray:
        return np.stack([m.hashvalues for m in MinHash.bulk((shingles(t) for t in texts), **kwargs, **extra)])

    return {
        "datasketch_update": per_shingle,
        "datasketch_update_batch": batch,
        "datasketch_bulk": bulk,
        "datasketch_bulk_xxh32": lambda texts: bulk(texts, hashfunc=xxhash.xxh32_intdigest),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=400, help="documents each candidate signs per repeat")
    parser.add_argument("--words", type=int, default=400)
    parser.add_argument("--pairs", type=int, default=20, help="edited pairs for the Jaccard-estimate check")
    harness.add_timing_arguments(parser, warmup=1, quick_help="smoke run: 40 documents, 3 repeats")
    args = parser.parse_args()
    allocator = harness.begin(args)
    if args.quick:
        args.docs = 40
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    docs = make_docs(max(args.docs, args.pairs), args.words)
    batch = docs[: args.docs]
    paths = datasketch_paths()
    candidates = {"ours": lambda: minhash_signatures(batch, NGRAM, NUM_PERM, SEED)}
    candidates.update({name: (lambda f=f: f(batch)) for name, f in paths.items()})
    load = harness.LoadMeter()
    with threadpool_limits(limits=1):
        summary = harness.summarize(harness.time_interleaved(candidates, args.warmup, args.repeats))
        pairs = edited_pairs(docs, args.pairs)
        flat = [t for pair in pairs for t in pair]
        true_j = [jaccard(a, b) for a, b in zip(*[iter(shingle_sets(flat, NGRAM))] * 2, strict=True)]
        signatures = {"ours": minhash_signatures(flat, NGRAM, NUM_PERM, SEED)}
        signatures.update({name: f(flat) for name, f in paths.items()})
    mae = {
        name: float(np.abs((sig[0::2] == sig[1::2]).mean(axis=1) - true_j).mean())
        for name, sig in signatures.items()
    }
    docs_per_s = {name: args.docs / (s["median_ms"] / 1e3) for name, s in summary.items()}
    vs = harness.against_fastest(summary, "ours", paths)

    import datasketch

    record = harness.header(
        "minhash",
        allocator,
        docs_per_repeat=args.docs,
        words_per_doc=args.words,
        ngram=NGRAM,
        num_perm=NUM_PERM,
        cores=1,
        warmup=args.warmup,
        repeats=args.repeats,
        quick=args.quick,
        datasketch=datasketch.__version__,
    )
    record.update(
        timings=summary,
        docs_per_s=docs_per_s,
        datasketch=vs,
        speedup_over_fastest=vs["fastest_over_ours"],
        speedup_over_update=docs_per_s["ours"] / docs_per_s["datasketch_update"],
        update_batch_identical_to_update=bool(
            np.array_equal(signatures["datasketch_update"], signatures["datasketch_update_batch"])
        ),
        jaccard_mae=mae,
        true_jaccard_range=[float(min(true_j)), float(max(true_j))],
        load=load.record(),
    )
    record["targets"] = {
        "docs_per_s_per_core>=3000": bool(docs_per_s["ours"] >= 3000),
        "faster_than_fastest_datasketch": bool(vs["fastest_over_ours"] > 1.0),
    }
    record["targets_met"] = all(record["targets"].values())
    harness.emit(record)


if __name__ == "__main__":
    main()
