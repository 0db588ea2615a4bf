"""Every notebook runs top to bottom in a fresh kernel (nbclient, as `jupyter nbconvert --execute` runs it) at
its default `SIZE = "ci"`, and shows what it is for: each cell tagged `plot` displays an image, and the cell
tagged `conclusion` displays Markdown sentences computed from the runs.

A notebook is a papermill-style study: one cell tagged `parameters` whose `SIZE` is "ci" (seconds to minutes,
what this test runs) or "full" (the study, at most 20 minutes on 2 cores).
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _tags(cell) -> list[str]:
    return list(cell.metadata.get("tags", []))


def test_every_notebook_is_a_parameterised_study():
    assert len(NOTEBOOKS) >= 5
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        (params,) = [c for c in nb.cells if "parameters" in _tags(c)]  # exactly one, for papermill
        assert re.search(r'^SIZE = "ci"$', params.source, re.M), f"{path.name}: parameters cell sets SIZE"
        assert any("plot" in _tags(c) for c in nb.cells), f"{path.name}: no cell tagged plot"
        assert [c for c in nb.cells if "conclusion" in _tags(c)], f"{path.name}: no cell tagged conclusion"
        assert nb.cells[0].cell_type == "markdown", f"{path.name}: starts with what it compares and why"


@pytest.mark.slow  # 3.5 minutes for the five on two workers: `make test-slow`, which CI runs
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_shows_its_plots_and_conclusion(path, monkeypatch):
    # One store for every notebook run (03's study resumes across runs, with its trials' MLflow runs here).
    (ROOT / ".cache").mkdir(exist_ok=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{ROOT / '.cache' / 'notebook-tests.db'}")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    for i, cell in enumerate(nb.cells):
        outputs = cell.get("outputs", [])
        if "plot" in _tags(cell):
            assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name} cell {i}: no image"
        if "conclusion" in _tags(cell):
            texts = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
            assert texts, f"{path.name} cell {i}: the conclusion displayed no Markdown"
            assert not re.search(r"\bnan\b", " ".join(texts)), f"{path.name} cell {i}: {texts}"
