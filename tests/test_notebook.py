"""docs/quickstart.ipynb runs top to bottom (nbclient, a real Jupyter kernel), and every analysis result in it
displays as HTML (its tables and readings) and its ``plot()`` as inline images."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "quickstart.ipynb"


def test_quickstart_notebook_runs_and_shows_results(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(NOTEBOOK.parents[1]), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("WIDTHKIT_QUIET", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises on any error
    cells = [c for c in nb.cells if c.cell_type == "code"]
    shown = {c.source.split()[0]: c.outputs for c in cells if c.outputs}
    for name in ("eb", "tr", "atlas", "hess"):
        html = shown[name][-1]["data"]["text/html"]          # the result: its readings and tables
        assert "<table>" in html and "<li>" in html, name
        plot = shown[f"{name}.plot()"][-1]["data"]["text/html"]
        assert plot.count("<img src=\"data:image/png;base64,") >= 1, name
    assert shown["hess"][-1]["data"]["text/html"].count("<tr>") == 3  # header + the two widths asked for
    assert (tmp_path / "runs" / "quickstart-notebook" / "report.html").stat().st_size > 10_000
