"""Deduplication filters: exact documents, repeated lines/paragraphs, and MinHash near-duplicates.

All three are corpus-level: `signals` hashes each document on its own (so it shards over workers and caches),
`decide` compares documents in the pipeline's stable order (the order of `ctx.ids`; "first" means first there).

- `exact_dedup`: 128-bit BLAKE2b of the normalised text; every later copy is dropped as "duplicate".
- `line_dedup`: 64-bit hashes of normalised lines (or paragraphs); a document whose characters are mostly
  units already seen in earlier documents is dropped as "duplicate_lines".
- `minhash`: MinHash signatures of word n-grams (Broder 1997), LSH banding (Leskovec, Rajaraman, Ullman,
  *Mining of Massive Datasets*, ch. 3) into candidate groups, union-find into clusters; one document per cluster
  is kept, the others are dropped as "near_duplicate".

The MinHash pieces are plain functions too (`minhash_signatures`, `lsh_clusters`, `detection_probability`,
`shingle_sets`), used by `benchmarks/minhash.py`, `benchmarks/lsh_cluster.py` and the tests.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import xxhash

from workbench.data.filters.base import DecideContext, Filter, register

_SCOPES = ("global", "source")


# ---------------------------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------------------------
def _utf8(text: str) -> bytes:
    # surrogatepass: a lone surrogate (seen in scraped text) must hash, not raise
    return text.encode("utf-8", "surrogatepass")


def normalize_text(text: str, lowercase: bool = False) -> str:
    """NFC, optionally lowercased, whitespace runs folded to one space, stripped (exact and line dedup)."""
    text = unicodedata.normalize("NFC", text)
    if lowercase:
        text = text.lower()
    return " ".join(text.split())


def _scope_codes(ctx: DecideContext, scope: str, n: int) -> np.ndarray:
    """One integer per document: 0 for all when scope="global", the source's code when scope="source"."""
    if scope == "global" or n == 0:
        return np.zeros(n, dtype=np.int64)
    if len(ctx.sources) != n:
        raise ValueError(f"ctx.sources has {len(ctx.sources)} entries for {n} documents")
    _, codes = np.unique(np.asarray(ctx.sources, dtype=object).astype(str), return_inverse=True)
    return codes.astype(np.int64).reshape(n)


def _check_scope(scope: str) -> None:
    if scope not in _SCOPES:
        raise ValueError(f"scope: {scope!r} is not one of {', '.join(_SCOPES)}")


def _reasons(drop: np.ndarray, reason: str) -> np.ndarray:
    return np.where(drop, reason, "")


# ---------------------------------------------------------------------------------------------------------------
# exact_dedup
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class ExactDedupParams:
    # workbench choice: case is content by default (set True to treat case variants as copies)
    lowercase: bool = False
    # "global": one copy across the whole mixture; "source": one copy per source (workbench choice: global)
    scope: Literal["global", "source"] = "global"

    def check(self) -> None:
        _check_scope(self.scope)


def exact_hashes(texts: Sequence[str], lowercase: bool = False) -> np.ndarray:
    """(n_docs, 2) uint64: the 128-bit BLAKE2b digest of each normalised text, as two little-endian words.

    128 bits, not 64: by the birthday bound, n distinct documents share some 64-bit hash with probability
    ~ n^2 / 2^65, i.e. about 50% at n ~ 1.2 * 2^32 ~ 5e9 documents (a web crawl), and a collision here silently
    drops a distinct document. With 128 bits the same probability at 1e11 documents is ~ 1e-17.
    """
    digests = b"".join(
        hashlib.blake2b(_utf8(normalize_text(t, lowercase)), digest_size=16).digest() for t in texts
    )
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64).reshape(len(texts), 2)


def _first_occurrence(*keys: np.ndarray) -> np.ndarray:
    """True where the key tuple appears for the first time in document order (keys: first = most significant)."""
    n = len(keys[0])
    if n == 0:
        return np.zeros(0, dtype=bool)
    order = np.lexsort(keys[::-1])  # stable: equal keys stay in document order
    same = np.ones(n - 1, dtype=bool)  # sorted neighbour has the same key tuple
    for key in keys:
        k = key[order]
        same &= k[1:] == k[:-1]
    new = np.ones(n, dtype=bool)
    new[1:] = ~same
    first = np.empty(n, dtype=bool)
    first[order] = new
    return first


@register
class ExactDedup(Filter):
    """Drop every later copy of a document whose normalised text equals an earlier one's."""

    name = "exact_dedup"
    Params = ExactDedupParams
    signal_keys = ("lowercase",)
    corpus_level = True

    def __init__(self, params: ExactDedupParams | None = None) -> None:
        super().__init__(params)
        self.params.check()

    def signals(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        h = exact_hashes(texts, self.params.lowercase)
        return {"hash0": np.ascontiguousarray(h[:, 0]), "hash1": np.ascontiguousarray(h[:, 1])}

    def decide(self, columns: Mapping[str, np.ndarray], ctx: DecideContext) -> np.ndarray:
        h0, h1 = columns["hash0"], columns["hash1"]
        scope = _scope_codes(ctx, self.params.scope, len(h0))
        return _reasons(~_first_occurrence(scope, h0, h1), "duplicate")

    def reasons(self) -> list[str]:
        return ["duplicate"]

    def describe(self) -> list[str]:
        p = self.params
        return [
            f"exact_dedup: 128-bit BLAKE2b of NFC text, whitespace folded, lowercase={p.lowercase}; "
            f"scope={p.scope}; the first copy in document order is kept"
        ]


# ---------------------------------------------------------------------------------------------------------------
# line_dedup
# ---------------------------------------------------------------------------------------------------------------
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


@dataclass
class LineDedupParams:
    # "line": text.split("\n") (as heuristics.py); "paragraph": split at blank lines (dolma's paragraph unit)
    unit: Literal["line", "paragraph"] = "line"
    lowercase: bool = False  # workbench choice, as in exact_dedup
    # Workbench choice: drop the whole document when more than half of its unit characters were already seen.
    # dolma (bloom-filter paragraph dedup) and datatrove (sentence/line dedup) remove the duplicate spans and
    # keep the rest of the document instead; the workbench's filters keep or drop whole documents.
    max_duplicate_fraction: float = 0.5
    scope: Literal["global", "source"] = "global"

    def check(self) -> None:
        if self.unit not in ("line", "paragraph"):
            raise ValueError(f"unit: {self.unit!r} is not one of line, paragraph")
        if not 0.0 <= self.max_duplicate_fraction <= 1.0:
            raise ValueError(f"max_duplicate_fraction: {self.max_duplicate_fraction} is not in [0, 1]")
        _check_scope(self.scope)


def unit_hashes(text: str, unit: str = "line", lowercase: bool = False) -> tuple[list[int], list[int]]:
    """64-bit xxh3 hashes and character lengths of a document's normalised, non-empty lines or paragraphs.

    64 bits suffice here: a collision only marks one unit as seen (it does not drop a document on its own).
    """
    text = unicodedata.normalize("NFC", text)
    if lowercase:
        text = text.lower()
    parts = text.split("\n") if unit == "line" else _PARAGRAPH_BREAK.split(text)
    hashes: list[int] = []
    lengths: list[int] = []
    for part in parts:
        u = " ".join(part.split())
        if u:
            hashes.append(xxhash.xxh3_64_intdigest(_utf8(u)))
            lengths.append(len(u))
    return hashes, lengths


@register
class LineDedup(Filter):
    """Drop documents made mostly of lines (or paragraphs) that earlier documents already contain.

    Definition: a unit occurrence in document i is a duplicate when the same normalised unit occurs in some
    document j < i (in ctx order, within the scope), whether or not document j is itself kept. Repeats inside
    one document do not count (that is the Gopher repetition filters' job). The decision for a document thus
    never depends on the decisions for others, which makes it one vectorised pass and order-stable. A document
    is dropped with reason "duplicate_lines" (for either unit) when duplicate characters / unit characters >
    `max_duplicate_fraction`; a document with no non-empty unit is kept.
    """

    name = "line_dedup"
    Params = LineDedupParams
    signal_keys = ("unit", "lowercase")
    corpus_level = True

    def __init__(self, params: LineDedupParams | None = None) -> None:
        super().__init__(params)
        self.params.check()

    def signals(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        hashes: list[int] = []
        lengths: list[int] = []
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        for i, text in enumerate(texts):
            h, n = unit_hashes(text, self.params.unit, self.params.lowercase)
            hashes.extend(h)
            lengths.extend(n)
            offsets[i + 1] = len(hashes)
        return {
            "unit_hash.flat": np.array(hashes, dtype=np.uint64),
            "unit_hash.offsets": offsets,
            "unit_chars.flat": np.array(lengths, dtype=np.int64),
            "unit_chars.offsets": offsets.copy(),
        }

    def duplicate_fraction(self, columns: Mapping[str, np.ndarray], ctx: DecideContext) -> np.ndarray:
        """Per document: characters of its duplicate units / characters of all its units (0 when none)."""
        hashes, offsets = columns["unit_hash.flat"], columns["unit_hash.offsets"]
        chars = columns["unit_chars.flat"].astype(np.float64)
        n = len(offsets) - 1
        doc = np.repeat(np.arange(n, dtype=np.int64), np.diff(offsets))
        scope = _scope_codes(ctx, self.params.scope, n)[doc]
        dup = np.zeros(len(hashes), dtype=bool)
        if len(hashes):
            order = np.lexsort((doc, hashes, scope))  # groups of equal (scope, unit), by document inside
            s_scope, s_hash, s_doc = scope[order], hashes[order], doc[order]
            start = np.ones(len(order), dtype=bool)
            start[1:] = (s_scope[1:] != s_scope[:-1]) | (s_hash[1:] != s_hash[:-1])
            group_start = np.maximum.accumulate(np.where(start, np.arange(len(order)), 0))
            dup[order] = s_doc > s_doc[group_start]  # seen in an earlier document of the group
        total = np.bincount(doc, weights=chars, minlength=n)
        dup_chars = np.bincount(doc, weights=chars * dup, minlength=n)
        return np.divide(dup_chars, total, out=np.zeros(n), where=total > 0)

    def decide(self, columns: Mapping[str, np.ndarray], ctx: DecideContext) -> np.ndarray:
        frac = self.duplicate_fraction(columns, ctx)
        return _reasons(frac > self.params.max_duplicate_fraction, "duplicate_lines")

    def reasons(self) -> list[str]:
        return ["duplicate_lines"]

    def describe(self) -> list[str]:
        p = self.params
        return [
            f"line_dedup: unit={p.unit}, scope={p.scope}; a document is dropped when > "
            f"{p.max_duplicate_fraction:g} of its {p.unit} characters already occur in earlier documents "
            "(whole-document removal, a workbench choice; dolma/datatrove remove the spans instead)"
        ]


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
    return [_utf8(w) for w in t.split()]


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


def _band_keys(sig_DK: np.ndarray, band: int, rows: int) -> np.ndarray:
    """One uint64 per document for band `band`: a fixed mixing of its `rows` signature values."""
    block = np.ascontiguousarray(
        sig_DK[:, band * rows : (band + 1) * rows]
    )  # one pass over the band's columns
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
_KEEP = ("first", "longest", "quality")


@dataclass
class MinHashParams:
    ngram: int = 5  # word 5-grams: datatrove MinhashConfig.n_grams / FineWeb
    num_perm: int = 112  # 14 x 8: datatrove MinhashConfig / FineWeb
    bands: int = 14  # datatrove num_buckets / FineWeb
    rows: int = 8  # datatrove hashes_per_bucket / FineWeb
    seed: int = (
        1  # datatrove's and datasketch's default seed (our hash family differs, so values do not match)
    )
    # Workbench choice: the Jaccard similarity we call a near-duplicate. It sets no LSH parameter: it is used
    # by the exact check (verify=True) and printed against the 14x8 curve (P(0.8) = 0.924, implied 0.719).
    threshold: float = 0.8
    verify: bool = False  # exact Jaccard of candidate pairs; pairs below `threshold` are not merged
    keep: Literal["first", "longest", "quality"] = "first"  # which member of a cluster survives
    quality_column: str | None = (
        None  # e.g. "quality_classifier/score" (higher is better), for keep="quality"
    )

    def check(self) -> None:
        for key in ("ngram", "num_perm", "bands", "rows"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: {getattr(self, key)} must be >= 1")
        if self.bands * self.rows > self.num_perm:
            raise ValueError(
                f"bands: bands * rows = {self.bands} * {self.rows} = {self.bands * self.rows} "
                f"exceeds num_perm = {self.num_perm}"
            )
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold: {self.threshold} is not in (0, 1]")
        if self.keep not in _KEEP:
            raise ValueError(f"keep: {self.keep!r} is not one of {', '.join(_KEEP)}")
        if self.keep == "quality" and not self.quality_column:
            raise ValueError(
                'quality_column: keep="quality" needs a column such as "quality_classifier/score"'
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
        raise ValueError(f"keep={keep!r} needs one score per document")
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

    def __init__(self, params: MinHashParams | None = None) -> None:
        super().__init__(params)
        self.params.check()

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
        if not p.verify:
            return lsh_clusters(sig, p.bands, p.rows)
        u, v = candidate_pairs(sig, p.bands, p.rows)
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
                raise ValueError(
                    f"minhash.quality_column: {p.quality_column!r} is not among the signal columns "
                    f"({', '.join(sorted(ctx.columns)) or 'none'}); add the filter that produces it"
                )
            score = ctx.columns[p.quality_column]
        return _reasons(keep_one_per_cluster(roots, p.keep, score), "near_duplicate")

    def reasons(self) -> list[str]:
        return ["near_duplicate"]

    def describe(self) -> list[str]:
        p = self.params
        b, r = p.bands, p.rows
        lines = [
            f"minhash: word {p.ngram}-grams, {p.num_perm} permutations, LSH {b} bands x {r} rows, keep={p.keep}"
            + (f" ({p.quality_column})" if p.keep == "quality" else ""),
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
