"""Shared fixtures: every test runs offline, with its own MLflow store and output folder."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> str:
    """One corpus/tokenizer cache for the whole session: built once, then every run loads it."""
    return str(tmp_path_factory.mktemp("data-cache"))


@pytest.fixture
def debug_overrides(tmp_path, data_cache, tracking_uri) -> list[str]:
    """Overrides that keep a run small, private to this test, and out of the project's MLflow store."""
    return [f"output_dir={tmp_path / 'out'}", f"data.cache_dir={data_cache}", "trainer.progress_bar=false"]
