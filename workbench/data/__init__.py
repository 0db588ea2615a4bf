"""Data: a corpus of documents (or a filtered mixture of sources), a tokenizer, and the Lightning DataModule
that packs them into batches.

`validate_data` is the data slice's rules; the rest is imported lazily so that checking a config does not
import Lightning.
"""

from __future__ import annotations

from typing import Any

from workbench.config import ConfigError, check_fields
from workbench.config.schema import DataConfig


def validate_data(d: DataConfig) -> None:
    """The `data` slice's rules, before any document is read; a mixture checks its sources and filters."""
    check_fields(d, "data")
    if d.source == "embedded" and not d.embedded_kinds:
        raise ConfigError("data.embedded_kinds is empty; choose from: code, prose")
    if d.source == "files" and not d.paths:
        raise ConfigError(
            "data.paths is empty; data.source=files needs at least one .jsonl/.json/.parquet/.txt path"
        )
    if d.source == "files":
        from workbench.data.corpus import resolve_files

        # every path names a file (or a pattern matches one): caught before any work
        resolve_files(list(d.paths))
    if d.source == "hub" and not d.hub_id:
        raise ConfigError("data.hub_id is not set; data.source=hub needs a Hugging Face dataset id")
    if d.source == "mixture":
        from workbench.data.mixture import validate_mixture  # sources and filters by name, nothing built

        validate_mixture(d)


_LAZY = {
    "Corpus": "workbench.data.corpus",
    "build_corpus": "workbench.data.corpus",
    "corpus_key": "workbench.data.corpus",
    "LMDataModule": "workbench.data.datamodule",
    "BPETokenizer": "workbench.data.tokenizer",
    "ByteTokenizer": "workbench.data.tokenizer",
    "Tokenizer": "workbench.data.tokenizer",
    "build_tokenizer": "workbench.data.tokenizer",
    "load_tokenizer": "workbench.data.tokenizer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'workbench.data' has no attribute {name!r}")


__all__ = ["validate_data", *_LAZY]
