"""Gopher's quality and repetition filters (Rae et al. 2021, "Scaling Language Models: Methods, Analysis &
Insights from Training Gopher", App. A.1.1 and Table A1).

Thresholds cite their origin next to each `Params` field; the shared conventions (words, lines, duplicates,
float32 thresholds) are in `rules.py`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from workbench.config.params import bounded, key_of, must
from workbench.data.filters.base import fraction, register
from workbench.data.filters.rules import (
    RuleFilter,
    Rules,
    columns_of,
    dup_stats,
    f32,
    fmt,
    lines_of,
    ratio,
)

# ---------------------------------------------------------------------------------------------- gopher_quality

_GOPHER_STOP_WORDS = ["the", "be", "to", "of", "and", "that", "have", "with"]
_BULLETS = ("-", "*", "•", "‣", "◦", "⁃", "●", "▪", "·", "–", "—")
_ELLIPSES = ("...", "…")
_LETTER = re.compile(r"[^\W\d_]")
_WORD = re.compile(r"\w+")


@dataclass
class GopherQualityParams:
    min_words: int = bounded(50, ge=0)  # Gopher App. A.1.1: drop documents with fewer than 50 words
    max_words: int = bounded(100_000, ge=0)  # Gopher App. A.1.1: ... or more than 100,000 words
    # Gopher App. A.1.1: mean word length outside [3, 10] characters
    min_mean_word_length: float = bounded(3.0, ge=0)
    max_mean_word_length: float = bounded(10.0, ge=0)  # Gopher App. A.1.1
    # Gopher App. A.1.1: '#' or ellipsis to word ratio above 0.1
    max_symbol_word_ratio: float = bounded(0.1, ge=0)
    # Gopher App. A.1.1: more than 90% of lines start with a bullet
    max_bullet_lines_fraction: float = fraction(0.9)
    # Gopher App. A.1.1: more than 30% of lines end with an ellipsis
    max_ellipsis_lines_fraction: float = fraction(0.3)
    # Gopher App. A.1.1: 80% of words must contain an alphabetic char
    min_alpha_words_fraction: float = fraction(0.8)
    # Gopher App. A.1.1: must contain at least two of the stop words below
    min_stop_words: int = bounded(2, ge=0)
    # Gopher App. A.1.1: "the, be, to, of, and, that, have, with"; counted as distinct words, whole-word (runs of
    # word characters) and case-insensitive: the paper's "at least two of the following English words".
    stop_words: list[str] = field(default_factory=lambda: list(_GOPHER_STOP_WORDS))

    def check(self, where: str) -> None:
        if self.max_words < self.min_words:
            raise must(key_of(where, "max_words"), self.max_words, f">= min_words ({self.min_words})")
        if not all(_WORD.fullmatch(w) for w in self.stop_words):
            raise must(key_of(where, "stop_words"), self.stop_words, "single words of word characters")


@register
class GopherQuality(RuleFilter):
    """Gopher quality rules (Rae et al. 2021, App. A.1.1), in this order:

    too_few_words / too_many_words: whitespace words outside [min_words, max_words];
    short_words / long_words: mean word length outside [min_mean_word_length, max_mean_word_length];
    symbol_ratio: '#' characters per word, or ellipses ('...' or '…') per word, above max_symbol_word_ratio;
    bullet_lines: share of non-empty lines starting with a bullet (- * • ‣ ◦ ⁃ ● ▪ · – —) above the maximum;
    ellipsis_lines: share of non-empty lines ending with an ellipsis above the maximum;
    non_alpha_words: share of words holding an alphabetic character below min_alpha_words_fraction;
    stop_words: fewer than min_stop_words distinct stop words (whole-word, case-insensitive).
    """

    name = "gopher_quality"
    Params = GopherQualityParams
    signal_keys = ("stop_words",)
    REASONS = (
        "too_few_words",
        "too_many_words",
        "short_words",
        "long_words",
        "symbol_ratio",
        "bullet_lines",
        "ellipsis_lines",
        "non_alpha_words",
        "stop_words",
    )
    SPEC = {
        "words": np.int32,
        "mean_word_length": np.float32,
        "hash_ratio": np.float32,
        "ellipsis_ratio": np.float32,
        "bullet_lines_fraction": np.float32,
        "ellipsis_lines_fraction": np.float32,
        "alpha_words_fraction": np.float32,
        "stop_words": np.int32,
    }

    @cached_property
    def _stop_set(self) -> frozenset[str]:
        return frozenset(w.lower() for w in self.params.stop_words)

    def signals(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        rows = []
        stop = self._stop_set
        for text in texts:
            words = text.split()
            n = len(words)
            lines = lines_of(text)
            rows.append(
                (
                    n,
                    ratio(sum(map(len, words)), n),
                    ratio(text.count("#"), n),
                    ratio(text.count("...") + text.count("…"), n),
                    ratio(sum(1 for s in lines if s.startswith(_BULLETS)), len(lines)),
                    ratio(sum(1 for s in lines if s.endswith(_ELLIPSES)), len(lines)),
                    ratio(sum(1 for w in words if w.isalpha() or _LETTER.search(w)), n),
                    len(stop.intersection(_WORD.findall(text.lower()))),
                )
            )
        return columns_of(self.SPEC, rows)

    def rules(self, columns: Mapping[str, np.ndarray]) -> Rules:
        p = self.params
        mwl = columns["mean_word_length"]
        return [
            ("too_few_words", columns["words"] < p.min_words),
            ("too_many_words", columns["words"] > p.max_words),
            ("short_words", mwl < f32(p.min_mean_word_length)),
            ("long_words", mwl > f32(p.max_mean_word_length)),
            (
                "symbol_ratio",
                (columns["hash_ratio"] > f32(p.max_symbol_word_ratio))
                | (columns["ellipsis_ratio"] > f32(p.max_symbol_word_ratio)),
            ),
            ("bullet_lines", columns["bullet_lines_fraction"] > f32(p.max_bullet_lines_fraction)),
            ("ellipsis_lines", columns["ellipsis_lines_fraction"] > f32(p.max_ellipsis_lines_fraction)),
            ("non_alpha_words", columns["alpha_words_fraction"] < f32(p.min_alpha_words_fraction)),
            ("stop_words", columns["stop_words"] < p.min_stop_words),
        ]

    def describe(self) -> list[str]:
        p = self.params
        return [
            f"words in [{p.min_words}, {p.max_words}], mean word length in "
            f"[{fmt(p.min_mean_word_length)}, {fmt(p.max_mean_word_length)}], symbols/word <= "
            f"{fmt(p.max_symbol_word_ratio)}, bullet lines <= {fmt(p.max_bullet_lines_fraction)}, ellipsis "
            f"lines <= {fmt(p.max_ellipsis_lines_fraction)}, alphabetic words >= "
            f"{fmt(p.min_alpha_words_fraction)}, >= {p.min_stop_words} stop words"
        ]


# ------------------------------------------------------------------------------------------- gopher_repetition

_TOP_NS = (2, 3, 4)
_DUP_NS = (5, 6, 7, 8, 9, 10)
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


def _covered_chars(starts: np.ndarray, n: int, lens: np.ndarray) -> int:
    """Characters of the words covered by the n-grams starting where `starts` is true (each word once)."""
    covered = np.convolve(starts.astype(np.int32), np.ones(n, dtype=np.int32))[: len(lens)] > 0
    return int(lens[covered].sum())


def ngram_char_shares(words: Sequence[str]) -> tuple[list[float], list[float]]:
    """Gopher's n-gram repetition signals over `words`.

    Returns (top shares for n in 2..4, duplicate shares for n in 5..10). A share is the characters (word
    characters, no spaces) of the words covered by the chosen n-gram occurrences over all word characters, each
    word counted once even where occurrences overlap, so a share is at most 1. Top: the occurrences of the most
    frequent n-gram, if it occurs at least twice (ties: the longer n-gram in characters, then the earliest).
    Duplicate: every occurrence of every n-gram that occurs more than once.

    N-grams are compared exactly: an n-gram's dense id comes from its (n-1)-gram prefix's id and its last word's
    id. Only n-grams that can repeat are numbered: both of their (n-1)-grams must repeat.
    """
    top = [0.0] * len(_TOP_NS)
    dup = [0.0] * len(_DUP_NS)
    m = len(words)
    if m < 2:
        return top, dup
    vocab: dict[str, int] = {}
    ids = np.fromiter((vocab.setdefault(w, len(vocab)) for w in words), dtype=np.int64, count=m)
    lens = np.fromiter(map(len, words), dtype=np.int64, count=m)
    cum = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(lens, out=cum[1:])
    total = int(cum[-1])
    v = len(vocab)
    g = ids  # ids of the (n-1)-grams, meaningful where they repeat
    repeats = np.bincount(ids, minlength=v)[ids] > 1  # does the (n-1)-gram starting here occur again?
    for n in range(2, max(_DUP_NS) + 1):
        cand = np.flatnonzero(repeats[:-1] & repeats[1:])  # n-grams starting here may repeat
        if len(cand) == 0:
            break  # no n-gram repeats, so no longer one does either
        key = g[cand] * v + ids[cand + n - 1]
        _, first, rank, counts = np.unique(key, return_index=True, return_inverse=True, return_counts=True)
        g = np.zeros(m - n + 1, dtype=np.int64)
        g[cand] = rank
        repeats = np.zeros(m - n + 1, dtype=bool)
        repeats[cand] = counts[rank] > 1
        if n in _TOP_NS:
            c = int(counts.max())
            if c >= 2:
                tied = np.flatnonzero(counts == c)
                starts = cand[first[tied]]
                chars = cum[starts + n] - cum[starts]
                best = tied[np.lexsort((starts, -chars))[0]]
                at = np.zeros(m - n + 1, dtype=bool)
                at[cand[rank == best]] = True
                top[_TOP_NS.index(n)] = _covered_chars(at, n, lens) / total
        elif repeats.any():
            dup[_DUP_NS.index(n)] = _covered_chars(repeats, n, lens) / total
    return top, dup


@dataclass
class GopherRepetitionParams:
    max_dup_line_fraction: float = fraction(0.30)  # Gopher Table A1: duplicate line fraction 0.30
    # Gopher Table A1: duplicate line character fraction 0.20
    max_dup_line_char_fraction: float = fraction(0.20)
    max_dup_paragraph_fraction: float = fraction(0.30)  # Gopher Table A1: duplicate paragraph fraction 0.30
    # Gopher Table A1: duplicate paragraph character fraction 0.20
    max_dup_paragraph_char_fraction: float = fraction(0.20)
    max_top_2gram_char_fraction: float = fraction(0.20)  # Gopher Table A1: top 2-gram character fraction 0.20
    max_top_3gram_char_fraction: float = fraction(0.18)  # Gopher Table A1: top 3-gram character fraction 0.18
    max_top_4gram_char_fraction: float = fraction(0.16)  # Gopher Table A1: top 4-gram character fraction 0.16
    # Gopher Table A1: duplicate 5-gram character fraction 0.15
    max_dup_5gram_char_fraction: float = fraction(0.15)
    # Gopher Table A1: duplicate 6-gram character fraction 0.14
    max_dup_6gram_char_fraction: float = fraction(0.14)
    # Gopher Table A1: duplicate 7-gram character fraction 0.13
    max_dup_7gram_char_fraction: float = fraction(0.13)
    # Gopher Table A1: duplicate 8-gram character fraction 0.12
    max_dup_8gram_char_fraction: float = fraction(0.12)
    # Gopher Table A1: duplicate 9-gram character fraction 0.11
    max_dup_9gram_char_fraction: float = fraction(0.11)
    # Gopher Table A1: duplicate 10-gram character fraction 0.10
    max_dup_10gram_char_fraction: float = fraction(0.10)


@register
class GopherRepetition(RuleFilter):
    """Gopher repetition rules (Rae et al. 2021, App. A.1.1, Table A1), in this order; a document is dropped when

    dup_lines: duplicate lines / non-empty lines > max_dup_line_fraction;
    dup_line_chars: characters in duplicate lines / characters in non-empty lines > max_dup_line_char_fraction;
    dup_paragraphs, dup_paragraph_chars: the same for paragraphs (text split on blank lines);
    top_2gram, top_3gram, top_4gram: the most frequent word n-gram's character share > its maximum;
    dup_5gram .. dup_10gram: the character share of all repeated word n-grams > its maximum.
    See `ngram_char_shares` for how shares are counted.
    """

    name = "gopher_repetition"
    Params = GopherRepetitionParams
    signal_keys = ()
    REASONS = (
        "dup_lines",
        "dup_line_chars",
        "dup_paragraphs",
        "dup_paragraph_chars",
        *(f"top_{n}gram" for n in _TOP_NS),
        *(f"dup_{n}gram" for n in _DUP_NS),
    )
    SPEC = {
        "dup_line_fraction": np.float32,
        "dup_line_char_fraction": np.float32,
        "dup_paragraph_fraction": np.float32,
        "dup_paragraph_char_fraction": np.float32,
        **{f"top_{n}gram_char_fraction": np.float32 for n in _TOP_NS},
        **{f"dup_{n}gram_char_fraction": np.float32 for n in _DUP_NS},
    }

    def signals(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        rows = []
        for text in texts:
            paragraphs = [s for p in _PARAGRAPH_BREAK.split(text) if (s := p.strip())]
            top, dup = ngram_char_shares(text.split())
            rows.append((*dup_stats(lines_of(text)), *dup_stats(paragraphs), *top, *dup))
        return columns_of(self.SPEC, rows)

    def rules(self, columns: Mapping[str, np.ndarray]) -> Rules:
        p = self.params
        rules: Rules = [
            ("dup_lines", columns["dup_line_fraction"] > f32(p.max_dup_line_fraction)),
            ("dup_line_chars", columns["dup_line_char_fraction"] > f32(p.max_dup_line_char_fraction)),
            ("dup_paragraphs", columns["dup_paragraph_fraction"] > f32(p.max_dup_paragraph_fraction)),
            (
                "dup_paragraph_chars",
                columns["dup_paragraph_char_fraction"] > f32(p.max_dup_paragraph_char_fraction),
            ),
        ]
        for kind, ns in (("top", _TOP_NS), ("dup", _DUP_NS)):
            for n in ns:
                limit = f32(getattr(p, f"max_{kind}_{n}gram_char_fraction"))
                rules.append((f"{kind}_{n}gram", columns[f"{kind}_{n}gram_char_fraction"] > limit))
        return rules

    def describe(self) -> list[str]:
        p = self.params
        top = "/".join(fmt(getattr(p, f"max_top_{n}gram_char_fraction")) for n in _TOP_NS)
        dup = "/".join(fmt(getattr(p, f"max_dup_{n}gram_char_fraction")) for n in _DUP_NS)
        return [
            f"duplicate lines <= {fmt(p.max_dup_line_fraction)} (chars {fmt(p.max_dup_line_char_fraction)}), "
            f"paragraphs <= {fmt(p.max_dup_paragraph_fraction)} (chars {fmt(p.max_dup_paragraph_char_fraction)})"
            f", top 2/3/4-gram chars <= {top}, duplicate 5..10-gram chars <= {dup}"
        ]
