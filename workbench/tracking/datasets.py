"""The training corpus as an `mlflow.data` dataset: what the MLflow UI lists in a run's Datasets column.

Its digest is the corpus content key (`workbench.data.datamodule`: a hash of the documents and the split), so two
runs on the same text show the same dataset however it was configured; its profile holds the counts.
"""

from __future__ import annotations

import json
import os
from typing import Any

from workbench.config.schema import DataConfig

# MLflow stores a dataset digest in a 36-character column; the content key's first 16 hex digits identify it
# (the whole key is in the profile).
DIGEST_CHARS = 16


def corpus_dataset(data: DataConfig, stats: dict[str, Any]):
    """An `mlflow.data.meta_dataset.MetaDataset` (with a profile) for the corpus that `data` describes."""
    from mlflow.data.meta_dataset import MetaDataset

    class CorpusDataset(MetaDataset):
        # MetaDataset carries no profile; the UI shows this one beside the digest.
        def __init__(self, profile: dict[str, Any], **kwargs) -> None:
            super().__init__(**kwargs)
            self._profile = profile

        @property
        def profile(self) -> dict[str, Any]:
            return self._profile

        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), "profile": json.dumps(self._profile)}

    name, source = _name_and_source(data)
    profile = {
        "documents": stats["docs"],
        "documents_train": stats["docs_train"],
        "documents_val": stats["docs_val"],
        "tokens_train": stats["tokens_train"],
        "tokens_val": stats["tokens_val"],
        "tokenizer": stats["tokenizer"],
        "content_key": stats["corpus_key"],
    }
    return CorpusDataset(profile, source=source, name=name, digest=stats["corpus_key"][:DIGEST_CHARS])


def _name_and_source(data: DataConfig) -> tuple[str, Any]:
    from mlflow.data.sources import CodeDatasetSource, HuggingFaceDatasetSource, LocalArtifactDatasetSource

    kind = str(data.source)
    if kind == "hub":
        split = data.hub_split
        return f"{data.hub_id}:{split}", HuggingFaceDatasetSource(
            path=str(data.hub_id), config_name=data.hub_config, split=split
        )
    if kind == "files":
        paths = [os.path.abspath(p) for p in data.paths]
        root = os.path.commonpath(paths) if paths else "."
        return f"files:{os.path.basename(root) or root}", LocalArtifactDatasetSource(root)
    if kind == "mixture":
        sources = {name: str(src.kind) for name, src in data.mixture.sources.items()}
        return "mixture:" + "+".join(sources), CodeDatasetSource({"workbench.mixture": json.dumps(sources)})
    kinds = "+".join(str(k) for k in data.embedded_kinds)
    return f"embedded:{kinds}", CodeDatasetSource({"workbench.corpus": f"embedded {kinds}"})
