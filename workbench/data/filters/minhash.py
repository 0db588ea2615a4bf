"""MinHash near-duplicate removal: word n-gram signatures, LSH banding, union-find clusters, one keeper each.

MinHash signatures of word n-grams (Broder 1997), LSH banding (Leskovec, Rajaraman, Ullman, *Mining of Massive
Datasets*, ch. 3) into candidate groups, union-find into clusters; one document per cluster is kept, the others
are dropped as "near_duplicate". Corpus-level: `signals` hashes each document on its own (so it shards over
workers and caches), `decide` compares documents in the pipeline's stable order.

The pieces are plain functions too (`minhash_signatures`, `lsh_clusters`, `detection_probability`,
`shingle_sets`), used by `benchmarks/minhash.py`, `benchmarks/lsh_cluster.py` and the tests.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import xxhash

from workbench.config.params import bounded, key_of, must
from workbench.data.filters.base import DecideContext, Filter, drop_where, register, utf8

# ---------------------------------------------------------------------------------------------------------------
# MinHash: shingles and signatures
# ---------------------------------------------------------------------------------------------------------------
_MASK64 = (1 << 64) - 1
_WINDOW_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd: Horner step of the word-window hash
_WINDOW_INIT = np.uint64(0x243F6A8885A308D3)
_FMIX1 = np.uint64(0xFF51AFD7ED558CCD)  # MurmurHash3's 64-bit finaliser constants
_FMIX2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33, _S32 = np.uint64(33), np.uint64(32)

# Word normalisation: NFC, lowercase, delete every character that is neither a word character (str.isalnum()
# or "_") nor whitespace, split on whitespace. ASCII texts take a byte-level fast path with identical results.
_PUNCT = re.compile(r"[^\w\s]+")
_ASCII_DELETE = bytes(c for c in range(128) if not (chr(c).isalnum() or chr(c) == "_" or chr(c).isspace()))
# str.split() treats \x1c-\x1f as whitespace, bytes.split() does not: map them to spaces first
_ASCII_TABLE = bytes.maketrans(bytes(range(0x1C, 0x20)), b"    ")

_DOC_BATCH = 512  # documents tokenised at a time (bounds the Python word lists)
_SHINGLE_BLOCK = 2048  # shingles per permutation block: 2048 x 112 x 8 B = 1.8 MB, stays in cache


def words(text: str) -> list[bytes]:
    """The normalised words of a text, UTF-8 encoded (what MinHash shingles are built from)."""
    if text.isascii():
        return text.encode("ascii").lower().translate(_ASCII_TABLE, _ASCII_DELETE).split()
    t = _PUNCT.sub("", unicodedata.normalize("NFC", text).lower())
    return [utf8(w) for w in t.split()]


def _fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser (in place on a uint64 array; a bijection that mixes all bits)."""
    x ^= x >> _S33
    x *= _FMIX1
    x ^= x >> _S33
    x *= _FMIX2
    x ^= x >> _S33
    return x


def _shingle_hashes(texts: Sequence[str], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of each document's word n-grams (flat uint64, offsets), duplicates included.

    Each word is hashed once (xxh3_64 of its UTF-8 bytes); a window of n word hashes is combined by Horner's rule
    mod 2^64 with an odd multiplier (order-sensitive) and finalised with fmix64, all vectorised over the batch.
    A document with fewer than `ngram` words (including none) has exactly one shingle: the window of all its
    words, i.e. the whole normalised text.
    """
    if ngram < 1:
        raise ValueError(f"ngram: {ngram} must be >= 1")
    n_docs = len(texts)
    lens = np.zeros(n_docs, dtype=np.int64)
    flat: list[bytes] = []
    for i, text in enumerate(texts):
        w = words(text)
        lens[i] = len(w)
        flat.extend(w)
    W = np.fromiter(map(xxhash.xxh3_64_intdigest, flat), dtype=np.uint64, count=len(flat))
    del flat
    starts = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(lens, out=starts[1:])
    full = lens >= ngram
    counts = np.where(full, lens - ngram + 1, 1)
    offsets = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    out = np.empty(int(offsets[-1]), dtype=np.uint64)
    is_full = np.repeat(full, counts)

    T = len(W)
    if full.any():
        m = T - ngram + 1
        acc = np.full(m, _WINDOW_INIT, dtype=np.uint64)
        for k in range(ngram):
            acc *= _WINDOW_MULT
            acc += W[k : k + m]
        # keep windows that lie inside one document
        pos = np.arange(m, dtype=np.int64)
        doc_end = np.repeat(starts[1:], lens)[:m]
        out[is_full] = acc[pos + ngram <= doc_end]
    short = np.flatnonzero(~full)
    if len(short):
        s_start, s_len = starts[short], lens[short]
        acc = np.full(len(short), _WINDOW_INIT, dtype=np.uint64)
        for k in range(ngram - 1):
            take = k < s_len
            nxt = acc * _WINDOW_MULT + W[np.minimum(s_start + k, max(T - 1, 0))] if T else acc
            acc = np.where(take, nxt, acc)
        out[~is_full] = acc
    return _fmix64(out), offsets


def shingle_sets(texts: Sequence[str], ngram: int = 5) -> list[np.ndarray]:
    """Per document, the sorted unique 64-bit hashes of its word n-grams (exact Jaccard up to 64-bit collisions)."""
    flat, offsets = _shingle_hashes(texts, ngram)
    return [np.unique(flat[offsets[i] : offsets[i + 1]]) for i in range(len(texts))]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|A & B| / |A | B| of two sorted unique arrays (1.0 for two empty sets)."""
    inter = len(np.intersect1d(a, b, assume_unique=True))
    union = len(a) + len(b) - inter
    return inter / union if union else 1.0


def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Multiply-add-shift parameters a, b, uniform in [0, 2^64), drawn once from default_rng(seed)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 1 << 64, size=num_perm, dtype=np.uint64)
    b = rng.integers(0, 1 << 64, size=num_perm, dtype=np.uint64)
    return a, b


def minhash_signatures(
    texts: Sequence[str], ngram: int = 5, num_perm: int = 112, seed: int = 1
) -> np.ndarray:
    """(n_docs, num_perm) uint32 MinHash signatures of word n-gram sets.

    MinHash (Broder 1997): for a random permutation pi of the shingle universe, P[min pi(A) = min pi(B)] =
    J(A, B), so the fraction of equal signature entries estimates the Jaccard similarity. The permutations are
    approximated by the multiply-add-shift family on 32-bit shingle hashes x (Dietzfelbinger 1996):
    h_{a,b}(x) = ((a*x + b) mod 2^64) >> 32 with a, b uniform 64-bit, which is strongly universal onto 32 bits.
    uint64 arithmetic wraps mod 2^64 by definition, so nothing overflows, and since >> 32 is monotone the min is
    taken on the 64-bit values and shifted once per document.
    """
    if num_perm < 1:
        raise ValueError(f"num_perm: {num_perm} must be >= 1")
    a, b = _permutations(num_perm, seed)
    n_docs = len(texts)
    sig = np.empty((n_docs, num_perm), dtype=np.uint32)
    for lo in range(0, n_docs, _DOC_BATCH):
        hi = min(lo + _DOC_BATCH, n_docs)
        flat, offsets = _shingle_hashes(texts[lo:hi], ngram)
        x = flat >> _S32  # the 32-bit shingle hash
        mins = np.full((hi - lo, num_perm), np.uint64(_MASK64), dtype=np.uint64)
        buf = np.empty((_SHINGLE_BLOCK, num_perm), dtype=np.uint64)
        for s in range(0, len(x), _SHINGLE_BLOCK):
            e = min(s + _SHINGLE_BLOCK, len(x))
            d0 = int(np.searchsorted(offsets, s, side="right")) - 1
            d1 = int(np.searchsorted(offsets, e - 1, side="right")) - 1
            seg = np.maximum(offsets[d0 : d1 + 1], s) - s  # each document has >= 1 shingle: no empty segments
            v = buf[: e - s]
            np.multiply(x[s:e, None], a[None, :], out=v)
            v += b
            part = np.minimum.reduceat(v, seg, axis=0)
            np.minimum(mins[d0 : d1 + 1], part, out=mins[d0 : d1 + 1])
        mins >>= _S32
        sig[lo:hi] = mins
    return sig


# ---------------------------------------------------------------------------------------------------------------
# MinHash: LSH banding and union-find
# ---------------------------------------------------------------------------------------------------------------
def detection_probability(s: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """P(a pair with Jaccard s shares at least one band) = 1 - (1 - s^r)^b (Leskovec et al., MMDS 3.4.2)."""
    return 1.0 - (1.0 - np.asarray(s, dtype=np.float64) ** rows) ** bands


def implied_threshold(bands: int, rows: int) -> float:
    """(1/b)^(1/r): roughly where the S-curve is steepest (MMDS 3.4.2)."""
    return (1.0 / bands) ** (1.0 / rows)


def banding_errors(threshold: float, bands: int, rows: int) -> tuple[float, float]:
    """(false-positive area, false-negative area) of the S-curve around `threshold`.

    FP = integral over s in [0, t] of P(s), the chance a pair below the threshold becomes a candidate; FN =
    integral over [t, 1] of 1 - P(s), the chance a pair above it is missed (MMDS 3.4.2's S-curve, integrated
    as in Leskovec et al.'s choice of b and r). Simpson's rule on 201 points: P is a smooth polynomial in s.
    """
    from scipy.integrate import simpson

    lo = np.linspace(0.0, threshold, 201)
    hi = np.linspace(threshold, 1.0, 201)
    fp = float(simpson(detection_probability(lo, bands, rows), x=lo))
    fn = float(simpson(1.0 - detection_probability(hi, bands, rows), x=hi))
    return fp, fn


@functools.lru_cache(maxsize=64)  # a few hundred integrations; every decide and describe asks again
def optimal_banding(
    threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5
) -> tuple[int, int]:
    """The (bands, rows) with bands * rows <= num_perm minimising fp_weight * FP + fn_weight * FN areas."""
    best: tuple[float, int, int] | None = None
    for rows in range(1, num_perm + 1):
        for bands in range(1, num_perm // rows + 1):
            fp, fn = banding_errors(threshold, bands, rows)
            cost = fp_weight * fp + fn_weight * fn
            if best is None or cost < best[0] - 1e-12:
                best = (cost, bands, rows)
    assert best is not None
    return best[1], best[2]


def _band_keys(sig_DK: np.ndarray, band: int, rows: int) -> np.ndarray:
    """One uint64 per document for band `band`: a fixed mixing of its `rows` signature values."""
    # one pass over the band's columns
    block = np.ascontiguousarray(sig_DK[:, band * rows : (band + 1) * rows])
    key = np.full(len(block), _WINDOW_INIT, dtype=np.uint64)
    for j in range(rows):
        key *= _WINDOW_MULT
        key ^= block[:, j]
        key ^= key >> _S32
    return _fmix64(key)


def _band_buckets(sig_DK: np.ndarray, band: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Documents sorted by band key (ties by index) and, for each adjacent sorted pair, whether the band is equal.

    Banding (MMDS 3.4.1): two documents are candidates when all `rows` values of some band agree. Grouping is by
    sorting the band keys; equal keys are checked against the actual rows, so a 64-bit key collision (probability
    ~ n^2 / 2^65 per band) links nothing.
    """
    key = _band_keys(sig_DK, band, rows)
    order = np.argsort(key, kind="stable")
    skey = key[order]
    same = skey[1:] == skey[:-1]
    idx = np.flatnonzero(same)
    if len(idx):
        cols = slice(band * rows, (band + 1) * rows)
        equal = (sig_DK[order[idx], cols] == sig_DK[order[idx + 1], cols]).all(axis=1)
        same[idx[~equal]] = False
    return order, same


def _compress(parent: np.ndarray) -> None:
    """Full path compression by pointer jumping: afterwards parent[i] is i's root for every i."""
    while True:
        grand = parent[parent]
        if np.array_equal(grand, parent):
            return
        parent[:] = grand


def _union(parent: np.ndarray, u: np.ndarray, v: np.ndarray) -> None:
    """Union the components of u[k] and v[k] for all k, vectorised.

    Each round finds both roots (after path compression) and hooks the larger root under the smaller one. Every
    pointer goes from a larger index to a smaller one, so no cycle can form and each component's root is its
    smallest index, whatever the order of the edges. Each round removes at least one root, in practice most.
    """
    while len(u):
        _compress(parent)
        ru, rv = parent[u], parent[v]
        differ = ru != rv
        if not differ.any():
            break
        u, v, ru, rv = u[differ], v[differ], ru[differ], rv[differ]
        parent[np.maximum(ru, rv)] = np.minimum(ru, rv)
    _compress(parent)


def lsh_clusters(sig_DK: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """Cluster root per document (the smallest document index of its cluster; itself when alone).

    For each band, documents with equal band values are chained (a group of m members gives m-1 unions between
    neighbours in sorted order), and the chains of all bands are merged by union-find over document indices.
    Memory is O(n) per band: no list of all candidate pairs is ever built.
    """
    n, k = sig_DK.shape
    if bands * rows > k:
        raise ValueError(f"bands * rows = {bands * rows} exceeds the signature's {k} permutations")
    parent = np.arange(n, dtype=np.int64)
    for band in range(bands):
        order, same = _band_buckets(sig_DK, band, rows)
        idx = np.flatnonzero(same)
        _union(parent, order[idx], order[idx + 1])
    return parent


_VERIFY_ALL_PAIRS = 16  # a bucket with up to this many members yields all its pairs, a larger one a star


def candidate_pairs(sig_DK: np.ndarray, bands: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique candidate pairs (u < v) for the exact check.

    A bucket (equal band) of m <= 16 documents gives all m(m-1)/2 pairs; a larger one gives the m-1 pairs of its
    first (smallest-index) member with each other member, so a bucket of 10^5 copies costs 10^5 checks, not
    5*10^9. A pair missed that way can still be found through another band or through the star.
    """
    n = sig_DK.shape[0]
    keys: list[np.ndarray] = []
    for band in range(bands):
        order, same = _band_buckets(sig_DK, band, rows)
        if not same.any():
            continue
        pos = np.arange(n, dtype=np.int64)
        start = np.ones(n, dtype=bool)
        start[1:] = ~same
        group_start = np.maximum.accumulate(np.where(start, pos, 0))
        group_end = np.empty(n, dtype=np.int64)  # exclusive
        starts = np.flatnonzero(start)
        ends = np.append(starts[1:], n)
        group_end[starts] = ends
        group_end = group_end[group_start]
        size = group_end - group_start
        small = size <= _VERIFY_ALL_PAIRS
        for d in range(1, _VERIFY_ALL_PAIRS):
            i = np.flatnonzero(small & (pos + d < group_end))
            if not len(i):
                break
            keys.append(_pair_key(order[i], order[i + d], n))
        i = np.flatnonzero(~small & (pos != group_start))
        if len(i):
            keys.append(_pair_key(order[group_start[i]], order[i], n))
    if not keys:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    uniq = np.unique(np.concatenate(keys))
    return uniq // n, uniq % n


def _pair_key(u: np.ndarray, v: np.ndarray, n: int) -> np.ndarray:
    return np.minimum(u, v) * n + np.maximum(u, v)


# ---------------------------------------------------------------------------------------------------------------
# minhash filter
# ---------------------------------------------------------------------------------------------------------------
class KeepPolicy(StrEnum):
    """Which member of a near-duplicate cluster survives."""

    first = "first"  # the first in document order
    longest = "longest"  # the most characters
    quality = "quality"  # the highest score in `quality_column`


@dataclass
class MinHashParams:
    ngram: int = bounded(5, ge=1)  # word 5-grams: datatrove MinhashConfig.n_grams / FineWeb
    num_perm: int = bounded(112, ge=1)  # 14 x 8: datatrove MinhashConfig / FineWeb
    # datatrove num_buckets x hashes_per_bucket / FineWeb. Both null: chosen from `threshold` and `num_perm`
    # (optimal_banding: the least weighted false-positive + false-negative area of the S-curve).
    bands: int | None = bounded(14, ge=1)
    rows: int | None = bounded(8, ge=1)
    # datatrove's and datasketch's default seed (our hash family differs, so values do not match)
    seed: int = 1
    # Workbench choice: the Jaccard similarity we call a near-duplicate. It sets bands x rows when both are null;
    # with them given (14 x 8 by default), it is used by the exact check (verify=True) and printed against the
    # curve (P(0.8) = 0.924 at 14 x 8, implied 0.719).
    threshold: float = bounded(0.8, gt=0, le=1)
    fp_weight: float = bounded(0.5, ge=0)  # weights of the two error areas when bands and rows are chosen
    fn_weight: float = bounded(0.5, ge=0)
    verify: bool = False  # exact Jaccard of candidate pairs; pairs below `threshold` are not merged
    keep: KeepPolicy = KeepPolicy.first  # which member of a cluster survives
    # e.g. "quality_classifier/score" (higher is better), for keep="quality"
    quality_column: str | None = None

    def banding(self) -> tuple[int, int]:
        """(bands, rows): as given, or chosen from the threshold when both are null."""
        if self.bands is None and self.rows is None:
            return optimal_banding(self.threshold, self.num_perm, self.fp_weight, self.fn_weight)
        return int(self.bands), int(self.rows)  # check() refuses one null without the other

    def check(self, where: str) -> None:
        if (self.bands is None) != (self.rows is None):
            missing, given = ("bands", "rows") if self.bands is None else ("rows", "bands")
            raise must(
                key_of(where, missing),
                None,
                f"a number like {given}, or both null to choose them from threshold={self.threshold:g}",
            )
        if self.bands is None:
            return
        if self.bands * self.rows > self.num_perm:
            raise must(
                key_of(where, "bands"),
                self.bands,
                f"<= num_perm / rows = {self.num_perm // self.rows} (bands * rows = {self.bands} * {self.rows} = "
                f"{self.bands * self.rows} exceeds num_perm = {self.num_perm})",
            )
        if self.keep == "quality" and not self.quality_column:
            raise must(
                key_of(where, "quality_column"),
                self.quality_column,
                'a column such as "quality_classifier/score" when keep=quality',
            )


def keep_one_per_cluster(
    roots: np.ndarray, keep: str = "first", score: np.ndarray | None = None
) -> np.ndarray:
    """True for the documents to drop: every member of a multi-document cluster except its keeper.

    keep="first": the smallest index (the root). Otherwise the highest `score` (character count for "longest",
    the quality column for "quality"; NaN counts as lowest), ties broken by the smallest index.
    """
    n = len(roots)
    idx = np.arange(n, dtype=np.int64)
    clustered = np.bincount(roots, minlength=n)[roots] > 1
    if keep == "first":
        return clustered & (roots != idx)
    if score is None or len(score) != n:
        raise ValueError(f"keep={str(keep)!r} needs one score per document")
    score = np.asarray(score, dtype=np.float64)
    score = np.where(np.isnan(score), -np.inf, score)
    members = np.flatnonzero(clustered)
    order = members[np.lexsort((members, -score[members], roots[members]))]
    r = roots[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = r[1:] != r[:-1]
    keeper = np.full(n, -1, dtype=np.int64)
    keeper[r[first]] = order[first]
    return clustered & (keeper[roots] != idx)


@register
class MinHashDedup(Filter):
    """Near-duplicate removal: MinHash signatures, LSH banding, union-find clusters, one keeper per cluster.

    Clusters are connected components of the candidate graph, so two members can be less similar than the
    threshold when a chain of similar documents links them (as in FineWeb's and datatrove's clustering).
    """

    name = "minhash"
    Params = MinHashParams
    signal_keys = ("ngram", "num_perm", "seed")
    corpus_level = True

    def signals(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        p = self.params
        return {
            "signature": minhash_signatures(texts, p.ngram, p.num_perm, p.seed),
            "chars": np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts)),
        }

    def clusters(self, columns: Mapping[str, np.ndarray], ctx: DecideContext) -> np.ndarray:
        """Cluster root per document (smallest index in the cluster)."""
        p = self.params
        sig = columns["signature"]
        bands, rows = p.banding()
        if not p.verify:
            return lsh_clusters(sig, bands, rows)
        u, v = candidate_pairs(sig, bands, rows)
        parent = np.arange(len(sig), dtype=np.int64)
        if len(u):
            docs = np.unique(np.concatenate([u, v]))
            sets = shingle_sets(ctx.texts(docs.tolist()), p.ngram)
            iu, iv = np.searchsorted(docs, u), np.searchsorted(docs, v)
            sim = np.fromiter(
                (jaccard(sets[i], sets[j]) for i, j in zip(iu.tolist(), iv.tolist(), strict=True)),
                dtype=np.float64,
                count=len(u),
            )
            ok = sim >= p.threshold
            _union(parent, u[ok], v[ok])
        return parent

    def decide(self, columns: Mapping[str, np.ndarray], ctx: DecideContext) -> np.ndarray:
        p = self.params
        roots = self.clusters(columns, ctx)
        score = None
        if p.keep == "longest":
            score = columns["chars"]
        elif p.keep == "quality":
            if p.quality_column not in ctx.columns:
                raise must(
                    key_of(self.key, "quality_column"),
                    p.quality_column,
                    f"one of the signal columns ({', '.join(sorted(ctx.columns)) or 'none'}); "
                    "add the filter that produces it",
                )
            score = ctx.columns[p.quality_column]
        return drop_where(keep_one_per_cluster(roots, p.keep, score), "near_duplicate")

    def reasons(self) -> list[str]:
        return ["near_duplicate"]

    def describe(self) -> list[str]:
        p = self.params
        b, r = p.banding()
        fp, fn = banding_errors(p.threshold, b, r)
        chosen = (
            f"chosen from threshold {p.threshold:g} (weights fp {p.fp_weight:g}, fn {p.fn_weight:g})"
            if p.bands is None
            else "as configured"
        )
        lines = [
            f"minhash: word {p.ngram}-grams, {p.num_perm} permutations, LSH {b} bands x {r} rows ({chosen}), "
            f"keep={p.keep}" + (f" ({p.quality_column})" if p.keep == "quality" else ""),
            f"S-curve error areas around threshold {p.threshold:g}: false positive {fp:.4f}, false negative {fn:.4f}",
            f"detection probability P(s) = 1 - (1 - s^{r})^{b}; implied threshold (1/{b})^(1/{r}) = "
            f"{implied_threshold(b, r):.3f}; chosen threshold {p.threshold:g} "
            f"({'exact Jaccard check of candidates' if p.verify else 'no exact check: the curve alone decides'})",
        ]
        grid = [round(0.5 + 0.05 * i, 2) for i in range(11)]
        if not any(math.isclose(s, p.threshold) for s in grid) and 0.5 <= p.threshold <= 1.0:
            grid = sorted([*grid, p.threshold])
        for s in grid:
            mark = "  <- threshold" if math.isclose(s, p.threshold) else ""
            lines.append(f"  s={s:.2f}  P={float(detection_probability(s, b, r)):.3f}{mark}")
        return lines
