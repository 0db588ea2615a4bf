"""Documents as a Hugging Face ``Dataset``: the corpus that ships with Python, local files, or a hub dataset.

Columns: ``id`` (stable), ``source`` ("code" | "prose" | a file or hub name), ``path``, ``text``, ``split``.
Order, ``max_docs`` and the split are functions of document ids alone (BLAKE2b, never Python's ``hash()``,
which PYTHONHASHSEED salts per process), so every machine builds the same corpus. The built corpus is
saved under ``<cache_root>/corpus/<key>/``, where the key hashes everything that determines its content.
"""

from __future__ import annotations

import ast
import glob
import hashlib
import io
import json
import logging
import os
import shutil
import sys
import sysconfig
import time
import tokenize
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from workbench.config import ConfigError
from workbench.config.errors import Unavailable, first_line
from workbench.config.schema import DataConfig
from workbench.paths import project_root, resolve_path

log = logging.getLogger(__name__)

CORPUS_FORMAT = 1  # bump when the builder changes what a given spec produces; old caches are then ignored
COLUMNS = ("id", "source", "path", "text", "split")
EMBEDDED_KINDS = ("code", "prose")
FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json", ".parquet", ".txt")
# Reasons a row of a JSON lines file is not a document (counted per line, with file:line examples):
#   bad_json        the line is not JSON          not_object      JSON, but not an object
#   missing_text    no `data.text_field` key      not_text        the field is not a string
#   lone_surrogate  the text holds an unpaired UTF-16 surrogate escape (not encodable as UTF-8)
#   undecodable     the line's bytes are not UTF-8    empty_text   only whitespace
TEST_DIRS = frozenset({"test", "tests", "idle_test"})
# Generated data, not code; its text is exactly the pydoc topics, which would leak prose validation into training.
GENERATED_STDLIB_FILES = frozenset({"pydoc_data/topics.py"})


# ---------------------------------------------------------------------------------------------- hashing & cache


def unit_hash(text: str) -> float:
    """A stable number in [0, 1) for ``text`` (BLAKE2b, 8-byte digest)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign_split(group: str, val_fraction: float, salt: str) -> str:
    """ "validation" for a stable ``val_fraction`` share of groups (a group is usually one document id)."""
    return "validation" if unit_hash(f"{salt}:{group}") < val_fraction else "train"


def spec_key(spec: dict[str, Any]) -> str:
    """sha256 of a canonical JSON of ``spec``."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a scratch directory that becomes ``final`` only when the block succeeds.

    An interrupted build leaves a ``.tmp-*`` folder, never a half-written ``final``. When another process
    finished ``final`` first, its copy wins and ours is discarded.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}-{time.monotonic_ns()}"
    tmp.mkdir()
    try:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def quiet_datasets() -> Iterator[None]:
    """Silence datasets' own progress bars for a block (ours report the build instead)."""
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


# ---------------------------------------------------------------------------------------------- documents


@dataclass
class Doc:
    id: str
    source: str
    path: str
    text: str
    group: str = ""  # documents of one group share a split; empty: the id


@dataclass
class Skips:
    """Counts every document that could not be built, by named reason, with a few example paths."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] += 1
        if len(self.examples[reason]) < 3:
            self.examples[reason].append(where)


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(include_tests: bool) -> tuple[list[tuple[str, Path]], Counter]:
    """(posix path relative to the stdlib, path) of every stdlib .py file, sorted, and counts of what was left out."""
    root = stdlib_dir()
    excluded: Counter = Counter()
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        keep = []
        for d in dirnames:
            if d in ("site-packages", "dist-packages", "__pycache__"):
                continue
            if d in TEST_DIRS and not include_tests:
                excluded["test_dirs"] += 1
                continue
            keep.append(d)
        dirnames[:] = sorted(keep)
        for name in filenames:
            if not name.endswith(".py"):
                continue
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if name.startswith("test_") and not include_tests:
                excluded["test_files"] += 1
            elif rel in GENERATED_STDLIB_FILES:
                excluded["generated_data"] += 1
            else:
                found.append((rel, Path(dirpath) / name))
    return sorted(found), excluded


def _decode_source(raw: bytes) -> str:
    """Decode Python source as the interpreter would: PEP 263 coding cookie, else UTF-8 (BOM allowed)."""
    encoding, _ = tokenize.detect_encoding(io.BytesIO(raw).readline)
    return raw.decode(encoding)


def order_key(doc_id: str) -> bytes:
    """Documents are ordered by this stable hash of their id (ties, impossible in practice, by id).

    Hash order rather than id order: any prefix (``max_docs``, the first validation batches) is a uniform sample
    of the corpus instead of, say, only the stdlib modules whose names start with "a".
    """
    return hashlib.blake2b(f"order:{doc_id}".encode(), digest_size=8).digest()


def embedded_documents(
    kinds: list[str], include_tests: bool, skips: Skips, limit: int | None = None
) -> tuple[list[Doc], Counter, int]:
    """Stdlib source ("code") and pydoc topics + module docstrings ("prose"), in stable hash order.

    Nothing is imported but ``pydoc_data``. Candidates are read lazily in order until ``limit`` documents are
    built, so a small ``max_docs`` reads only a few files. Returns documents, what was left out by design, and
    how many candidates were never read.
    """
    topics: dict[str, str] = {}
    if "prose" in kinds:
        from pydoc_data.topics import topics  # a plain dict of strings
    files, excluded = stdlib_files(include_tests)
    # (id, kind, path relative to the stdlib or topic name, file path)
    candidates = [(f"prose:topic:{name}", "topic", name, None) for name in topics]
    for rel, path in files:
        if "code" in kinds:
            candidates.append((f"code:{rel}", "code", rel, path))
        if "prose" in kinds:
            candidates.append((f"prose:doc:{rel}", "doc", rel, path))
    candidates.sort(key=lambda c: (order_key(c[0]), c[0]))

    docs: list[Doc] = []
    examined = 0
    for doc_id, kind, rel, path in candidates:
        if limit is not None and len(docs) >= limit:
            break
        examined += 1
        if kind == "topic":
            if topics[rel].strip():
                docs.append(Doc(doc_id, "prose", "pydoc_data/topics.py", topics[rel]))
            else:
                skips.add("prose:empty_text", f"topic {rel}")
            continue
        source = "code" if kind == "code" else "prose"
        try:
            text = _decode_source(path.read_bytes())
        except (
            SyntaxError,
            UnicodeDecodeError,
            LookupError,
        ):  # detect_encoding raises SyntaxError on bad cookies
            skips.add(f"{source}:undecodable", rel)
            continue
        # A module's docstring is also inside its code: both share the code document's split, so a docstring in
        # validation never has its source file in training.
        group = f"code:{rel}"
        if kind == "code":
            if text.strip():
                docs.append(Doc(doc_id, "code", rel, text, group=group))
            else:
                skips.add("code:empty_text", rel)
            continue
        try:
            with warnings.catch_warnings():  # invalid escapes in old modules warn at parse time
                warnings.simplefilter("ignore")
                docstring = ast.get_docstring(ast.parse(text))
        except (SyntaxError, ValueError):
            skips.add("prose:unparsable", rel)
            continue
        if docstring and docstring.strip():
            docs.append(Doc(doc_id, "prose", rel, docstring, group=group))
        else:
            excluded["prose:no_docstring"] += 1  # nothing lost: the module simply has no docstring
    return docs, excluded, len(candidates) - examined


def _display(path: Path) -> str:
    """A file's name in ids: relative to the project root when inside it, so ids survive moving the checkout."""
    try:
        return path.relative_to(project_root()).as_posix()
    except ValueError:
        return path.as_posix()


def resolve_files(patterns: list[str]) -> list[Path]:
    """Every file named or matched by ``patterns`` (relative ones from the project root), deduplicated, in order."""
    found: list[Path] = []
    for pattern in patterns:
        full = resolve_path(pattern)
        if any(c in str(full) for c in "*?["):
            matches = sorted(Path(m) for m in glob.glob(str(full), recursive=True) if Path(m).is_file())
            if not matches:
                raise ConfigError(f"data.paths: no file matches {pattern!r} (looked in {full.parent})")
        elif full.is_file():
            matches = [full]
        elif full.is_dir():  # every supported file below it, in path order
            matches = sorted(m for m in full.rglob("*") if m.is_file() and m.name.endswith(FILE_SUFFIXES))
            if not matches:
                raise ConfigError(
                    f"data.paths: the folder {pattern!r} ({full}) holds no {', '.join(FILE_SUFFIXES)} file"
                )
        else:
            raise ConfigError(f"data.paths: no such file {pattern!r} ({full})")
        for m in matches:
            if not m.name.endswith(FILE_SUFFIXES):
                raise ConfigError(
                    f"data.paths: {m} is not one of {', '.join(FILE_SUFFIXES)} (from {pattern!r})"
                )
            m = m.resolve()
            if m not in found:
                found.append(m)
    return found


def _open_text_lines(path: Path) -> Iterator[bytes]:
    """The raw lines of a file, decompressed by its suffix (.gz: gzip, .zst: Zstandard)."""
    if path.name.endswith(".gz"):
        import gzip

        with gzip.open(path, "rb") as f:
            yield from f
    elif path.name.endswith(".zst"):
        import zstandard  # a dependency; the stdlib has no Zstandard reader before Python 3.14

        with path.open("rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as f:
            yield from io.BufferedReader(f)
    else:
        with path.open("rb") as f:
            yield from f


def _json_objects(path: Path, name: str, skips: Skips) -> Iterator[tuple[str, Any]]:
    """(where, parsed value) per line of a JSON lines file, streamed; a .json file holding one array is parsed
    whole (where = `file:item i`). Lines that are not JSON are counted in `skips` and left out."""
    if path.name.endswith(".json"):
        with path.open("rb") as f:
            is_array = f.read(4096).lstrip()[:1] == b"["
        if is_array:
            try:
                items = json.loads(path.read_bytes())
            except (ValueError, UnicodeDecodeError) as e:
                raise ConfigError(f"data.paths: cannot read {name} as a JSON array: {e}") from e
            yield from ((f"{name}:item {i}", item) for i, item in enumerate(items))
            return
    for number, line in enumerate(_open_text_lines(path), start=1):
        where = f"{name}:{number}"
        if not line.strip():
            continue  # a blank line is no document
        try:
            yield where, json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            skips.add(f"{name}:undecodable", where)
        except ValueError:
            skips.add(f"{name}:bad_json", where)


def json_documents(path: Path, name: str, text_field: str, skips: Skips) -> list[Doc]:
    """One document per object of a JSON lines file (.jsonl, .jsonl.gz, .jsonl.zst, or .json as lines or one array).

    A line that cannot be a document is counted under its reason (FILE_SUFFIXES' comment) with `file:line`, and
    the rest of the file is kept. A file in which no line has `text_field` is a misnamed field, refused in one
    line. Ids are `file:row`, row counting the JSON objects in order (blank lines and lines that are not JSON do
    not count), so a clean file's ids are those of the datasets JSON reader used before.
    """
    docs: list[Doc] = []
    row, missing_first, has_field = 0, None, False
    for where, obj in _json_objects(path, name, skips):
        if not isinstance(obj, dict):
            skips.add(f"{name}:not_object", where)
            continue
        index, row = row, row + 1
        if text_field not in obj:
            missing_first = missing_first or (where, sorted(obj))
            skips.add(f"{name}:missing_text", where)
            continue
        has_field = True
        text = obj[text_field]
        if not isinstance(text, str):
            skips.add(f"{name}:not_text", where)
            continue
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            skips.add(f"{name}:lone_surrogate", where)
            continue
        if not text.strip():
            skips.add(f"{name}:empty_text", where)
            continue
        docs.append(Doc(f"{name}:{index}", name, name, text))
    if missing_first and not has_field:
        where, keys = missing_first
        raise ConfigError(
            f"data.text_field={text_field!r}: no such column in {name} (no row has it; {where} has keys: "
            f"{', '.join(map(str, keys)) or 'none'})"
        )
    return docs


def file_documents(files: list[Path], text_field: str, cache_root: Path, skips: Skips) -> list[Doc]:
    """One document per .txt file, one per row of JSON lines (see json_documents) and .parquet (``text_field``)."""
    docs: list[Doc] = []
    for path in files:
        name = _display(path)
        if path.suffix == ".txt":
            try:
                text = path.read_bytes().decode("utf-8")
            except UnicodeDecodeError:
                skips.add(f"{name}:undecodable", name)
                continue
            if text.strip():
                docs.append(Doc(name, name, name, text))
            else:
                skips.add(f"{name}:empty_text", name)
            continue
        if not path.name.endswith(".parquet"):
            docs.extend(json_documents(path, name, text_field, skips))
            continue
        try:
            with quiet_datasets():
                table = datasets.load_dataset(
                    "parquet", data_files=str(path), split="train", cache_dir=str(cache_root / "hf")
                )
        except Exception as e:  # datasets wraps parse errors in several exception types
            first_line = (str(e).strip().splitlines() or [""])[0]
            raise ConfigError(
                f"data.paths: cannot read {name} as parquet: {type(e).__name__}: {first_line}"
            ) from e
        if text_field not in table.column_names:
            raise ConfigError(
                f"data.text_field={text_field!r}: no such column in {name} (columns: {', '.join(table.column_names)})"
            )
        for row, text in enumerate(table[text_field]):
            if not isinstance(text, str):
                skips.add(f"{name}:not_text", f"{name}:{row}")
            elif not text.strip():
                skips.add(f"{name}:empty_text", f"{name}:{row}")
            else:
                docs.append(Doc(f"{name}:{row}", name, name, text))
    return docs


def _offline() -> bool:
    return any(
        os.environ.get(k, "").lower() in ("1", "true", "yes")
        for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def hub_documents(cfg: DataConfig, skips: Skips) -> list[Doc]:
    """The first ``max_docs`` rows of a hub split (streaming or downloaded into the Hugging Face cache)."""
    try:
        ds = datasets.load_dataset(
            cfg.hub_id, cfg.hub_config, split=cfg.hub_split, streaming=cfg.hub_streaming
        )
    except (ValueError, KeyError) as exc:  # a bad config or split name: datasets says which
        raise ConfigError(
            f"data.hub_id={cfg.hub_id} (hub_config={cfg.hub_config}, hub_split={cfg.hub_split}): {first_line(exc)}"
        ) from exc
    except Exception as exc:  # offline, unreachable, missing or gated: datasets raises several types
        offline = " (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set)" if _offline() else ""
        raise Unavailable(
            f"data.hub_id={cfg.hub_id}: cannot load split {cfg.hub_split!r} from the Hugging Face hub{offline}: "
            f"{type(exc).__name__}: {first_line(exc)}"
        ) from exc
    if cfg.max_docs is not None:
        ds = ds.take(cfg.max_docs) if cfg.hub_streaming else ds.select(range(min(cfg.max_docs, len(ds))))
    where = f"{cfg.hub_id}/{cfg.hub_config or 'default'}/{cfg.hub_split}"
    docs: list[Doc] = []
    for row, example in enumerate(ds):
        if cfg.text_field not in example:
            raise ConfigError(
                f"data.text_field={cfg.text_field!r}: no such column in {where} (columns: {', '.join(example)})"
            )
        text = example[cfg.text_field]
        if not isinstance(text, str) or not text.strip():
            skips.add(f"{cfg.hub_id}:empty_text", f"{cfg.hub_id}:{row}")
            continue
        docs.append(Doc(f"{cfg.hub_id}:{row}", cfg.hub_id, where, text))
    return docs


# ---------------------------------------------------------------------------------------------- the corpus


@dataclass
class Corpus:
    """A built corpus: the Dataset, its cache key, and statistics (sizes by source and split, skip reasons)."""

    dataset: datasets.Dataset
    key: str
    stats: dict[str, Any]
    path: Path | None  # the cache folder, None when built without a cache
    from_cache: bool


def corpus_spec(cfg: DataConfig) -> dict[str, Any]:
    """Every setting that determines the corpus content; its hash is the cache key."""
    spec: dict[str, Any] = {
        "format": CORPUS_FORMAT,
        "source": cfg.source,
        "max_docs": cfg.max_docs,
        "val_fraction": float(cfg.val_fraction),
        "split_salt": cfg.split_salt,
    }
    if cfg.source == "embedded":
        spec |= {
            "embedded_kinds": sorted(set(cfg.embedded_kinds)),
            "include_tests": bool(cfg.include_tests),
            "python": sys.version,
            "stdlib": str(stdlib_dir()),
        }
    elif cfg.source == "files":
        files = []
        for path in resolve_files(list(cfg.paths)):
            st = path.stat()
            files.append({"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        # reader 2: JSON lines read line by line with per-line reasons (json_documents), folders expanded
        spec |= {"files": files, "text_field": cfg.text_field, "reader": 2}
    else:
        spec |= {
            "hub_id": cfg.hub_id,
            "hub_config": cfg.hub_config,
            "hub_split": cfg.hub_split,
            "hub_streaming": bool(cfg.hub_streaming),
            "text_field": cfg.text_field,
        }
    return spec


def corpus_key(cfg: DataConfig) -> str:
    return spec_key(corpus_spec(cfg))


def _collect_documents(cfg: DataConfig, cache_root: Path, skips: Skips) -> tuple[list[Doc], Counter, int]:
    """Read the documents of the configured source (the expensive step a cache hit skips).

    Returns documents, counts of what was left out by design, and how many candidates were never read.
    """
    if cfg.source == "embedded":
        return embedded_documents(list(cfg.embedded_kinds), cfg.include_tests, skips, limit=cfg.max_docs)
    if cfg.source == "files":
        return file_documents(resolve_files(list(cfg.paths)), cfg.text_field, cache_root, skips), Counter(), 0
    return hub_documents(cfg, skips), Counter(), 0


def _build(
    cfg: DataConfig, cache_root: Path, require_splits: bool = True
) -> tuple[datasets.Dataset, dict[str, Any]]:
    start = time.perf_counter()
    skips = Skips()
    docs, excluded, unread = _collect_documents(cfg, cache_root, skips)
    ids = [d.id for d in docs]
    if len(set(ids)) != len(ids):
        dup = next(i for i, c in Counter(ids).items() if c > 1)
        raise ConfigError(f"data.source={cfg.source}: document id {dup!r} occurs twice")
    docs.sort(key=lambda d: (order_key(d.id), d.id))
    found = len(docs)
    if cfg.max_docs is not None:
        docs = docs[: cfg.max_docs]
    if not docs:
        raise ConfigError(
            f"data.source={cfg.source}: the corpus is empty (skipped: {dict(skips.counts) or 'none'}); add documents"
        )
    splits = [assign_split(d.group or d.id, cfg.val_fraction, cfg.split_salt) for d in docs]
    if require_splits and "validation" not in splits:
        raise ConfigError(
            f"data.val_fraction={cfg.val_fraction}: the validation split is empty ({len(docs)} documents); "
            "raise it or add documents"
        )
    if require_splits and "train" not in splits:
        raise ConfigError(
            f"data.val_fraction={cfg.val_fraction}: the training split is empty ({len(docs)} documents); "
            "lower it or add documents"
        )
    columns = {
        "id": [d.id for d in docs],
        "source": [d.source for d in docs],
        "path": [d.path for d in docs],
        "text": [d.text for d in docs],
        "split": splits,
    }
    dataset = datasets.Dataset.from_dict(columns)

    by_source: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(_SIZE_KEYS, 0))
    for d, split in zip(docs, splits, strict=True):
        suffix = "train" if split == "train" else "val"
        by_source[d.source][f"docs_{suffix}"] += 1
        by_source[d.source][f"bytes_{suffix}"] += len(d.text.encode("utf-8"))
    totals = {k: sum(s[k] for s in by_source.values()) for k in _SIZE_KEYS}
    stats = {
        **totals,
        "docs": len(docs),
        # left out by max_docs: documents, or for the lazily read embedded corpus, candidates never read
        "docs_capped": found - len(docs) + unread,
        "docs_skipped": sum(skips.counts.values()),
        "docs_skipped_reasons": dict(sorted(skips.counts.items())),
        "docs_skipped_examples": dict(sorted(skips.examples.items())),
        "excluded": dict(sorted(excluded.items())),  # by configuration, not failure
        "by_source": dict(sorted(by_source.items())),
        "build_seconds": round(time.perf_counter() - start, 3),
    }
    return dataset, stats


_SIZE_KEYS = ("docs_train", "docs_val", "bytes_train", "bytes_val")


def build_corpus(
    cfg: DataConfig,
    cache_root: str | Path | None = None,
    *,
    use_cache: bool = True,
    require_splits: bool = True,
) -> Corpus:
    """Build the corpus ``cfg`` describes, or load it from ``<cache_root>/corpus/<key>/``.

    ``cache_root`` defaults to ``resolve_path(cfg.cache_dir)``. Ordering is by a stable hash of the document id;
    ``max_docs`` keeps the first documents in that order (hub: the first rows of the split).
    ``require_splits=False`` (a source of a mixture) accepts a corpus with an empty train or validation split.
    """
    from workbench.data import validate_data

    validate_data(cfg)
    root = resolve_path(cache_root if cache_root is not None else cfg.cache_dir)
    key = corpus_key(cfg)
    folder = root / "corpus" / key
    if use_cache and (folder / "stats.json").is_file():
        dataset = datasets.load_from_disk(str(folder / "dataset"))
        stats = json.loads((folder / "stats.json").read_text())
        log.info("corpus %s: %d documents from cache %s", key[:12], len(dataset), folder)
        return Corpus(dataset, key, stats, folder, from_cache=True)

    log.info("corpus %s: building from data.source=%s ...", key[:12], cfg.source)
    dataset, stats = _build(cfg, root, require_splits)
    stats["corpus_key"] = key
    log.info(
        "corpus %s: %d documents (%d train / %d validation, %.1f MB), %d skipped, built in %.1fs",
        key[:12],
        stats["docs"],
        stats["docs_train"],
        stats["docs_val"],
        (stats["bytes_train"] + stats["bytes_val"]) / 1e6,
        stats["docs_skipped"],
        stats["build_seconds"],
    )
    if not use_cache:
        return Corpus(dataset, key, stats, None, from_cache=False)
    with atomic_dir(folder) as tmp, quiet_datasets():
        dataset.save_to_disk(str(tmp / "dataset"))
        (tmp / "stats.json").write_text(json.dumps(stats, indent=1, sort_keys=True))
    # Reload so the returned Dataset is memory-mapped from the cache, exactly as on a cache hit.
    return Corpus(datasets.load_from_disk(str(folder / "dataset")), key, stats, folder, from_cache=False)
