"""What the rule-based filters share: the first-firing-rule decision, line and ratio helpers, column building.

Every rule filter is document-level: it never rewrites text, it reports one reason per document ("" keeps it).
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
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from workbench.data.filters.base import DecideContext, Filter

Rules = list[tuple[str, np.ndarray]]


def f32(x: float) -> np.float32:
    """A threshold in the columns' dtype (see the module docstring)."""
    return np.float32(x)


def first_reason(n: int, rules: Rules) -> np.ndarray:
    """One reason per document: the first rule (in list order) whose mask is true, else ""."""
    width = max([len(r) for r, _ in rules] + [1])
    out = np.zeros(n, dtype=f"<U{width}")
    for reason, mask in reversed(rules):
        out[np.asarray(mask, dtype=bool)] = reason
    return out


def lines_of(text: str) -> list[str]:
    """Non-empty lines, stripped."""
    return [s for line in text.split("\n") if (s := line.strip())]


def dup_stats(items: list[str]) -> tuple[float, float]:
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


def ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def columns_of(spec: Mapping[str, type], rows: list[tuple]) -> dict[str, np.ndarray]:
    """Columns from per-document tuples, in the order of `spec` (name -> numpy dtype)."""
    if not rows:
        return {k: np.zeros(0, dtype=dt) for k, dt in spec.items()}
    return {
        k: np.array(col, dtype=dt) for (k, dt), col in zip(spec.items(), zip(*rows, strict=True), strict=True)
    }


class RuleFilter(Filter):
    """`decide` = the first firing rule of `rules(columns)`; `reasons()` = the names `rules` can return."""

    REASONS: ClassVar[tuple[str, ...]] = ()

    def rules(self, columns: Mapping[str, np.ndarray]) -> Rules:
        raise NotImplementedError

    def decide(self, columns: Mapping[str, np.ndarray], ctx: DecideContext | None = None) -> np.ndarray:
        n = len(next(iter(columns.values()))) if columns else 0
        return first_reason(n, self.rules(columns))

    def reasons(self) -> list[str]:
        return list(self.REASONS)
