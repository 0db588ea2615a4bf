"""Exact accounting of a mixture: the document table, and the per-source and per-rule report.

Every document a source offered ends in exactly one place: sampled out by the source's `max_docs` cap
(`sampled_out`, not a removal), dropped as unusable input (`input:<reason>`), removed by the first filter rule
that fired (`<filter>:<reason>`), or kept; per source, documents in = kept + the sum of removed + sampled_out,
and the report checks it. Tokens are byte tokens (UTF-8 bytes + 1 end-of-text).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from workbench.config.schema import MixtureConfig
from workbench.data.sources import SourceDocs


@dataclass
class DocumentTable:
    """Every admitted document of a mixture, one row each, in a stable order: sources in config order, each in
    its reader's order. Columns are numpy arrays (object arrays for strings) so rules select rows by mask."""

    sources: Mapping[str, SourceDocs]
    order: list[tuple[str, int]]  # (source name, position in that source) per row
    ids: list[str]
    src_of: np.ndarray  # source name per row
    splits: np.ndarray  # "train" | "validation"
    nbytes: np.ndarray  # UTF-8 bytes per row
    heldout: np.ndarray  # a validation document of a source in data.mixture.validation: never filtered
    scored: np.ndarray  # decided by the filters: its source has `filter: true` and it is not held out
    row_of: np.ndarray  # row in the filters' signal columns (which cover every row of a filtered source); -1

    @classmethod
    def of(cls, sources: Mapping[str, SourceDocs], m: MixtureConfig) -> DocumentTable:
        order = [(name, j) for name, s in sources.items() for j in range(len(s.ids))]
        src_of = np.array([name for name, _ in order], dtype=object)
        splits = np.array([sources[name].splits[j] for name, j in order], dtype=object)
        nbytes = np.array(
            [len(sources[name].texts[j].encode("utf-8", "replace")) for name, j in order], dtype=np.int64
        )
        heldout = np.array(
            [(name in m.validation and sp == "validation") for name, sp in zip(src_of, splits, strict=True)],
            dtype=bool,
        )
        filtered = np.array([m.sources[name].filter for name in src_of], dtype=bool)
        row_of = np.full(len(order), -1, dtype=np.int64)
        row_of[filtered] = np.arange(int(filtered.sum()))
        return cls(
            sources=sources,
            order=order,
            ids=[sources[name].ids[j] for name, j in order],
            src_of=src_of,
            splits=splits,
            nbytes=nbytes,
            heldout=heldout,
            scored=filtered & ~heldout,
            row_of=row_of,
        )

    def __len__(self) -> int:
        return len(self.order)

    def texts(self, rows: Sequence[int]) -> list[str]:
        return [self.sources[self.order[k][0]].texts[self.order[k][1]] for k in rows]

    def texts_among(self, rows: np.ndarray, sub: Sequence[int]) -> list[str]:
        """The texts of `rows[sub]` (what a filter's `DecideContext.texts` asks for)."""
        return self.texts([int(rows[j]) for j in sub])

    def paths(self, rows: Sequence[int]) -> list[str]:
        return [self.sources[self.order[k][0]].paths[self.order[k][1]] for k in rows]


@dataclass
class Decisions:
    """What the filters decided, per row: each filter's reason ("<label>:<reason>" or ""), and the first."""

    per_filter: dict[str, np.ndarray]  # filter label -> reason per row, in application order
    first: np.ndarray  # the first filter's reason per row; "" keeps the document


def account(table: DocumentTable, decisions: Decisions, samples_per_rule: int) -> dict[str, Any]:
    """Per source and per rule: documents and byte tokens removed (first rule), overlaps, samples."""
    sources = {name: _source_entry(table, decisions.first, name) for name in table.sources}
    rules = _rules(table, decisions, samples_per_rule)
    overlaps = []
    labels = list(decisions.per_filter)
    for a in range(len(labels)):
        for b in range(a + 1, len(labels)):
            fa, fb = decisions.per_filter[labels[a]], decisions.per_filter[labels[b]]
            both = (fa != "") & (fb != "")
            for (ra, rb), count in Counter(zip(fa[both], fb[both], strict=True)).most_common():
                overlaps.append({"rules": [ra, rb], "docs": int(count)})
    docs_in = sum(v["docs_in"] for v in sources.values())
    docs_kept = sum(v["docs_kept"] for v in sources.values())
    sampled_out = sum(v["sampled_out"] for v in sources.values())
    return {
        "sources": sources,
        "rules": dict(sorted(rules.items(), key=lambda kv: -kv[1]["docs_removed_first"])),
        "overlaps": overlaps[:50],
        "docs_in": docs_in,
        "docs_kept": docs_kept,
        "docs_removed": docs_in - docs_kept - sampled_out,
        "docs_sampled_out": sampled_out,
        "tokens_kept": sum(v["tokens_kept"] for v in sources.values()),
        "filters": labels,
        "token_unit": "byte tokens (UTF-8 bytes + 1 end-of-text)",
    }


def _source_entry(table: DocumentTable, first: np.ndarray, name: str) -> dict[str, Any]:
    """One source's documents and tokens in, kept (by split) and removed (by first rule and input reason)."""
    s, nbytes, splits = table.sources[name], table.nbytes, table.splits
    rows = table.src_of == name
    removed = Counter(first[rows & (first != "")])
    removed_tokens: Counter = Counter()
    for k in np.flatnonzero(rows & (first != "")):
        removed_tokens[first[k]] += int(nbytes[k]) + 1
    for reason, count in s.input_drops.items():
        removed[reason] += count
        removed_tokens[reason] += int(s.input_bytes.get(reason, 0)) + count
    kept = rows & (first == "")
    entry = {
        "docs_in": int(rows.sum()) + sum(s.input_drops.values()) + s.sampled_out,
        "docs_kept": int(kept.sum()),
        "docs_kept_train": int((kept & (splits == "train")).sum()),
        "docs_kept_val": int((kept & (splits == "validation")).sum()),
        "heldout_unfiltered": int((rows & table.heldout).sum()),
        "tokens_in": int((nbytes[rows] + 1).sum()) + sum(removed_tokens[r] for r in s.input_drops),
        "tokens_kept": int((nbytes[kept] + 1).sum()),
        "tokens_kept_train": int((nbytes[kept & (splits == "train")] + 1).sum()),
        "removed": dict(sorted(removed.items())),
        "removed_tokens": dict(sorted(removed_tokens.items())),
        "sampled_out": s.sampled_out,
    }
    if entry["docs_in"] != entry["docs_kept"] + sum(entry["removed"].values()) + s.sampled_out:  # exact
        raise AssertionError(f"accounting broke for source {name}: {entry}")
    return entry


def _rules(table: DocumentTable, decisions: Decisions, samples_per_rule: int) -> dict[str, dict[str, Any]]:
    """Per rule: documents it flagged at all, documents and tokens it removed first, a few samples."""
    first = decisions.first
    rules: dict[str, dict[str, Any]] = {}
    for full in decisions.per_filter.values():
        for reason in sorted(set(full) - {""}):
            fired = full == reason
            first_hit = first == reason
            rules[reason] = {
                "docs_flagged": int(fired.sum()),
                "docs_removed_first": int(first_hit.sum()),
                "tokens_removed_first": int((table.nbytes[first_hit] + 1).sum()),
                "samples": [
                    {"id": table.ids[k], "text": table.texts([k])[0][:240]}
                    for k in np.flatnonzero(first_hit)[:samples_per_rule]
                ],
            }
    for s in table.sources.values():
        for reason, count in s.input_drops.items():
            r = rules.setdefault(
                reason, {"docs_flagged": 0, "docs_removed_first": 0, "tokens_removed_first": 0, "samples": []}
            )
            r["docs_flagged"] += count
            r["docs_removed_first"] += count
            r["tokens_removed_first"] += int(s.input_bytes.get(reason, 0)) + count
            r["samples"] += [{"id": i, "text": ""} for i in s.input_examples.get(reason, [])][
                :samples_per_rule
            ]
    return rules


def corpus_stats(report: Mapping[str, Any]) -> dict[str, Any]:
    """The corpus statistics the datamodule reads (sizes by split), from the mixture report."""
    by_source = {
        name: {"docs_train": s["docs_kept_train"], "docs_val": s["docs_kept_val"]}
        for name, s in report["sources"].items()
    }
    return {
        "docs": report["docs_kept"],
        "docs_train": sum(s["docs_kept_train"] for s in report["sources"].values()),
        "docs_val": sum(s["docs_kept_val"] for s in report["sources"].values()),
        "by_source": by_source,
        "mixture": True,
    }
