"""Word-list toxicity: listed words and phrases, matched as whole words; nothing is downloaded.

C4 (Raffel et al. 2020, sec. 2.2) removed every page holding a word of the "List of Dirty, Naughty, Obscene or
Otherwise Bad Words"; the list here comes from `words` and `words_file`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from workbench.config.params import bounded, key_of, must
from workbench.data.filters.base import fraction, register
from workbench.data.filters.rules import RuleFilter, Rules, columns_of, f32, fmt
from workbench.paths import resolve_path


def read_word_list(path: str, key: str = "words_file") -> list[str]:
    """Words of a word-list file: one per line, stripped; blank lines and lines starting with '#' skipped."""
    resolved = resolve_path(path)
    if not resolved.is_file():
        raise must(key, path, f"an existing file (looked for {resolved})")
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
    max_count: int = bounded(1, ge=1)  # C4 sec. 2.2: a page with any listed word is removed
    # workbench choice: listed words / words above this drops; 1.0 never fires
    max_fraction: float = fraction(1.0)

    def check(self, where: str) -> None:
        if not all(w.strip() for w in self.words):
            raise must(key_of(where, "words"), self.words, "non-empty words")
        if self.words_file is not None:
            read_word_list(self.words_file, key_of(where, "words_file"))


@register
class Toxicity(RuleFilter):
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
        return columns_of(self.SPEC, rows)

    def rules(self, columns: Mapping[str, np.ndarray]) -> Rules:
        p = self.params
        return [
            ("toxic_words", columns["toxic_count"] >= p.max_count),
            ("toxic_fraction", columns["toxic_fraction"] > f32(p.max_fraction)),
        ]

    def describe(self) -> list[str]:
        p = self.params
        src = f" (+ {p.words_file})" if p.words_file else ""
        return [
            f"{len(self.word_list)} listed words{src}; drop at >= {p.max_count} matches or "
            f"> {fmt(p.max_fraction)} of words"
        ]
