"""Charset and script checks: empty, too large, binary, invalid UTF-8, letters outside the allowed scripts.

Every threshold is a workbench choice, stated next to its `Params` field; the shared conventions are in
`rules.py`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property

import numpy as np

from workbench.config.params import bounded, key_of, must
from workbench.data.filters.base import fraction, register
from workbench.data.filters.rules import RuleFilter, Rules, columns_of, f32, fmt

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
# The closed choice of `CharsetParams.scripts`: a member per script and alias above, named by its value.
Script = StrEnum("Script", [(s, s) for s in SCRIPTS], module=__name__)

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
    max_replacement_fraction: float = fraction(0.0)
    # Workbench choice: C0 control characters other than \t \n \r \f above 1% of the characters is binary content
    # (a NUL character is binary at any share).
    max_control_fraction: float = fraction(0.01)
    # workbench choice: the corpus is English
    scripts: list[Script] = field(default_factory=lambda: [Script("latin")])
    # Workbench choice: under half of the letters in the allowed scripts drops (documents without letters pass).
    min_script_fraction: float = fraction(0.5)
    # Workbench choice: a document over 10 MB of UTF-8 is not a training document (a dump, a log, a blob); its
    # other signals are not computed.
    max_bytes: int = bounded(10_000_000, ge=1)

    def check(self, where: str) -> None:
        if not self.scripts:
            raise must(key_of(where, "scripts"), [], f"a non-empty list of: {', '.join(SCRIPTS)}")


@register
class Charset(RuleFilter):
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
        return columns_of(self.SPEC, rows)

    def rules(self, columns: Mapping[str, np.ndarray]) -> Rules:
        p = self.params
        return [
            ("empty", columns["empty"]),
            ("too_large", columns["bytes"] > p.max_bytes),
            ("binary", columns["nul"] | (columns["control_fraction"] > f32(p.max_control_fraction))),
            ("invalid_utf8", columns["replacement_fraction"] > f32(p.max_replacement_fraction)),
            ("script", columns["script_fraction"] < f32(p.min_script_fraction)),
        ]

    def describe(self) -> list[str]:
        p = self.params
        return [
            f"<= {p.max_bytes} bytes, controls <= {fmt(p.max_control_fraction)}, U+FFFD <= "
            f"{fmt(p.max_replacement_fraction)}, letters in {'/'.join(p.scripts)} >= {fmt(p.min_script_fraction)}"
        ]
