"""Exact deduplication: identical documents, and documents made of lines or paragraphs seen before.

Both filters are corpus-level: `signals` hashes each document on its own (so it shards over workers and caches),
`decide` compares documents in the pipeline's stable order (the order of `ctx.ids`; "first" means first there).

- `exact_dedup`: 128-bit BLAKE2b of the normalised text; every later copy is dropped as "duplicate".
- `line_dedup`: 64-bit hashes of normalised lines (or paragraphs); a document whose characters are mostly
  units already seen in earlier documents is dropped as "duplicate_lines".
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import xxhash

from workbench.data.filters.base import DecideContext, Filter, drop_where, fraction, register, utf8

# Where a copy counts as a duplicate: anywhere in the mixture ("global"), or only within its own source. Members
# are named by their values (OmegaConf reads an Enum by member name), so it is built with the functional API.
Scope = StrEnum("Scope", [("global", "global"), ("source", "source")], module=__name__)


class DedupUnit(StrEnum):
    """What `line_dedup` compares."""

    line = "line"  # text.split("\\n")
    paragraph = "paragraph"  # split at blank lines


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


# ---------------------------------------------------------------------------------------------------------------
# exact_dedup
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class ExactDedupParams:
    # workbench choice: case is content by default (set True to treat case variants as copies)
    lowercase: bool = False
    # "global": one copy across the whole mixture; "source": one copy per source (workbench choice: global)
    scope: Scope = Scope("global")


def exact_hashes(texts: Sequence[str], lowercase: bool = False) -> np.ndarray:
    """(n_docs, 2) uint64: the 128-bit BLAKE2b digest of each normalised text, as two little-endian words.

    128 bits, not 64: by the birthday bound, n distinct documents share some 64-bit hash with probability
    ~ n^2 / 2^65, i.e. about 50% at n ~ 1.2 * 2^32 ~ 5e9 documents (a web crawl), and a collision here silently
    drops a distinct document. With 128 bits the same probability at 1e11 documents is ~ 1e-17.
    """
    digests = b"".join(
        hashlib.blake2b(utf8(normalize_text(t, lowercase)), digest_size=16).digest() for t in texts
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

    def signals(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        h = exact_hashes(texts, self.params.lowercase)
        return {"hash0": np.ascontiguousarray(h[:, 0]), "hash1": np.ascontiguousarray(h[:, 1])}

    def decide(self, columns: Mapping[str, np.ndarray], ctx: DecideContext) -> np.ndarray:
        h0, h1 = columns["hash0"], columns["hash1"]
        scope = _scope_codes(ctx, self.params.scope, len(h0))
        return drop_where(~_first_occurrence(scope, h0, h1), "duplicate")

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
    # "line": text.split("\n") (as the rule filters); "paragraph": split at blank lines (dolma's paragraph unit)
    unit: DedupUnit = DedupUnit.line
    lowercase: bool = False  # workbench choice, as in exact_dedup
    # Workbench choice: drop the whole document when more than half of its unit characters were already seen.
    # dolma (bloom-filter paragraph dedup) and datatrove (sentence/line dedup) remove the duplicate spans and
    # keep the rest of the document instead; the workbench's filters keep or drop whole documents.
    max_duplicate_fraction: float = fraction(0.5)
    scope: Scope = Scope("global")


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
            hashes.append(xxhash.xxh3_64_intdigest(utf8(u)))
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
        return drop_where(frac > self.params.max_duplicate_fraction, "duplicate_lines")

    def reasons(self) -> list[str]:
        return ["duplicate_lines"]

    def describe(self) -> list[str]:
        p = self.params
        return [
            f"line_dedup: unit={p.unit}, scope={p.scope}; a document is dropped when > "
            f"{p.max_duplicate_fraction:g} of its {p.unit} characters already occur in earlier documents "
            "(whole-document removal, a workbench choice; dolma/datatrove remove the spans instead)"
        ]
