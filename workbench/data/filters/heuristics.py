"""Rule-based document filters: Gopher quality and repetition, C4, FineWeb, code, word-list toxicity, charset.

Every filter here is document-level: it never rewrites text, it reports one reason per document ("" keeps it).
Each filter's rules are checked in a fixed order (its `rules()` list, also documented in its docstring) and the
first rule that fires is the reported reason. Signal columns are compact numpy arrays (float32 / int32 / int64 /
bool), one row per document, computed from each document alone, so any split of the documents into consecutive
chunks gives the same columns. Thresholds are compared in float32, the dtype of the columns, so a value that
equals a threshold (3 duplicate lines out of 10 against 0.3) is never pushed over it by rounding.

Shared conventions:

- words: `text.split()` (whitespace-separated tokens).
- lines: `text.split("\\n")`, each stripped, empty ones left out (unless a filter says otherwise).
- a "duplicate" line or paragraph is an occurrence of one that already appeared earlier in the document; the
  first occurrence is not counted.

Thresholds cite their origin next to each `Params` field: Gopher = Rae et al. 2021, "Scaling Language Models:
Methods, Analysis & Insights from Training Gopher", App. A.1.1 and Table A1; C4 = Raffel et al. 2020, "Exploring
the Limits of Transfer Learning with a Unified Text-to-Text Transformer", sec. 2.2; FineWeb = Penedo et al. 2024,
"The FineWeb Datasets: Decanting the Web for the Finest Text Data at Scale", sec. 3 (custom filters); Codex =
Chen et al. 2021, "Evaluating Large Language Models Trained on Code", sec. 3.1; StarCoder = Li et al. 2023,
"StarCoder: may the source be with you!", sec. 3-4; RedPajama = Together 2023, RedPajama-Data-1T GitHub subset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, NoReturn

import numpy as np

from workbench.data.filters.base import DecideContext, Filter, register
from workbench.paths import resolve_path

Rules = list[tuple[str, np.ndarray]]

# ---------------------------------------------------------------------------------------------------- helpers


def _f32(x: float) -> np.float32:
    """A threshold in the columns' dtype (see the module docstring)."""
    return np.float32(x)


def first_reason(n: int, rules: Rules) -> np.ndarray:
    """One reason per document: the first rule (in list order) whose mask is true, else ""."""
    width = max([len(r) for r, _ in rules] + [1])
    out = np.zeros(n, dtype=f"<U{width}")
    for reason, mask in reversed(rules):
        out[np.asarray(mask, dtype=bool)] = reason
    return out


def _lines(text: str) -> list[str]:
    """Non-empty lines, stripped."""
    return [s for line in text.split("\n") if (s := line.strip())]


def _dup_stats(items: list[str]) -> tuple[float, float]:
    """(share of items repeating an earlier item, share of the items' characters in those repeats)."""
    if not items:
        return 0.0, 0.0
    seen: set[str] = set()
    dup = dup_chars = total = 0
    for s in items:
        total += len(s)
        if s in seen:
            dup += 1
            dup_chars += len(s)
        else:
            seen.add(s)
    return dup / len(items), (dup_chars / total if total else 0.0)


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def _fail(key: str, value: Any, must: str) -> NoReturn:
    raise ValueError(f"{key}={value!r} must be {must}")


def _check_types(params: Any) -> None:
    """Type checks for the annotation strings used by the Params classes in this module."""
    for f in dataclasses.fields(params):
        v, t = getattr(params, f.name), str(f.type)
        if t == "bool":
            ok = isinstance(v, bool | np.bool_)
        elif t == "int":
            ok = isinstance(v, numbers.Integral) and not isinstance(v, bool | np.bool_)
        elif t == "float":
            ok = isinstance(v, numbers.Real) and not isinstance(v, bool | np.bool_)
        elif t == "list[str]":
            ok = isinstance(v, Sequence) and not isinstance(v, str) and all(isinstance(x, str) for x in v)
        elif t == "str | None":
            ok = v is None or isinstance(v, str)
        else:  # pragma: no cover - a new annotation needs a branch here
            raise TypeError(f"no type check for {f.name}: {t}")
        if not ok:
            _fail(f.name, v, f"of type {t}")


def _check_fractions(params: Any, *keys: str) -> None:
    for k in keys:
        v = getattr(params, k)
        if not 0.0 <= v <= 1.0:
            _fail(k, v, "in [0, 1]")


def _check_nonnegative(params: Any, *keys: str) -> None:
    for k in keys:
        v = getattr(params, k)
        if v < 0:
            _fail(k, v, ">= 0")


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


class _RuleFilter(Filter):
    """`decide` = the first firing rule of `rules(columns)`; `reasons()` = the names `rules` can return."""

    REASONS: ClassVar[tuple[str, ...]] = ()

    def rules(self, columns: Mapping[str, np.ndarray]) -> Rules:
        raise NotImplementedError

    def decide(self, columns: Mapping[str, np.ndarray], ctx: DecideContext | None = None) -> np.ndarray:
        n = len(next(iter(columns.values()))) if columns else 0
        return first_reason(n, self.rules(columns))

    def reasons(self) -> list[str]:
        return list(self.REASONS)


def _columns(spec: Mapping[str, type], rows: list[tuple]) -> dict[str, np.ndarray]:
    """Columns from per-document tuples, in the order of `spec` (name -> numpy dtype)."""
    if not rows:
        return {k: np.zeros(0, dtype=dt) for k, dt in spec.items()}
    return {
        k: np.array(col, dtype=dt) for (k, dt), col in zip(spec.items(), zip(*rows, strict=True), strict=True)
    }


# ---------------------------------------------------------------------------------------------- gopher_quality

_GOPHER_STOP_WORDS = ["the", "be", "to", "of", "and", "that", "have", "with"]
_BULLETS = ("-", "*", "•", "‣", "◦", "⁃", "●", "▪", "·", "–", "—")
_ELLIPSES = ("...", "…")
_LETTER = re.compile(r"[^\W\d_]")
_WORD = re.compile(r"\w+")


@dataclass
class GopherQualityParams:
    min_words: int = 50  # Gopher App. A.1.1: drop documents with fewer than 50 words
    max_words: int = 100_000  # Gopher App. A.1.1: ... or more than 100,000 words
    min_mean_word_length: float = 3.0  # Gopher App. A.1.1: mean word length outside [3, 10] characters
    max_mean_word_length: float = 10.0  # Gopher App. A.1.1
    max_symbol_word_ratio: float = 0.1  # Gopher App. A.1.1: '#' or ellipsis to word ratio above 0.1
    max_bullet_lines_fraction: float = 0.9  # Gopher App. A.1.1: more than 90% of lines start with a bullet
    max_ellipsis_lines_fraction: float = 0.3  # Gopher App. A.1.1: more than 30% of lines end with an ellipsis
    min_alpha_words_fraction: float = 0.8  # Gopher App. A.1.1: 80% of words must contain an alphabetic char
    min_stop_words: int = 2  # Gopher App. A.1.1: must contain at least two of the stop words below
    # Gopher App. A.1.1: "the, be, to, of, and, that, have, with"; counted as distinct words, whole-word (runs of
    # word characters) and case-insensitive: the paper's "at least two of the following English words".
    stop_words: list[str] = field(default_factory=lambda: list(_GOPHER_STOP_WORDS))

    def check(self) -> None:
        _check_types(self)
        _check_nonnegative(self, "min_words", "max_words", "min_mean_word_length", "max_mean_word_length")
        _check_nonnegative(self, "max_symbol_word_ratio", "min_stop_words")
        _check_fractions(
            self, "max_bullet_lines_fraction", "max_ellipsis_lines_fraction", "min_alpha_words_fraction"
        )
        if self.max_words < self.min_words:
            _fail("max_words", self.max_words, f">= min_words ({self.min_words})")
        if not all(_WORD.fullmatch(w) for w in self.stop_words):
            _fail("stop_words", self.stop_words, "single words of word characters")


@register
class GopherQuality(_RuleFilter):
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
            lines = _lines(text)
            rows.append(
                (
                    n,
                    _ratio(sum(map(len, words)), n),
                    _ratio(text.count("#"), n),
                    _ratio(text.count("...") + text.count("…"), n),
                    _ratio(sum(1 for s in lines if s.startswith(_BULLETS)), len(lines)),
                    _ratio(sum(1 for s in lines if s.endswith(_ELLIPSES)), len(lines)),
                    _ratio(sum(1 for w in words if w.isalpha() or _LETTER.search(w)), n),
                    len(stop.intersection(_WORD.findall(text.lower()))),
                )
            )
        return _columns(self.SPEC, rows)

    def rules(self, columns: Mapping[str, np.ndarray]) -> Rules:
        p = self.params
        mwl = columns["mean_word_length"]
        return [
            ("too_few_words", columns["words"] < p.min_words),
            ("too_many_words", columns["words"] > p.max_words),
            ("short_words", mwl < _f32(p.min_mean_word_length)),
            ("long_words", mwl > _f32(p.max_mean_word_length)),
            (
                "symbol_ratio",
                (columns["hash_ratio"] > _f32(p.max_symbol_word_ratio))
                | (columns["ellipsis_ratio"] > _f32(p.max_symbol_word_ratio)),
            ),
            ("bullet_lines", columns["bullet_lines_fraction"] > _f32(p.max_bullet_lines_fraction)),
            ("ellipsis_lines", columns["ellipsis_lines_fraction"] > _f32(p.max_ellipsis_lines_fraction)),
            ("non_alpha_words", columns["alpha_words_fraction"] < _f32(p.min_alpha_words_fraction)),
            ("stop_words", columns["stop_words"] < p.min_stop_words),
        ]

    def describe(self) -> list[str]:
        p = self.params
        return [
            f"words in [{p.min_words}, {p.max_words}], mean word length in "
            f"[{_fmt(p.min_mean_word_length)}, {_fmt(p.max_mean_word_length)}], symbols/word <= "
            f"{_fmt(p.max_symbol_word_ratio)}, bullet lines <= {_fmt(p.max_bullet_lines_fraction)}, ellipsis "
            f"lines <= {_fmt(p.max_ellipsis_lines_fraction)}, alphabetic words >= "
            f"{_fmt(p.min_alpha_words_fraction)}, >= {p.min_stop_words} stop words"
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
    max_dup_line_fraction: float = 0.30  # Gopher Table A1: duplicate line fraction 0.30
    max_dup_line_char_fraction: float = 0.20  # Gopher Table A1: duplicate line character fraction 0.20
    max_dup_paragraph_fraction: float = 0.30  # Gopher Table A1: duplicate paragraph fraction 0.30
    max_dup_paragraph_char_fraction: float = (
        0.20  # Gopher Table A1: duplicate paragraph character fraction 0.20
    )
    max_top_2gram_char_fraction: float = 0.20  # Gopher Table A1: top 2-gram character fraction 0.20
    max_top_3gram_char_fraction: float = 0.18  # Gopher Table A1: top 3-gram character fraction 0.18
    max_top_4gram_char_fraction: float = 0.16  # Gopher Table A1: top 4-gram character fraction 0.16
    max_dup_5gram_char_fraction: float = 0.15  # Gopher Table A1: duplicate 5-gram character fraction 0.15
    max_dup_6gram_char_fraction: float = 0.14  # Gopher Table A1: duplicate 6-gram character fraction 0.14
    max_dup_7gram_char_fraction: float = 0.13  # Gopher Table A1: duplicate 7-gram character fraction 0.13
    max_dup_8gram_char_fraction: float = 0.12  # Gopher Table A1: duplicate 8-gram character fraction 0.12
    max_dup_9gram_char_fraction: float = 0.11  # Gopher Table A1: duplicate 9-gram character fraction 0.11
    max_dup_10gram_char_fraction: float = 0.10  # Gopher Table A1: duplicate 10-gram character fraction 0.10

    def check(self) -> None:
        _check_types(self)
        _check_fractions(self, *(f.name for f in dataclasses.fields(self)))


@register
class GopherRepetition(_RuleFilter):
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
            rows.append((*_dup_stats(_lines(text)), *_dup_stats(paragraphs), *top, *dup))
        return _columns(self.SPEC, rows)

    def rules(self, columns: Mapping[str, np.ndarray]) -> Rules:
        p = self.params
        rules: Rules = [
            ("dup_lines", columns["dup_line_fraction"] > _f32(p.max_dup_line_fraction)),
            ("dup_line_chars", columns["dup_line_char_fraction"] > _f32(p.max_dup_line_char_fraction)),
            ("dup_paragraphs", columns["dup_paragraph_fraction"] > _f32(p.max_dup_paragraph_fraction)),
            (
                "dup_paragraph_chars",
                columns["dup_paragraph_char_fraction"] > _f32(p.max_dup_paragraph_char_fraction),
            ),
        ]
        for kind, ns in (("top", _TOP_NS), ("dup", _DUP_NS)):
            for n in ns:
                limit = _f32(getattr(p, f"max_{kind}_{n}gram_char_fraction"))
                rules.append((f"{kind}_{n}gram", columns[f"{kind}_{n}gram_char_fraction"] > limit))
        return rules

    def describe(self) -> list[str]:
        p = self.params
        top = "/".join(_fmt(getattr(p, f"max_top_{n}gram_char_fraction")) for n in _TOP_NS)
        dup = "/".join(_fmt(getattr(p, f"max_dup_{n}gram_char_fraction")) for n in _DUP_NS)
        return [
            f"duplicate lines <= {_fmt(p.max_dup_line_fraction)} (chars {_fmt(p.max_dup_line_char_fraction)}), "
            f"paragraphs <= {_fmt(p.max_dup_paragraph_fraction)} (chars {_fmt(p.max_dup_paragraph_char_fraction)})"
            f", top 2/3/4-gram chars <= {top}, duplicate 5..10-gram chars <= {dup}"
        ]


# ---------------------------------------------------------------------------------------------------------- c4

# C4 sec. 2.2: "a period, exclamation mark, question mark, or end quotation mark".
_C4_TERMINAL = (".", "!", "?", '"', "”")
# Boilerplate phrases whose lines C4 removes: the TFDS c4 implementation (c4_utils.py), not listed in the paper.
_C4_POLICY = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)
# A sentence end: terminal marks, optional closing quotes/brackets, then whitespace or the end of the line.
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|$)")


@dataclass
class C4Params:
    min_words_per_line: int = 3  # C4 sec. 2.2: "only retained lines that contained at least 3 words"
    # TFDS c4_utils (the reference implementation): lines with a word longer than 1000 characters are removed.
    max_word_length: int = 1000
    min_sentences: int = 5  # C4 sec. 2.2: "discarded any page with fewer than 5 sentences"
    drop_lorem_ipsum: bool = True  # C4 sec. 2.2: "removed any page where the phrase 'lorem ipsum' appeared"
    # C4 sec. 2.2 removes every page containing '{' (code leaking into web text). False here: the workbench's
    # default corpus is Python source, where nearly every file has a brace; set it true for web prose.
    drop_curly_brace: bool = False

    def check(self) -> None:
        _check_types(self)
        _check_nonnegative(self, "min_words_per_line", "min_sentences")
        if self.max_word_length < 1:
            _fail("max_word_length", self.max_word_length, ">= 1")


@register
class C4(_RuleFilter):
    """C4's cleaning rules (Raffel et al. 2020, sec. 2.2) as document-level decisions; no text is rewritten.

    C4 deletes lines and then judges what is left. Here the line rules only decide which lines count: a
    non-empty line is "kept" when it ends in terminal punctuation (. ! ? " ”, but not an ellipsis '...'), has
    at least `min_words_per_line` words, no word longer than `max_word_length`, and contains neither
    "javascript" nor a policy phrase ("terms of use", "privacy policy", "cookie policy", "uses cookies",
    "use of cookies", "use cookies"; case-insensitive). Sentences are counted in kept lines only (terminal marks
    followed by whitespace or the line end; every kept line counts at least one). Rules, in this order:

    lorem_ipsum: "lorem ipsum" appears anywhere (case-insensitive), when `drop_lorem_ipsum`;
    curly_brace: '{' appears anywhere, when `drop_curly_brace` (default false, see the parameter);
    too_few_sentences: fewer than `min_sentences` sentences in the kept lines.

    C4's bad-words page filter is the `toxicity` filter; its three-sentence-span dedup belongs to dedup.
    """

    name = "c4"
    Params = C4Params
    signal_keys = ("min_words_per_line", "max_word_length")
    SPEC = {
        "lines": np.int32,
        "terminal_lines": np.int32,
        "javascript_lines": np.int32,
        "policy_lines": np.int32,
        "kept_lines": np.int32,
        "kept_sentences": np.int32,
        "lorem_ipsum": np.bool_,
        "curly_brace": np.bool_,
    }

    def signals(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        p = self.params
        rows = []
        for text in texts:
            low_text = text.lower()
            has_js = "javascript" in low_text
            has_policy = any(ph in low_text for ph in _C4_POLICY)
            n_lines = terminal = js = policy = kept = sentences = 0
            # lower() never adds or removes a newline, so the two splits line up.
            for raw, low in zip(text.split("\n"), low_text.split("\n"), strict=True):
                line = raw.strip()
                if not line:
                    continue
                n_lines += 1
                ok = line.endswith(_C4_TERMINAL) and not line.endswith("...")
                terminal += ok
                if has_js and "javascript" in low:
                    js += 1
                    ok = False
                if has_policy and any(ph in low for ph in _C4_POLICY):
                    policy += 1
                    ok = False
                if not ok:
                    continue
                words = line.split()
                if len(words) < p.min_words_per_line or max(map(len, words)) > p.max_word_length:
                    continue
                kept += 1
                sentences += max(1, len(_SENTENCE_END.findall(line)))
            rows.append(
                (n_lines, terminal, js, policy, kept, sentences, "lorem ipsum" in low_text, "{" in text)
            )
        return _columns(self.SPEC, rows)

    def rules(self, columns: Mapping[str, np.ndarray]) -> Rules:
        p = self.params
        rules: Rules = []
        if p.drop_lorem_ipsum:
            rules.append(("lorem_ipsum", columns["lorem_ipsum"]))
        if p.drop_curly_brace:
            rules.append(("curly_brace", columns["curly_brace"]))
        rules.append(("too_few_sentences", columns["kept_sentences"] < p.min_sentences))
        return rules

    def reasons(self) -> list[str]:
        p = self.params
        return [
            r
            for r, on in (
                ("lorem_ipsum", p.drop_lorem_ipsum),
                ("curly_brace", p.drop_curly_brace),
                ("too_few_sentences", True),
            )
            if on
        ]

    def describe(self) -> list[str]:
        p = self.params
        return [
            f">= {p.min_sentences} sentences in lines ending in terminal punctuation with >= "
            f"{p.min_words_per_line} words; drop lorem ipsum: {p.drop_lorem_ipsum}; drop '{{': {p.drop_curly_brace}"
        ]


# ----------------------------------------------------------------------------------------------------- fineweb

# Terminal punctuation for FineWeb's line-punctuation rule (the workbench's own list): Latin-script sentence
# ends and closing quotes, plus the CJK, Arabic and Devanagari full stops.
_FINEWEB_TERMINAL = (".", "!", "?", "…", '"', "'", "”", "’", "。", "！", "？", "؟", "।")


@dataclass
class FineWebParams:
    # FineWeb sec. 3: drop documents where the fraction of lines ending with punctuation is <= 0.12; the
    # workbench drops below 0.12 (exactly 0.12 keeps).
    min_line_punct_fraction: float = 0.12
    max_short_line_fraction: float = 0.67  # FineWeb sec. 3: more than 67% of lines shorter than 30 characters
    short_line_length: int = 30  # FineWeb sec. 3: a "short" line has at most 30 characters
    # FineWeb sec. 3 (the report's text): characters in duplicated lines over 0.1. The datatrove code default is
    # 0.01; the workbench follows the report.
    max_dup_line_char_fraction: float = 0.1
    # FineWeb's datatrove pipeline ("list_ratio", new_line_ratio=0.3): newlines per word above 0.3.
    max_newline_word_ratio: float = 0.3

    def check(self) -> None:
        _check_types(self)
        _check_fractions(
            self, "min_line_punct_fraction", "max_short_line_fraction", "max_dup_line_char_fraction"
        )
        _check_nonnegative(self, "short_line_length", "max_newline_word_ratio")


@register
class FineWeb(_RuleFilter):
    """FineWeb's custom filters (Penedo et al. 2024, sec. 3), in this order; a document is dropped when

    line_punct_ratio: non-empty lines ending in terminal punctuation / non-empty lines < min_line_punct_fraction
      (a document without non-empty lines has 0);
    short_line_ratio: non-empty lines of at most `short_line_length` characters (stripped) / non-empty lines >
      max_short_line_fraction;
    char_dup_ratio: characters in duplicate lines (repeats, not first occurrences) / characters in non-empty
      lines > max_dup_line_char_fraction;
    list_ratio: newline characters / whitespace words (a document without words: / 1) > max_newline_word_ratio.
    """

    name = "fineweb"
    Params = FineWebParams
    signal_keys = ("short_line_length",)
    REASONS = ("line_punct_ratio", "short_line_ratio", "char_dup_ratio", "list_ratio")
    SPEC = {
        "lines": np.int32,
        "line_punct_fraction": np.float32,
        "short_line_fraction": np.float32,
        "dup_line_char_fraction": np.float32,
        "newline_word_ratio": np.float32,
    }

    def signals(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        short = self.params.short_line_length
        rows = []
        for text in texts:
            lines = _lines(text)
            n = len(lines)
            rows.append(
                (
                    n,
                    _ratio(sum(1 for s in lines if s.endswith(_FINEWEB_TERMINAL)), n),
                    _ratio(sum(1 for s in lines if len(s) <= short), n),
                    _dup_stats(lines)[1],
                    text.count("\n") / max(len(text.split()), 1),
                )
            )
        return _columns(self.SPEC, rows)

    def rules(self, columns: Mapping[str, np.ndarray]) -> Rules:
        p = self.params
        return [
            ("line_punct_ratio", columns["line_punct_fraction"] < _f32(p.min_line_punct_fraction)),
            ("short_line_ratio", columns["short_line_fraction"] > _f32(p.max_short_line_fraction)),
            ("char_dup_ratio", columns["dup_line_char_fraction"] > _f32(p.max_dup_line_char_fraction)),
            ("list_ratio", columns["newline_word_ratio"] > _f32(p.max_newline_word_ratio)),
        ]

    def describe(self) -> list[str]:
        p = self.params
        return [
            f"punctuated lines >= {_fmt(p.min_line_punct_fraction)}, lines <= {p.short_line_length} chars <= "
            f"{_fmt(p.max_short_line_fraction)}, duplicate-line chars <= {_fmt(p.max_dup_line_char_fraction)}, "
            f"newlines/word <= {_fmt(p.max_newline_word_ratio)}"
        ]


# -------------------------------------------------------------------------------------------------------- code

_GENERATED_MARKERS = [
    "auto-generated",
    "autogenerated",
    "automatically generated",
    "generated automatically",
    "this file is generated",
    "do not edit",
    "generated by",
]
# Characters of a data-table line: digits, hex digits and the 0x prefix, signs, decimal points, separators,
# brackets and quotes around values.
_DATA_CHARS = "0123456789abcdefABCDEFxX+-.,;:|/%()[]'\""
_DROP_DATA_CHARS = str.maketrans("", "", _DATA_CHARS)
_WHITESPACE = re.compile(r"\s+")
_DIGIT = re.compile(r"\d")
_NON_ALNUM = re.compile(r"[\W_]+")
_ASCII_ALNUM = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _alnum_count(text: str) -> int:
    """Alphanumeric characters (word characters other than '_'); a byte-level count for ASCII text."""
    if text.isascii():
        return len(text) - len(text.encode("ascii").translate(None, _ASCII_ALNUM))
    return len(_NON_ALNUM.sub("", text))


@dataclass
class CodeParams:
    max_line_length: int = (
        1000  # Codex sec. 3.1, StarCoder, RedPajama: drop files with a line over 1000 chars
    )
    max_mean_line_length: float = 100.0  # Codex sec. 3.1, StarCoder, RedPajama: mean line length over 100
    # RedPajama GitHub: alphanumeric characters under 25% of the file (Codex sec. 3.1: "a small percentage";
    # StarCoder's similar rule counts alphabetic characters, also 25%).
    min_alnum_fraction: float = 0.25
    header_lines: int = 5  # StarCoder: auto-generated markers are searched in the first 5 lines
    # After StarCoder's keyword check for auto-generated files (Codex sec. 3.1 also drops them); the list is the
    # workbench's: case-insensitive substrings of the header lines.
    generated_markers: list[str] = field(default_factory=lambda: list(_GENERATED_MARKERS))
    # Workbench choice, after StarCoder's data-file filters: a "data line" has a digit and at least 80% of its
    # non-space characters in digits, hex digits, signs, separators, brackets and quotes.
    data_line_min_fraction: float = 0.8
    max_data_line_fraction: float = 0.5  # workbench choice: over half the non-empty lines are data lines
    max_data_line_run: int = 100  # workbench choice: over 100 consecutive non-empty data lines is a table

    def check(self) -> None:
        _check_types(self)
        _check_nonnegative(
            self, "max_line_length", "max_mean_line_length", "header_lines", "max_data_line_run"
        )
        _check_fractions(self, "min_alnum_fraction", "data_line_min_fraction", "max_data_line_fraction")
        if not all(m.strip() for m in self.generated_markers):
            _fail("generated_markers", self.generated_markers, "non-empty strings")


@register
class Code(_RuleFilter):
    """Source-code heuristics (Codex sec. 3.1; StarCoder; RedPajama GitHub), in this order:

    auto_generated: a marker in `generated_markers` appears in the first `header_lines` lines (case-insensitive);
    max_line_length: the longest line (lines split on "\\n", a final newline ends the last line) is longer
      than `max_line_length`;
    mean_line_length: (characters other than newlines) / lines > `max_mean_line_length`;
    alnum_fraction: alphanumeric characters / all characters < `min_alnum_fraction` (an empty text has 0);
    data_lines: data lines / non-empty lines > `max_data_line_fraction` (a data line: see `data_line_min_fraction`);
    data_run: the longest run of consecutive data lines (empty lines skipped) > `max_data_line_run`.
    """

    name = "code"
    Params = CodeParams
    signal_keys = ("header_lines", "generated_markers", "data_line_min_fraction")
    REASONS = (
        "auto_generated",
        "max_line_length",
        "mean_line_length",
        "alnum_fraction",
        "data_lines",
        "data_run",
    )
    SPEC = {
        "auto_generated": np.bool_,
        "max_line_length": np.int32,
        "mean_line_length": np.float32,
        "alnum_fraction": np.float32,
        "data_line_fraction": np.float32,
        "data_line_run": np.int32,
    }

    def _is_data_line(self, line: str) -> bool:
        if not _DIGIT.search(line):
            return False
        s = _WHITESPACE.sub("", line)
        return len(s) - len(s.translate(_DROP_DATA_CHARS)) >= self.params.data_line_min_fraction * len(s)

    def signals(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        p = self.params
        markers = [m.lower() for m in p.generated_markers]
        rows = []
        for text in texts:
            lines = text.split("\n")
            if lines and lines[-1] == "":
                lines.pop()  # a final newline ends the last line; it does not start an empty one
            header = "\n".join(lines[: p.header_lines]).lower()
            n_chars = len(text)
            alnum = _alnum_count(text)
            data = run = best = nonempty = 0
            for line in lines:
                if not line.strip():
                    continue
                nonempty += 1
                if self._is_data_line(line):
                    data += 1
                    run += 1
                    best = max(best, run)
                else:
                    run = 0
            rows.append(
                (
                    any(m in header for m in markers),
                    max(map(len, lines), default=0),
                    _ratio(n_chars - text.count("\n"), len(lines)),
                    _ratio(alnum, n_chars),
                    _ratio(data, nonempty),
                    best,
                )
            )
        return _columns(self.SPEC, rows)

    def rules(self, columns: Mapping[str, np.ndarray]) -> Rules:
        p = self.params
        return [
            ("auto_generated", columns["auto_generated"]),
            ("max_line_length", columns["max_line_length"] > p.max_line_length),
            ("mean_line_length", columns["mean_line_length"] > _f32(p.max_mean_line_length)),
            ("alnum_fraction", columns["alnum_fraction"] < _f32(p.min_alnum_fraction)),
            ("data_lines", columns["data_line_fraction"] > _f32(p.max_data_line_fraction)),
            ("data_run", columns["data_line_run"] > p.max_data_line_run),
        ]

    def describe(self) -> list[str]:
        p = self.params
        return [
            f"no generated marker in the first {p.header_lines} lines, max line <= {p.max_line_length}, mean line "
            f"<= {_fmt(p.max_mean_line_length)}, alphanumeric >= {_fmt(p.min_alnum_fraction)}, data lines <= "
            f"{_fmt(p.max_data_line_fraction)} and runs <= {p.max_data_line_run}"
        ]


# ---------------------------------------------------------------------------------------------------- toxicity


def read_word_list(path: str) -> list[str]:
    """Words of a word-list file: one per line, stripped; blank lines and lines starting with '#' skipped."""
    resolved = resolve_path(path)
    if not resolved.is_file():
        _fail("words_file", path, f"an existing file (looked for {resolved})")
    words = []
    for line in resolved.read_text(encoding="utf-8").splitlines():
        s = line.strip()
        if s and not s.startswith("#"):
            words.append(s)
    return words


@dataclass
class ToxicityParams:
    # Workbench choice: no list ships with the workbench and nothing is downloaded; an empty list drops nothing.
    # C4 (sec. 2.2) used the "List of Dirty, Naughty, Obscene or Otherwise Bad Words".
    words: list[str] = field(default_factory=list)
    # Workbench choice: a UTF-8 file, one word or phrase per line, '#' comment lines; relative paths are taken from
    # the project root. Its words are added to `words`.
    words_file: str | None = None
    max_count: int = 1  # C4 sec. 2.2: a page with any listed word is removed
    max_fraction: float = 1.0  # workbench choice: listed words / words above this drops; 1.0 never fires

    def check(self) -> None:
        _check_types(self)
        if self.max_count < 1:
            _fail("max_count", self.max_count, ">= 1")
        _check_fractions(self, "max_fraction")
        if not all(w.strip() for w in self.words):
            _fail("words", self.words, "non-empty words")
        if self.words_file is not None:
            read_word_list(self.words_file)


@register
class Toxicity(_RuleFilter):
    """Word-list toxicity filter; nothing is downloaded (the list comes from `words` and `words_file`).

    Listed words and phrases match case-insensitively as whole words (not inside a longer word). Rules, in order:
    toxic_words: at least `max_count` matches; toxic_fraction: matches / whitespace words > `max_fraction`.
    """

    name = "toxicity"
    Params = ToxicityParams
    signal_keys = ("words", "words_file")
    REASONS = ("toxic_words", "toxic_fraction")
    SPEC = {"toxic_count": np.int32, "toxic_fraction": np.float32}

    @cached_property
    def word_list(self) -> list[str]:
        """The listed words, lowercased, deduplicated and sorted."""
        words = [w.strip() for w in self.params.words]
        if self.params.words_file is not None:
            words += read_word_list(self.params.words_file)
        return sorted({w.lower() for w in words if w})

    @cached_property
    def _pattern(self) -> re.Pattern[str] | None:
        if not self.word_list:
            return None
        alts = "|".join(re.escape(w) for w in sorted(self.word_list, key=lambda w: (-len(w), w)))
        return re.compile(rf"(?<!\w)(?:{alts})(?!\w)", re.IGNORECASE)

    def extra_signal_spec(self) -> dict[str, Any]:
        # The file's words, not just its path, determine the signals.
        digest = hashlib.blake2b("\n".join(self.word_list).encode("utf-8"), digest_size=8).hexdigest()
        return {"word_list": digest}

    def signals(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        pattern = self._pattern
        rows = []
        for text in texts:
            count = sum(1 for _ in pattern.finditer(text)) if pattern is not None else 0
            rows.append((count, count / max(len(text.split()), 1) if count else 0.0))
        return _columns(self.SPEC, rows)

    def rules(self, columns: Mapping[str, np.ndarray]) -> Rules:
        p = self.params
        return [
            ("toxic_words", columns["toxic_count"] >= p.max_count),
            ("toxic_fraction", columns["toxic_fraction"] > _f32(p.max_fraction)),
        ]

    def describe(self) -> list[str]:
        p = self.params
        src = f" (+ {p.words_file})" if p.words_file else ""
        return [
            f"{len(self.word_list)} listed words{src}; drop at >= {p.max_count} matches or "
            f"> {_fmt(p.max_fraction)} of words"
        ]


# ----------------------------------------------------------------------------------------------------- charset

# Letter ranges per script (code points, inclusive). Only letters count: a character must also be alphabetic.
_SCRIPT_RANGES: dict[str, list[tuple[int, int]]] = {
    "latin": [
        (0x41, 0x5A),
        (0x61, 0x7A),
        (0xAA, 0xAA),
        (0xBA, 0xBA),
        (0xC0, 0xD6),
        (0xD8, 0xF6),
        (0xF8, 0x2AF),
        (0x1D00, 0x1DBF),
        (0x1E00, 0x1EFF),
        (0x2C60, 0x2C7F),
        (0xA720, 0xA7FF),
        (0xAB30, 0xAB6F),
        (0xFB00, 0xFB06),
        (0xFF21, 0xFF3A),
        (0xFF41, 0xFF5A),
    ],
    "greek": [(0x370, 0x3FF), (0x1F00, 0x1FFF)],
    "cyrillic": [(0x400, 0x52F), (0x1C80, 0x1C8F), (0x2DE0, 0x2DFF), (0xA640, 0xA69F)],
    "armenian": [(0x530, 0x58F), (0xFB13, 0xFB17)],
    "hebrew": [(0x590, 0x5FF), (0xFB1D, 0xFB4F)],
    "arabic": [(0x600, 0x6FF), (0x750, 0x77F), (0x870, 0x8FF), (0xFB50, 0xFDFF), (0xFE70, 0xFEFF)],
    "devanagari": [(0x900, 0x97F), (0xA8E0, 0xA8FF)],
    "bengali": [(0x980, 0x9FF)],
    "thai": [(0xE00, 0xE7F)],
    "georgian": [(0x10A0, 0x10FF), (0x1C90, 0x1CBF), (0x2D00, 0x2D2F)],
    "hangul": [(0x1100, 0x11FF), (0x3130, 0x318F), (0xA960, 0xA97F), (0xAC00, 0xD7FF), (0xFFA0, 0xFFDC)],
    "han": [
        (0x2E80, 0x2FDF),
        (0x3005, 0x3007),
        (0x3021, 0x3029),
        (0x3038, 0x303B),
        (0x3400, 0x4DBF),
        (0x4E00, 0x9FFF),
        (0xF900, 0xFAFF),
        (0x20000, 0x3134F),
    ],
    "kana": [(0x3040, 0x309F), (0x30A0, 0x30FF), (0x31F0, 0x31FF), (0xFF66, 0xFF9F), (0x1B000, 0x1B16F)],
}
_SCRIPT_ALIASES = {"cjk": ("han", "kana", "hangul"), "japanese": ("han", "kana"), "korean": ("hangul", "han")}
SCRIPTS = tuple(sorted([*_SCRIPT_RANGES, *_SCRIPT_ALIASES]))

_LETTER_RUN = re.compile(r"[^\W\d_]+")
_ASCII_LETTER = re.compile(r"[A-Za-z]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f]+")  # C0 controls other than \t \n \f \r


def _script_pattern(scripts: Sequence[str]) -> re.Pattern[str]:
    """Runs of letters in any of `scripts`."""
    names = sorted({s for name in scripts for s in _SCRIPT_ALIASES.get(name, (name,))})
    ranges = sorted(r for s in names for r in _SCRIPT_RANGES[s])
    cls = "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)
    return re.compile(rf"(?:(?=[^\W\d_])[{cls}])+")


def _removed_chars(pattern: re.Pattern[str], text: str) -> int:
    """How many characters `pattern`'s matches cover."""
    return len(text) - len(pattern.sub("", text))


@dataclass
class CharsetParams:
    # Workbench choice: text decoded with errors="replace" carries U+FFFD where the bytes were not UTF-8; any
    # replacement character (the share above 0.0) drops the document.
    max_replacement_fraction: float = 0.0
    # Workbench choice: C0 control characters other than \t \n \r \f above 1% of the characters is binary content
    # (a NUL character is binary at any share).
    max_control_fraction: float = 0.01
    scripts: list[str] = field(default_factory=lambda: ["latin"])  # workbench choice: the corpus is English
    # Workbench choice: under half of the letters in the allowed scripts drops (documents without letters pass).
    min_script_fraction: float = 0.5
    # Workbench choice: a document over 10 MB of UTF-8 is not a training document (a dump, a log, a blob); its
    # other signals are not computed.
    max_bytes: int = 10_000_000

    def check(self) -> None:
        _check_types(self)
        _check_fractions(self, "max_replacement_fraction", "max_control_fraction", "min_script_fraction")
        if self.max_bytes < 1:
            _fail("max_bytes", self.max_bytes, ">= 1")
        unknown = [s for s in self.scripts if s not in SCRIPTS]
        if unknown or not self.scripts:
            _fail("scripts", list(self.scripts), f"a non-empty list of: {', '.join(SCRIPTS)}")


@register
class Charset(_RuleFilter):
    """Charset and script checks, in this order:

    empty: the text is empty or whitespace only;
    too_large: more than `max_bytes` bytes of UTF-8 (the other signals of such a document are not computed:
      their columns hold neutral values: not empty, no NUL, 0 control and replacement shares, script share 1);
    binary: a NUL character, or C0 control characters other than \\t \\n \\r \\f above `max_control_fraction`
      of the characters;
    invalid_utf8: U+FFFD replacement characters above `max_replacement_fraction` of the characters;
    script: letters in the allowed `scripts` / all letters < `min_script_fraction` (1.0 without letters).
    Scripts: latin, greek, cyrillic, armenian, hebrew, arabic, devanagari, bengali, thai, georgian, hangul, han,
    kana, and the aliases cjk (han + kana + hangul), japanese (han + kana), korean (hangul + han).
    """

    name = "charset"
    Params = CharsetParams
    signal_keys = ("scripts", "max_bytes")
    REASONS = ("empty", "too_large", "binary", "invalid_utf8", "script")
    SPEC = {
        "bytes": np.int64,
        "empty": np.bool_,
        "nul": np.bool_,
        "control_fraction": np.float32,
        "replacement_fraction": np.float32,
        "script_fraction": np.float32,
    }

    @cached_property
    def _script_re(self) -> re.Pattern[str]:
        return _script_pattern(self.params.scripts)

    @cached_property
    def _latin_allowed(self) -> bool:
        return "latin" in {s for name in self.params.scripts for s in _SCRIPT_ALIASES.get(name, (name,))}

    def _script_fraction(self, text: str) -> float:
        if text.isascii():  # every ASCII letter is Latin
            return 1.0 if self._latin_allowed or not _ASCII_LETTER.search(text) else 0.0
        letters = _removed_chars(_LETTER_RUN, text)
        return _removed_chars(self._script_re, text) / letters if letters else 1.0

    def signals(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        max_bytes = self.params.max_bytes
        rows: list[tuple] = []
        for text in texts:
            n = len(text)
            # isascii() is O(1) in CPython (a flag of the string), so ASCII texts of any size are measured for free.
            n_bytes = n if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
            if n_bytes > max_bytes:
                rows.append((n_bytes, False, False, 0.0, 0.0, 1.0))
                continue
            if not n or text.isspace():
                rows.append((n_bytes, True, False, 0.0, 0.0, 1.0))
                continue
            rows.append(
                (
                    n_bytes,
                    False,
                    "\x00" in text,
                    _removed_chars(_CONTROL, text) / n,
                    text.count("\ufffd") / n,
                    self._script_fraction(text),
                )
            )
        return _columns(self.SPEC, rows)

    def rules(self, columns: Mapping[str, np.ndarray]) -> Rules:
        p = self.params
        return [
            ("empty", columns["empty"]),
            ("too_large", columns["bytes"] > p.max_bytes),
            ("binary", columns["nul"] | (columns["control_fraction"] > _f32(p.max_control_fraction))),
            ("invalid_utf8", columns["replacement_fraction"] > _f32(p.max_replacement_fraction)),
            ("script", columns["script_fraction"] < _f32(p.min_script_fraction)),
        ]

    def describe(self) -> list[str]:
        p = self.params
        return [
            f"<= {p.max_bytes} bytes, controls <= {_fmt(p.max_control_fraction)}, U+FFFD <= "
            f"{_fmt(p.max_replacement_fraction)}, letters in {'/'.join(p.scripts)} >= {_fmt(p.min_script_fraction)}"
        ]
