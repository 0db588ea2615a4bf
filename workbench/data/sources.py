"""The sources of a data mixture: their rules, reading or generating their documents, and admitting them.

`data.mixture.sources` maps a name to a source (`SourceConfig`); documents are read in the mapping's order.
Each kind's reader: `embedded`, `files` and `hub` go through `build_corpus` (cached there); `synthetic`, `inject`
and `teacher` generate their documents (cached under `<cache>/generated/`). What cannot be a training document
at all is dropped by name (`input:empty_text`, `input:too_large`, `input:binary`, ...) and counted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.config.choices import SourceKind
from workbench.config.errors import ConfigError
from workbench.config.params import key_of, must, unknown_key
from workbench.config.schema import DataConfig, MixtureConfig, SourceConfig
from workbench.data.corpus import Doc, assign_split, build_corpus, spec_key
from workbench.data.synthetic import resolve_params
from workbench.paths import resolve_path

SOURCES_KEY = "data.mixture.sources"
FORM = "sources are keyed by name: data.mixture.sources.<name>.<key>=<value>"
READ = (SourceKind.embedded, SourceKind.files, SourceKind.hub)  # the kinds `build_corpus` reads


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
    sampled_out: int = 0  # left out by the source's max_docs cap: not a removal (nothing was wrong with them)

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

    def train_texts(self) -> list[str]:
        return [t for t, s in zip(self.texts, self.splits, strict=True) if s == "train"]


def source_key(name: str) -> str:
    """`data.mixture.sources.<name>`: how messages name a source."""
    return key_of(SOURCES_KEY, name)


# -- rules ------------------------------------------------------------------------------------------------


def validate_sources(m: MixtureConfig) -> None:
    """The sources' one-line rules, their generators' params included, before any document is read."""
    if not isinstance(m.sources, Mapping):
        raise must(SOURCES_KEY, m.sources, f"a mapping of source name -> source ({FORM})")
    if not m.sources:
        raise ConfigError(f"{SOURCES_KEY} is empty; data.source=mixture needs at least one source")
    names = [str(n) for n in m.sources]
    for name in names:
        if name.isdigit():  # sources are not a list any more
            raise unknown_key(source_key(name), [n for n in names if not n.isdigit()], FORM)
    before: list[str] = []
    for name, src in m.sources.items():
        _validate_source(name, src, before)
        before.append(name)
    for name in m.validation:
        if name not in m.sources:
            raise must(
                "data.mixture.validation", list(m.validation), f"names of sources ({', '.join(names)})"
            )
    if all(s.weight == 0 for s in m.sources.values()):
        raise ConfigError(f"{SOURCES_KEY}: every weight is 0; nothing would be trained on")


def _validate_source(name: str, src: SourceConfig, before: list[str]) -> None:
    where = source_key(name)
    if src.kind == SourceKind.files and not src.paths:
        raise ConfigError(f"{where}.paths is empty; a files source needs .jsonl/.json/.parquet/.txt paths")
    if src.kind == SourceKind.hub and not src.hub_id:
        raise ConfigError(f"{where}.hub_id is not set")
    if src.kind == SourceKind.synthetic and not src.generator:
        raise ConfigError(f"{where}.generator is not set (arithmetic, sorting, string)")
    if src.kind == SourceKind.inject and src.base not in before:
        raise must(key_of(where, "base"), src.base, f"a source listed before it ({', '.join(before)})")
    if src.kind == SourceKind.teacher and not src.checkpoints:
        raise ConfigError(
            f"{where}.checkpoints is empty; a teacher source samples from workbench checkpoints"
        )
    params = key_of(where, "params")
    if src.kind == SourceKind.synthetic:
        resolve_params(src.generator, src.params, params)
    elif src.kind == SourceKind.inject:
        resolve_params("inject", src.params, params)
    elif src.kind == SourceKind.teacher:
        from workbench.data.teacher import resolve_teacher_params  # torch: only for a teacher source

        resolve_teacher_params(src.params, params)


# -- reading ----------------------------------------------------------------------------------------------


def read_sources(d: DataConfig, cache_root: Path) -> dict[str, SourceDocs]:
    """Every source's admitted documents, in the order of `data.mixture.sources`."""
    loaded: dict[str, SourceDocs] = {}
    for name, src in d.mixture.sources.items():
        loaded[name] = read_source(name, src, d, cache_root, loaded)
    return loaded


def training_texts(loaded: Mapping[str, SourceDocs], name: str) -> list[str]:
    """The training-split texts of source `name` (what a learning filter's `prepare` reads)."""
    return loaded[name].train_texts()


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


def read_source(
    name: str, src: SourceConfig, d: DataConfig, cache_root: Path, loaded: Mapping[str, SourceDocs]
) -> SourceDocs:
    """Read one source (cached where its reader caches) and drop what cannot be a training document."""
    drops: Counter = Counter()
    examples: defaultdict[str, list[str]] = defaultdict(list)
    sampled_out = 0
    docs: list[Doc]
    if src.kind in READ:
        try:
            corpus = build_corpus(_sub_config(d, src), cache_root, require_splits=False)
        except ConfigError as exc:
            raise ConfigError(f"{source_key(name)}: {exc}") from exc
        ds = corpus.dataset
        docs = [
            Doc(f"{name}/{i_}", name, p, t) for i_, p, t in zip(ds["id"], ds["path"], ds["text"], strict=True)
        ]
        splits = list(ds["split"])
        for reason, count in corpus.stats.get("docs_skipped_reasons", {}).items():
            drops[f"input:{reason.split(':')[-1]}"] += count
        for reason, wheres in corpus.stats.get("docs_skipped_examples", {}).items():
            examples[f"input:{reason.split(':')[-1]}"].extend(wheres)  # file:line of the first few
        sampled_out = int(corpus.stats.get("docs_capped", 0))
    else:
        docs = _generated(name, src, d, cache_root, loaded)
        splits = (
            ["train"] * len(docs)
            if src.kind == SourceKind.inject
            else [assign_split(doc.id, d.val_fraction, d.split_salt) for doc in docs]
        )
    out = _admit(name, d, docs, splits, drops)
    out.sampled_out = sampled_out
    for reason, wheres in examples.items():
        out.input_examples[reason] = (wheres + out.input_examples[reason])[: d.mixture.samples_per_rule]
    return out


def _generated(
    name: str, src: SourceConfig, d: DataConfig, cache_root: Path, loaded: Mapping[str, SourceDocs]
) -> list[Doc]:
    """Documents of a synthetic, inject or teacher source, cached under `<cache>/generated/` keyed by the
    source's settings and what it derives from (the base source's content, the checkpoints' files)."""
    spec = {
        "kind": src.kind,
        "generator": src.generator,
        "docs": src.docs,
        "seed": src.seed,
        "params": src.params,
    }
    if src.kind == SourceKind.inject:
        spec["base"] = loaded[src.base].content_key()
    if src.kind == SourceKind.teacher:
        spec |= {"mode": src.mode, "checkpoints": [_file_key(c) for c in src.checkpoints]}
    path = cache_root / "generated" / f"{spec_key({'name': name, **spec})}.jsonl"
    if path.is_file():
        with open(path) as f:
            return [Doc(**json.loads(line)) for line in f]
    docs = _generate(name, src, loaded)
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


def _synthetic_docs(name: str, src: SourceConfig, loaded: Mapping[str, SourceDocs], where: str) -> list[Doc]:
    from workbench.data.synthetic import generate

    params = key_of(where, "params")
    return list(generate(src.generator, src.docs, src.seed, dict(src.params), source=name, where=params))


def _inject_docs(name: str, src: SourceConfig, loaded: Mapping[str, SourceDocs], where: str) -> list[Doc]:
    from workbench.data.synthetic import inject

    base = loaded[src.base]
    base_docs = [
        Doc(i_, base.name, p, t)
        for i_, p, t, s in zip(base.ids, base.paths, base.texts, base.splits, strict=True)
        if s == "train"  # copies of held-out documents in training would contaminate validation
    ]
    return list(inject(base_docs, src.docs, src.seed, dict(src.params), where=key_of(where, "params")))


def _teacher_docs(name: str, src: SourceConfig, loaded: Mapping[str, SourceDocs], where: str) -> list[Doc]:
    from workbench.data.teacher import teacher_generations

    checkpoints = [str(resolve_path(c)) for c in src.checkpoints]
    return list(teacher_generations(checkpoints, src.docs, src.seed, src.mode, dict(src.params), where=where))


# One line per generated kind (`SourceKind`); the other kinds are READ by `build_corpus`.
GENERATED = {
    SourceKind.synthetic: _synthetic_docs,
    SourceKind.inject: _inject_docs,
    SourceKind.teacher: _teacher_docs,
}


def _generate(name: str, src: SourceConfig, loaded: Mapping[str, SourceDocs]) -> list[Doc]:
    """Make a synthetic, inject or teacher source's documents (ids prefixed with the source name)."""
    where = source_key(name)
    try:
        docs = GENERATED[SourceKind(src.kind)](name, src, loaded, where)
    except ConfigError:
        raise  # already names its key
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    return [dataclasses.replace(doc, id=f"{name}/{doc.id}", source=name) for doc in docs]


def _admit(name: str, d: DataConfig, docs: list[Doc], splits: list[str], drops: Counter) -> SourceDocs:
    """Keep the documents the pipeline can take; name the rest (input:<reason>)."""
    out = SourceDocs(name, [], [], [], [], drops)
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
