"""Data mixtures: named sources -> cached filter signals -> decisions with exact accounting -> a cached corpus.

`build_mixture(cfg)` runs five stages, each in its own module:

1. read (`sources.py`): every source of `data.mixture.sources`, in order; unusable input is dropped by name;
2. score (`signals.py`): each filter's signal columns per source, computed once and cached;
3. decide (here): the filters' thresholds in `data.mixture.order`; every document ends kept or removed by the
   first rule that fired, and dedup-like filters see only the documents the filters before them kept;
4. account (`accounting.py`): the per-source and per-rule report, exact;
5. save: the kept documents become a corpus (the columns of `build_corpus`) under `<cache>/mixture/<key>/`.

`mixing.py` later turns the corpus's training split into exactly `mixture.tokens` tokens by source weight and
temperature. `validate_mixture` is the mixture's rules, run before any document is read.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from workbench.config.errors import ConfigError
from workbench.config.params import check_fields, key_of, must
from workbench.config.schema import DataConfig, MixtureConfig
from workbench.data.accounting import Decisions, DocumentTable, account, corpus_stats
from workbench.data.corpus import Corpus, atomic_dir, quiet_datasets, spec_key
from workbench.data.filters import DecideContext, Filter, FilterSpec, build_pipeline, parse_pipeline
from workbench.data.filters.base import FILTERS_KEY, concat_columns
from workbench.data.signals import prepare, signal_columns, take
from workbench.data.sources import SourceDocs, read_sources, training_texts, validate_sources
from workbench.paths import resolve_path

MIXTURE_FORMAT = 3  # 2: sources and filters addressed by name; 3: caps counted as sampled_out, not removed


@dataclass
class MixtureResult:
    corpus: Corpus  # kept documents: id, source, path, text, split
    report: dict[str, Any]


@dataclass
class Scores:
    """Every filter's signal columns over the filtered sources' rows, and what computing them cost."""

    columns: dict[str, dict[str, np.ndarray]]  # filter label -> column -> array (rows: DocumentTable.row_of)
    cached: int  # signal tasks (filter x source) read from the cache
    computed: int
    seconds: dict[str, float]  # filter label -> seconds spent preparing and scoring


def validate_mixture(d: DataConfig) -> list[FilterSpec]:
    """The mixture's one-line rules: sources, filters by name and order, the sources filters learn from.
    Returns the enabled filters' specs in application order; nothing is built or read."""
    m = d.mixture
    check_fields(m, "data.mixture")
    validate_sources(m)
    specs = parse_pipeline(m.filters, m.order)
    for spec in specs:
        for param in spec.cls.source_params:
            names = getattr(spec.params, param)
            if any(n not in m.sources for n in names):
                raise must(
                    key_of(key_of(FILTERS_KEY, spec.name), param),
                    names,
                    f"names of sources of the mixture ({', '.join(m.sources)})",
                )
    return specs


def mixture_spec(d: DataConfig, filters: Sequence[Filter], content: Mapping[str, str]) -> dict[str, Any]:
    """What the kept documents depend on: every source (in order) and its content, every filter in order."""
    m = d.mixture
    return {
        "format": MIXTURE_FORMAT,
        "sources": [
            {"name": name, **dataclasses.asdict(s), "content": content[name]} for name, s in m.sources.items()
        ],
        "filters": [{"label": f.label, **dataclasses.asdict(f.params), **f.signal_spec()} for f in filters],
        "validation": list(m.validation),
        "max_doc_bytes": m.max_doc_bytes,
        "val_fraction": d.val_fraction,
        "split_salt": d.split_salt,
    }


def build_mixture(
    d: DataConfig, cache_root: str | Path | None = None, progress: bool = True
) -> MixtureResult:
    """Read, score, decide and account for every source of `d.mixture`; the kept documents are cached under
    `<cache>/mixture/<key>/` keyed by the source contents and every filter setting."""
    specs = validate_mixture(d)
    root = resolve_path(cache_root if cache_root is not None else d.cache_dir)
    t0 = time.perf_counter()
    sources = read_sources(d, root)
    filters = build_pipeline(specs)  # the run's filters: each is constructed here, once
    content = {name: s.content_key() for name, s in sources.items()}
    key = spec_key(mixture_spec(d, filters, content))
    folder = root / "mixture" / key
    if (folder / "report.json").is_file():
        return _from_cache(folder, key, t0)
    table = DocumentTable.of(sources, d.mixture)
    scores = _score(filters, sources, content, root, d.mixture, progress)
    decide_start = time.perf_counter()
    decisions = _decide(filters, table, scores)
    decide_seconds = time.perf_counter() - decide_start
    report = account(table, decisions, d.mixture.samples_per_rule)
    report.update(
        {
            "mixture_key": key,
            "signal_tasks_cached": scores.cached,
            "signal_tasks_computed": scores.computed,
            "signal_seconds": scores.seconds,
            "decide_seconds": round(decide_seconds, 3),
            "seconds": round(time.perf_counter() - t0, 3),
            "describe": {f.label: f.describe() for f in filters},
            "from_cache": False,
        }
    )
    _check_weighted_sources_kept(d.mixture, table, decisions)
    return _save(table, decisions, report, folder, key)


def _from_cache(folder: Path, key: str, t0: float) -> MixtureResult:
    report = json.loads((folder / "report.json").read_text())
    # this call computed nothing: the counts and timings describe the build that made the cache
    report |= {
        "from_cache": True,
        "signal_tasks_computed": 0,
        "signal_tasks_cached": 0,
        "seconds": time.perf_counter() - t0,
    }
    dataset = datasets.load_from_disk(str(folder / "dataset"))
    return MixtureResult(Corpus(dataset, key, corpus_stats(report), folder, True), report)


def _score(
    filters: Sequence[Filter],
    sources: Mapping[str, SourceDocs],
    content: Mapping[str, str],
    root: Path,
    m: MixtureConfig,
    progress: bool,
) -> Scores:
    """Each filter prepared (trained, or restored) and its signals per filtered source, concatenated in order."""
    from tqdm.auto import tqdm

    filtered = [name for name in sources if m.sources[name].filter]
    scores = Scores({}, 0, 0, {})
    total = sum(len(sources[name].ids) for name in filtered) * len(filters)
    with tqdm(
        total=total, desc="data signals", unit="doc", disable=None if progress else True, leave=False
    ) as bar:
        for filt in filters:
            start = time.perf_counter()
            try:
                prepare(filt, partial(training_texts, sources), content, root)
            except ValueError as exc:
                raise ConfigError(f"{filt.key}: {exc}") from exc
            parts = []
            for name in filtered:
                bar.set_postfix_str(f"{filt.label} on {name}")
                cols, hit = signal_columns(
                    filt, sources[name].texts, content[name], root, m.workers, m.chunk_docs, bar
                )
                scores.cached += hit
                scores.computed += not hit
                parts.append(cols)
            scores.columns[filt.label] = concat_columns(parts)
            scores.seconds[filt.label] = round(time.perf_counter() - start, 3)
    return scores


def _decide(filters: Sequence[Filter], table: DocumentTable, scores: Scores) -> Decisions:
    """The filters' reasons in application order; corpus-level ones see only what the earlier ones kept."""
    n = len(table)
    decisions = Decisions({}, np.full(n, "", dtype=object))
    first = decisions.first
    all_cols = {f"{lab}/{k}": v for lab, cols in scores.columns.items() for k, v in cols.items()}
    for filt in filters:
        live = table.scored & (first == "") if filt.corpus_level else table.scored.copy()
        idx = np.flatnonzero(live)
        rows = table.row_of[idx]
        ctx = DecideContext(
            ids=[table.ids[k] for k in idx],
            sources=list(table.src_of[idx]),
            texts=partial(table.texts_among, idx),
            columns=take(all_cols, rows) if filt.corpus_level else {},
        )
        reasons = np.asarray(filt.decide(take(scores.columns[filt.label], rows), ctx), dtype=object)
        full = np.full(n, "", dtype=object)
        full[idx] = [f"{filt.label}:{r}" if r else "" for r in reasons]
        decisions.per_filter[filt.label] = full
        newly = (first == "") & (full != "")
        first[newly] = full[newly]
    return decisions


def _check_weighted_sources_kept(m: MixtureConfig, table: DocumentTable, decisions: Decisions) -> None:
    """A source that should be trained on (weight null or > 0) must keep some training documents."""
    kept = decisions.first == ""
    for name in (n for n, s in m.sources.items() if (s.weight is None or s.weight > 0)):
        src_rows = (table.src_of == name) & (table.splits == "train")
        if src_rows.any() and not (kept & src_rows).any():
            raise ConfigError(
                f"data.mixture: source {name!r} is empty after filtering ({int(src_rows.sum())} training documents, "
                f"first rules: {dict(Counter(decisions.first[src_rows]).most_common(3))}); loosen its filters or set its weight to 0"
            )


def _save(
    table: DocumentTable, decisions: Decisions, report: dict[str, Any], folder: Path, key: str
) -> MixtureResult:
    """The kept documents as a corpus, saved with the report under `folder`."""
    keep_idx = np.flatnonzero(decisions.first == "")
    dataset = datasets.Dataset.from_dict(
        {
            "id": [table.ids[k] for k in keep_idx],
            "source": [str(table.src_of[k]) for k in keep_idx],
            "path": table.paths(keep_idx),
            "text": table.texts(keep_idx),
            "split": [str(table.splits[k]) for k in keep_idx],
        }
    )
    if "validation" not in dataset["split"]:
        raise ConfigError(
            "data.mixture: no validation document is left; list clean sources in data.mixture.validation"
        )
    with atomic_dir(folder) as tmp, quiet_datasets():
        dataset.save_to_disk(str(tmp / "dataset"))
        (tmp / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True, default=str))
    dataset = datasets.load_from_disk(str(folder / "dataset"))
    return MixtureResult(Corpus(dataset, key, corpus_stats(report), folder, False), report)
