"""Data mixtures: named sources -> cached filter signals -> decisions with exact accounting -> token quotas.

`build_mixture(cfg)` reads every source of `data.mixture` (embedded, files, hub, synthetic, inject, teacher),
drops unusable input by name (`input:empty_text`, `input:too_large`, `input:binary`, ...), computes each
filter's signal columns once per (source content, filter signal spec) into `<cache>/signals/` (any number of
worker processes, identical results), then applies the thresholds in order: every document ends kept or
removed by the first rule that fired. The kept documents become a corpus (the columns of `build_corpus`), and
`mixture_tokens` turns its training split into exactly `mixture.tokens` tokens by source weight and temperature,
recording how many epochs of each source that is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import pickle
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from workbench.config import ConfigError
from workbench.config.schema import DataConfig, MixtureConfig, SourceConfig
from workbench.data.corpus import (
    Corpus,
    Doc,
    assign_split,
    atomic_dir,
    build_corpus,
    quiet_datasets,
    spec_key,
)
from workbench.data.filters.base import DecideContext, Filter, build_filter, concat_columns
from workbench.paths import resolve_path

log = logging.getLogger(__name__)

MIXTURE_FORMAT = 1
SOURCE_KINDS = ("embedded", "files", "hub", "synthetic", "inject", "teacher")


# -- sources ----------------------------------------------------------------------------------------------


@dataclass
class SourceDocs:
    """One source's documents (all splits) and what its reader could not use."""

    name: str
    ids: list[str]
    paths: list[str]
    texts: list[str]
    splits: list[str]
    input_drops: Counter = field(default_factory=Counter)  # "input:<reason>" -> documents
    input_examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    input_bytes: Counter = field(default_factory=Counter)

    def content_key(self) -> str:
        """BLAKE2b over every (id, split, text): the cache key of this source's signals."""
        h = hashlib.blake2b(digest_size=16)
        for i, s, t in zip(self.ids, self.splits, self.texts, strict=True):
            h.update(i.encode())
            h.update(b"\x00")
            h.update(s.encode())
            h.update(b"\x00")
            h.update(t.encode("utf-8", "surrogatepass"))
            h.update(b"\x01")
        return h.hexdigest()


def _where(i: int, src: SourceConfig) -> str:
    return f"data.mixture.sources[{i}] ({src.name})"


def validate_mixture(d: DataConfig) -> list[Filter]:
    """The mixture's one-line rules; returns the built filters."""
    m = d.mixture
    if not m.sources:
        raise ConfigError("data.mixture.sources is empty; data.source=mixture needs at least one source")
    names: list[str] = []
    for i, src in enumerate(m.sources):
        where = _where(i, src)
        if src.kind not in SOURCE_KINDS:
            raise ConfigError(
                f"{where}.kind={src.kind!r} is not allowed; choose one of: {', '.join(SOURCE_KINDS)}"
            )
        if src.name in names:
            raise ConfigError(f"{where}.name={src.name!r} is used twice; source names must be unique")
        if src.weight is not None and src.weight < 0:
            raise ConfigError(f"{where}.weight={src.weight} must be >= 0 (or null: its natural size)")
        if src.kind == "files" and not src.paths:
            raise ConfigError(
                f"{where}.paths is empty; a files source needs .jsonl/.json/.parquet/.txt paths"
            )
        if src.kind == "hub" and not src.hub_id:
            raise ConfigError(f"{where}.hub_id is not set")
        if src.kind == "synthetic" and not src.generator:
            raise ConfigError(f"{where}.generator is not set (arithmetic, sorting, string)")
        if src.kind == "inject" and src.base not in names:
            raise ConfigError(
                f"{where}.base={src.base!r} must name a source listed before it ({', '.join(names)})"
            )
        if src.kind == "teacher" and not src.checkpoints:
            raise ConfigError(
                f"{where}.checkpoints is empty; a teacher source samples from workbench checkpoints"
            )
        if src.kind == "teacher" and src.mode not in ("replace", "accumulate"):
            raise ConfigError(f"{where}.mode={src.mode!r} is not allowed; choose one of: replace, accumulate")
        if src.kind in ("synthetic", "inject", "teacher") and src.docs < 1:
            raise ConfigError(f"{where}.docs={src.docs} must be >= 1")
        names.append(src.name)
    for name in m.validation:
        if name not in names:
            raise ConfigError(
                f"data.mixture.validation names {name!r}, which is not a source ({', '.join(names)})"
            )
    if m.tokens is not None and m.tokens < 1:
        raise ConfigError(f"data.mixture.tokens={m.tokens} must be >= 1 (or null: every kept token once)")
    if m.temperature <= 0:
        raise ConfigError(f"data.mixture.temperature={m.temperature} must be > 0")
    for key in ("workers", "max_doc_bytes", "chunk_docs"):
        if getattr(m, key) < 1:
            raise ConfigError(f"data.mixture.{key}={getattr(m, key)} must be >= 1")
    if all((s.weight == 0) for s in m.sources):
        raise ConfigError("data.mixture.sources: every weight is 0; nothing would be trained on")
    return build_filters(m)


def build_filters(m: MixtureConfig) -> list[Filter]:
    filters, labels = [], Counter()
    for i, spec in enumerate(m.filters):
        spec = dict(spec)
        label = spec.pop("label", None)
        filt = build_filter(spec, where=f"data.mixture.filters[{i}]")
        labels[filt.name] += 1
        filt.label = label or (filt.name if labels[filt.name] == 1 else f"{filt.name}_{labels[filt.name]}")
        filters.append(filt)
    if len({f.label for f in filters}) != len(filters):
        raise ConfigError("data.mixture.filters: two filters share a label; give one a different `label`")
    return filters


def _sub_config(d: DataConfig, src: SourceConfig) -> DataConfig:
    return dataclasses.replace(
        d,
        source=src.kind,
        embedded_kinds=list(src.embedded_kinds),
        include_tests=src.include_tests,
        paths=list(src.paths),
        text_field=src.text_field,
        hub_id=src.hub_id,
        hub_config=src.hub_config,
        hub_split=src.hub_split,
        hub_streaming=src.hub_streaming,
        max_docs=src.max_docs,
        mixture=MixtureConfig(),
    )


def load_source(
    i: int, src: SourceConfig, d: DataConfig, cache_root: Path, loaded: dict[str, SourceDocs]
) -> SourceDocs:
    """Read one source (cached where its reader caches) and drop what cannot be a training document."""
    where = _where(i, src)
    drops: Counter = Counter()
    docs: list[Doc]
    if src.kind in ("embedded", "files", "hub"):
        try:
            corpus = build_corpus(_sub_config(d, src), cache_root, require_splits=False)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        ds = corpus.dataset
        docs = [
            Doc(f"{src.name}/{i_}", src.name, p, t)
            for i_, p, t in zip(ds["id"], ds["path"], ds["text"], strict=True)
        ]
        splits = list(ds["split"])
        for reason, count in corpus.stats.get("docs_skipped_reasons", {}).items():
            drops[f"input:{reason.split(':')[-1]}"] += count
        if corpus.stats.get("docs_capped"):
            drops["input:max_docs"] += corpus.stats["docs_capped"]
    else:
        docs = _generated(i, src, d, cache_root, loaded)
        splits = (
            ["train"] * len(docs)
            if src.kind == "inject"
            else [assign_split(doc.id, d.val_fraction, d.split_salt) for doc in docs]
        )
    return _admit(src, d, docs, splits, drops)


def _generated(
    i: int, src: SourceConfig, d: DataConfig, cache_root: Path, loaded: dict[str, SourceDocs]
) -> list[Doc]:
    """Documents of a synthetic, inject or teacher source, cached under `<cache>/generated/` keyed by the
    source's settings and what it derives from (the base source's content, the checkpoints' files)."""
    where = _where(i, src)
    spec = {
        "kind": src.kind,
        "generator": src.generator,
        "docs": src.docs,
        "seed": src.seed,
        "params": src.params,
    }
    if src.kind == "inject":
        spec["base"] = loaded[src.base].content_key()
    if src.kind == "teacher":
        spec |= {"mode": src.mode, "checkpoints": [_file_key(c) for c in src.checkpoints]}
    path = cache_root / "generated" / f"{spec_key({'name': src.name, **spec})}.jsonl"
    if path.is_file():
        with open(path) as f:
            return [Doc(**json.loads(line)) for line in f]
    docs = _generate(where, src, d, loaded)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{time.monotonic_ns()}")
    with open(tmp, "w") as f:
        for doc in docs:
            f.write(json.dumps(dataclasses.asdict(doc)) + "\n")
    tmp.replace(path)
    return docs


def _file_key(checkpoint: str) -> dict[str, Any]:
    p = resolve_path(checkpoint)
    st = p.stat() if p.is_file() else None
    return {"path": str(p), "size": st.st_size if st else None, "mtime_ns": st.st_mtime_ns if st else None}


def _generate(where: str, src: SourceConfig, d: DataConfig, loaded: dict[str, SourceDocs]) -> list[Doc]:
    """Make a synthetic, inject or teacher source's documents (ids prefixed with the source name)."""
    try:
        if src.kind == "synthetic":
            from workbench.data.synthetic import generate

            docs = generate(src.generator, src.docs, src.seed, dict(src.params), source=src.name)
        elif src.kind == "inject":
            from workbench.data.synthetic import inject

            base = loaded[src.base]
            base_docs = [
                Doc(i_, base.name, p, t)
                for i_, p, t, s in zip(base.ids, base.paths, base.texts, base.splits, strict=True)
                if s == "train"  # copies of held-out documents in training would contaminate validation
            ]
            docs = list(inject(base_docs, src.docs, src.seed, dict(src.params)))
        else:
            from workbench.data.teacher import teacher_generations

            out = teacher_generations(
                [str(resolve_path(c)) for c in src.checkpoints],
                src.docs,
                src.seed,
                src.mode,
                dict(src.params),
            )
            docs = list(out)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    return [dataclasses.replace(doc, id=f"{src.name}/{doc.id}", source=src.name) for doc in docs]


def _admit(
    src: SourceConfig, d: DataConfig, docs: list[Doc], splits: list[str], drops: Counter
) -> SourceDocs:
    """Keep the documents the pipeline can take; name the rest (input:<reason>)."""
    out = SourceDocs(src.name, [], [], [], [], drops)
    for doc, split in zip(docs, splits, strict=True):
        reason = _input_problem(doc.text, d.mixture.max_doc_bytes)
        if reason:
            out.input_drops[reason] += 1
            out.input_bytes[reason] += len(doc.text.encode("utf-8", "replace"))
            if len(out.input_examples[reason]) < d.mixture.samples_per_rule:
                out.input_examples[reason].append(doc.id)
            continue
        out.ids.append(doc.id)
        out.paths.append(doc.path)
        out.texts.append(doc.text)
        out.splits.append(split)
    return out


def _input_problem(text: str, max_bytes: int) -> str:
    """A named reason when a document cannot enter the pipeline at all; "" otherwise."""
    if not text.strip():
        return "input:empty_text"
    if len(text) * 4 > max_bytes and len(text.encode("utf-8", "replace")) > max_bytes:
        return "input:too_large"
    if "\x00" in text:
        return "input:binary"
    return ""


# -- signals ----------------------------------------------------------------------------------------------


def _score_chunk(args: tuple[Filter, list[str]]) -> dict[str, np.ndarray]:
    filt, texts = args
    return filt.signals(texts)


def signal_columns(
    filt: Filter, src: SourceDocs, content_key: str, cache_root: Path, workers: int, chunk: int, bar=None
) -> tuple[dict[str, np.ndarray], bool]:
    """A filter's signal columns for every document of a source: from the cache, or computed and cached."""
    key = spec_key({"source": content_key, **filt.signal_spec()})
    path = cache_root / "signals" / key[:2] / f"{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if bar is not None:
                bar.update(len(src.texts))
            return {k: z[k] for k in z.files}, True
    chunks = [src.texts[i : i + chunk] for i in range(0, len(src.texts), chunk)]
    parts: list[dict[str, np.ndarray]] = []
    if workers > 1 and len(chunks) > 1:
        # fork: workers inherit the trained filter state; chunks come back in order, so any worker count
        # gives the same columns
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork")) as pool:
            for part, texts in zip(pool.map(_score_chunk, [(filt, c) for c in chunks]), chunks, strict=True):
                parts.append(part)
                if bar is not None:
                    bar.update(len(texts))
    else:
        for texts in chunks:
            parts.append(filt.signals(texts))
            if bar is not None:
                bar.update(len(texts))
    columns = concat_columns(parts) if parts else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{time.monotonic_ns()}.npz")
    np.savez(tmp, **columns)
    tmp.replace(path)
    return columns, False


def take(columns: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    """Rows `idx` of signal columns (ragged `.flat`/`.offsets` pairs included)."""
    out: dict[str, np.ndarray] = {}
    for key, arr in columns.items():
        if key.endswith(".flat"):
            continue
        if key.endswith(".offsets"):
            base = key[: -len(".offsets")]
            flat = columns[f"{base}.flat"]
            starts, ends = arr[idx], arr[idx + 1]
            lengths = ends - starts
            offsets = np.zeros(len(idx) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            gather = (
                np.concatenate([np.arange(s, e) for s, e in zip(starts, ends, strict=True)])
                if len(idx)
                else []
            )
            out[f"{base}.flat"] = flat[np.asarray(gather, dtype=np.int64)]
            out[key] = offsets
        else:
            out[key] = arr[idx]
    return out


def prepare(filt: Filter, source_texts, content: dict[str, str], root: Path) -> None:
    """Run `filt.prepare`, or restore its state from `<cache>/prepared/` when the sources it learns from and its
    signal settings are unchanged (a threshold sweep never retrains the quality classifier)."""
    names = filt.training_sources()
    if not names:
        filt.prepare(source_texts)
        return
    for name in names:
        if name not in content:
            raise ValueError(
                f"it learns from source {name!r}, which is not in the mixture ({', '.join(content)})"
            )
    key = spec_key(
        {
            "filter": filt.name,
            "version": filt.version,
            **{k: getattr(filt.params, k) for k in filt.signal_keys},
            "sources": {n: content[n] for n in names},
        }
    )
    path = root / "prepared" / f"{key}.pkl"
    if path.is_file():
        filt.__dict__.update(pickle.loads(path.read_bytes()))  # our own cache, written below
        return
    filt.prepare(source_texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{time.monotonic_ns()}")
    tmp.write_bytes(pickle.dumps({k: v for k, v in filt.__dict__.items() if k not in ("params", "label")}))
    tmp.replace(path)


# -- the pipeline -----------------------------------------------------------------------------------------


@dataclass
class MixtureResult:
    corpus: Corpus  # kept documents: id, source, path, text, split
    report: dict[str, Any]


def mixture_spec(d: DataConfig, filters: Sequence[Filter], content_keys: dict[str, str]) -> dict[str, Any]:
    m = d.mixture
    return {
        "format": MIXTURE_FORMAT,
        "sources": [dataclasses.asdict(s) | {"content": content_keys[s.name]} for s in m.sources],
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
    from tqdm.auto import tqdm

    m = d.mixture
    filters = validate_mixture(d)
    root = resolve_path(cache_root if cache_root is not None else d.cache_dir)
    t0 = time.perf_counter()
    loaded: dict[str, SourceDocs] = {}
    for i, src in enumerate(m.sources):
        loaded[src.name] = load_source(i, src, d, root, loaded)
    content = {name: s.content_key() for name, s in loaded.items()}
    key = spec_key(mixture_spec(d, filters, content))
    folder = root / "mixture" / key
    if (folder / "report.json").is_file():
        report = json.loads((folder / "report.json").read_text())
        # this call computed nothing: the counts and timings describe the build that made the cache
        report |= {
            "from_cache": True,
            "signal_tasks_computed": 0,
            "signal_tasks_cached": 0,
            "seconds": time.perf_counter() - t0,
        }
        dataset = datasets.load_from_disk(str(folder / "dataset"))
        return MixtureResult(Corpus(dataset, key, _corpus_stats(report), folder, True), report)

    # documents in a stable order: sources in config order, each in its reader's order
    order: list[tuple[str, int]] = [(name, j) for name, s in loaded.items() for j in range(len(s.ids))]
    n = len(order)
    src_of = np.array([name for name, _ in order], dtype=object)
    ids = [loaded[name].ids[j] for name, j in order]
    splits = np.array([loaded[name].splits[j] for name, j in order], dtype=object)
    nbytes = np.array(
        [len(loaded[name].texts[j].encode("utf-8", "replace")) for name, j in order], dtype=np.int64
    )
    heldout = np.array(
        [(name in m.validation and sp == "validation") for name, sp in zip(src_of, splits, strict=True)]
    )
    filtered_src = {s.name for s in m.sources if s.filter}
    scored = np.array([name in filtered_src for name in src_of]) & ~heldout

    def texts_at(indices: Sequence[int]) -> list[str]:
        return [loaded[order[k][0]].texts[order[k][1]] for k in indices]

    def source_texts(name: str) -> list[str]:
        if name not in loaded:
            raise ConfigError(
                f"data.mixture.filters: a filter names source {name!r}, which is not in the mixture"
            )
        s = loaded[name]
        return [t for t, sp in zip(s.texts, s.splits, strict=True) if sp == "train"]

    # score: each filter's signals per source (cached), concatenated in document order
    total = sum(len(loaded[name].ids) for name in filtered_src) * len(filters)
    cached_hits, computed = 0, 0
    columns_by_filter: dict[str, dict[str, np.ndarray]] = {}
    signal_seconds: dict[str, float] = {}
    with tqdm(
        total=total, desc="data signals", unit="doc", disable=None if progress else True, leave=False
    ) as bar:
        for filt in filters:
            start = time.perf_counter()
            try:
                prepare(filt, source_texts, content, root)
            except ValueError as exc:
                raise ConfigError(f"data.mixture.filters ({filt.label}): {exc}") from exc
            parts = []
            for name, s in loaded.items():
                if name not in filtered_src:
                    continue
                bar.set_postfix_str(f"{filt.label} on {name}")
                cols, hit = signal_columns(filt, s, content[name], root, m.workers, m.chunk_docs, bar)
                cached_hits += hit
                computed += not hit
                parts.append(cols)
            columns_by_filter[filt.label] = concat_columns(parts)
            signal_seconds[filt.label] = round(time.perf_counter() - start, 3)
    scored_positions = np.flatnonzero(
        np.array([name in filtered_src for name in src_of])
    )  # rows of the columns
    row_of = np.full(n, -1, dtype=np.int64)
    row_of[scored_positions] = np.arange(len(scored_positions))

    # decide: in filter order; dedup-like filters see only documents the earlier filters kept
    first = np.full(n, "", dtype=object)
    per_filter: dict[str, np.ndarray] = {}
    decide_start = time.perf_counter()
    all_cols = {f"{lab}/{k}": v for lab, cols in columns_by_filter.items() for k, v in cols.items()}
    for filt in filters:
        live = scored & (first == "") if filt.corpus_level else scored.copy()
        idx = np.flatnonzero(live)
        rows = row_of[idx]
        ctx = DecideContext(
            ids=[ids[k] for k in idx],
            sources=list(src_of[idx]),
            texts=lambda sub, idx=idx: texts_at([int(idx[j]) for j in sub]),
            columns=take(all_cols, rows) if filt.corpus_level else {},
        )
        reasons = np.asarray(filt.decide(take(columns_by_filter[filt.label], rows), ctx), dtype=object)
        full = np.full(n, "", dtype=object)
        full[idx] = [f"{filt.label}:{r}" if r else "" for r in reasons]
        per_filter[filt.label] = full
        newly = (first == "") & (full != "")
        first[newly] = full[newly]
    decide_seconds = time.perf_counter() - decide_start

    kept = first == ""
    report = _report(
        d, filters, loaded, order, src_of, splits, nbytes, ids, first, per_filter, heldout, texts_at
    )
    report.update(
        {
            "mixture_key": key,
            "signal_tasks_cached": cached_hits,
            "signal_tasks_computed": computed,
            "signal_seconds": signal_seconds,
            "decide_seconds": round(decide_seconds, 3),
            "seconds": round(time.perf_counter() - t0, 3),
            "describe": {f.label: f.describe() for f in filters},
            "from_cache": False,
        }
    )
    for name in (s.name for s in m.sources if (s.weight is None or s.weight > 0)):
        src_rows = (src_of == name) & (splits == "train")
        if src_rows.any() and not (kept & src_rows).any():
            raise ConfigError(
                f"data.mixture: source {name!r} is empty after filtering ({int(src_rows.sum())} training documents, "
                f"first rules: {dict(Counter(first[src_rows]).most_common(3))}); loosen its filters or set its weight to 0"
            )
    keep_idx = np.flatnonzero(kept)
    dataset = datasets.Dataset.from_dict(
        {
            "id": [ids[k] for k in keep_idx],
            "source": [str(src_of[k]) for k in keep_idx],
            "path": [loaded[order[k][0]].paths[order[k][1]] for k in keep_idx],
            "text": texts_at(keep_idx),
            "split": [str(splits[k]) for k in keep_idx],
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
    return MixtureResult(Corpus(dataset, key, _corpus_stats(report), folder, False), report)


def _report(
    d, filters, loaded, order, src_of, splits, nbytes, ids, first, per_filter, heldout, texts_at
) -> dict:
    """Per source and per rule: documents and byte tokens removed (first rule), overlaps, samples."""
    m = d.mixture
    sources: dict[str, dict[str, Any]] = {}
    for name, s in loaded.items():
        rows = src_of == name
        removed = Counter(first[rows & (first != "")])
        removed_tokens: Counter = Counter()
        for k in np.flatnonzero(rows & (first != "")):
            removed_tokens[first[k]] += int(nbytes[k]) + 1
        for reason, count in s.input_drops.items():
            removed[reason] += count
            removed_tokens[reason] += int(s.input_bytes.get(reason, 0)) + count
        kept = rows & (first == "")
        entry = {
            "docs_in": int(rows.sum()) + sum(s.input_drops.values()),
            "docs_kept": int(kept.sum()),
            "docs_kept_train": int((kept & (splits == "train")).sum()),
            "docs_kept_val": int((kept & (splits == "validation")).sum()),
            "heldout_unfiltered": int((rows & heldout).sum()),
            "tokens_in": int((nbytes[rows] + 1).sum()) + sum(removed_tokens[r] for r in s.input_drops),
            "tokens_kept": int((nbytes[kept] + 1).sum()),
            "tokens_kept_train": int((nbytes[kept & (splits == "train")] + 1).sum()),
            "removed": dict(sorted(removed.items())),
            "removed_tokens": dict(sorted(removed_tokens.items())),
        }
        if entry["docs_in"] != entry["docs_kept"] + sum(entry["removed"].values()):  # exact accounting
            raise AssertionError(f"accounting broke for source {name}: {entry}")
        sources[name] = entry

    rules: dict[str, dict[str, Any]] = {}
    for full in per_filter.values():
        for reason in sorted(set(full) - {""}):
            fired = full == reason
            first_hit = first == reason
            rules[reason] = {
                "docs_flagged": int(fired.sum()),
                "docs_removed_first": int(first_hit.sum()),
                "tokens_removed_first": int((nbytes[first_hit] + 1).sum()),
                "samples": [
                    {"id": ids[k], "text": texts_at([k])[0][:240]}
                    for k in np.flatnonzero(first_hit)[: m.samples_per_rule]
                ],
            }
    for s in loaded.values():
        for reason, count in s.input_drops.items():
            r = rules.setdefault(
                reason, {"docs_flagged": 0, "docs_removed_first": 0, "tokens_removed_first": 0, "samples": []}
            )
            r["docs_flagged"] += count
            r["docs_removed_first"] += count
            r["tokens_removed_first"] += int(s.input_bytes.get(reason, 0)) + count
            r["samples"] += [{"id": i, "text": ""} for i in s.input_examples.get(reason, [])][
                : m.samples_per_rule
            ]
    overlaps = []
    labels = list(per_filter)
    for a in range(len(labels)):
        for b in range(a + 1, len(labels)):
            fa, fb = per_filter[labels[a]], per_filter[labels[b]]
            both = (fa != "") & (fb != "")
            for (ra, rb), count in Counter(zip(fa[both], fb[both], strict=True)).most_common():
                overlaps.append({"rules": [ra, rb], "docs": int(count)})
    docs_in = sum(v["docs_in"] for v in sources.values())
    docs_kept = sum(v["docs_kept"] for v in sources.values())
    return {
        "sources": sources,
        "rules": dict(sorted(rules.items(), key=lambda kv: -kv[1]["docs_removed_first"])),
        "overlaps": overlaps[:50],
        "docs_in": docs_in,
        "docs_kept": docs_kept,
        "docs_removed": docs_in - docs_kept,
        "tokens_kept": sum(v["tokens_kept"] for v in sources.values()),
        "filters": [f.label for f in filters],
        "token_unit": "byte tokens (UTF-8 bytes + 1 end-of-text)",
    }


def _corpus_stats(report: dict) -> dict[str, Any]:
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


# -- mixing by tokens -------------------------------------------------------------------------------------


def plan_mixture(m: MixtureConfig, available: dict[str, int]) -> dict[str, dict[str, float]]:
    """Training tokens per source: p_s ~ w_s^(1/T) (w_s = weight, or the source's share of kept tokens when
    null; temperature sampling as in XLM, Conneau & Lample 2019), scaled to `m.tokens` (default: every kept
    token once) with largest-remainder rounding so the quotas sum to the budget exactly."""
    total = sum(available.values())
    weights = {}
    for s in m.sources:
        if s.name not in available or available[s.name] == 0:
            continue
        w = s.weight if s.weight is not None else available[s.name] / max(total, 1)
        if w > 0:
            weights[s.name] = w ** (1.0 / m.temperature)
    z = sum(weights.values())
    budget = m.tokens if m.tokens is not None else total
    raw = {name: budget * w / z for name, w in weights.items()}
    quota = {name: math.floor(v) for name, v in raw.items()}
    for name in sorted(raw, key=lambda k: (-(raw[k] - quota[k]), k))[: budget - sum(quota.values())]:
        quota[name] += 1
    return {
        name: {
            "share": weights[name] / z,
            "tokens": quota[name],
            "available": available[name],
            "epochs": quota[name] / available[name],
        }
        for name in weights
    }


def _permutation(n: int, name: str, epoch: int, seed: int) -> np.ndarray:
    digest = hashlib.blake2b(f"{seed}:{name}:{epoch}".encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little")).permutation(n)


def mixture_tokens(
    encoded_by_source: dict[str, list[np.ndarray]], plan: dict, seed: int, eos: int, dtype
) -> tuple[np.ndarray, dict[str, dict[str, float]]]:
    """Exactly `plan[s]["tokens"]` tokens of each source (documents + end-of-text, in a seeded order per epoch;
    the last document of a source is cut at its quota), sources interleaved; returns the tokens and what was
    used (tokens, epochs, documents) per source."""
    pieces: dict[str, list[np.ndarray]] = {}
    used: dict[str, dict[str, float]] = {}
    for name, p in plan.items():
        encoded = [np.append(t.astype(dtype), np.array([eos], dtype=dtype)) for t in encoded_by_source[name]]
        available = sum(len(e) for e in encoded)
        need, out, epoch, ndocs = int(p["tokens"]), [], 0, 0
        while need > 0:
            for k in _permutation(len(encoded), name, epoch, seed):
                e = encoded[k] if len(encoded[k]) <= need else encoded[k][:need]
                out.append(e)
                need -= len(e)
                ndocs += 1
                if need == 0:
                    break
            epoch += 1
        pieces[name] = out
        used[name] = {
            "tokens": int(p["tokens"]),
            "epochs": p["tokens"] / max(available, 1),
            "documents": ndocs,
        }
    # interleave sources document by document in proportion, so every stretch of the stream is a mixture
    stream: list[np.ndarray] = []
    cursors = {name: 0 for name in pieces}
    progress = {name: 0.0 for name in pieces}
    while cursors:
        name = min(cursors, key=lambda k: (progress[k], k))
        seq = pieces[name]
        stream.append(seq[cursors[name]])
        cursors[name] += 1
        progress[name] = cursors[name] / len(seq)
        if cursors[name] == len(seq):
            del cursors[name]
    tokens = np.concatenate(stream) if stream else np.zeros(0, dtype=dtype)
    return tokens, used
