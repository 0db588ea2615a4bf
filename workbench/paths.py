"""Where project-relative things live (caches, the MLflow store, run outputs)."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """$WORKBENCH_ROOT, else the checkout holding this package (it has conf/), else the working directory.

    Anchoring relative paths here means a notebook in notebooks/ and `python train.py` at the root share
    one data cache and one MLflow store.
    """
    env = os.environ.get("WORKBENCH_ROOT")
    if env:
        return Path(env).resolve()
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "conf" / "train.yaml").exists():
        return checkout
    return Path.cwd().resolve()


def resolve_path(path: str | os.PathLike) -> Path:
    """An absolute path, with relative ones taken from `project_root()`."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else project_root() / p
