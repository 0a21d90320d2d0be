"""Every notebook in notebooks/ runs top to bottom on embedded data (nbclient, a fresh kernel, a temporary
working folder) and shows at least one figure inline, so none can rot. Notebooks are committed without
outputs (checked here too). Their times on an idle machine are in benchmarks/RESULTS.md
(benchmarks/notebooks.py); the budget is 2 minutes each on 2 cores."""

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks_and_they_are_committed_without_outputs():
    assert NOTEBOOKS
    for nb in NOTEBOOKS:
        cells = json.loads(nb.read_text())["cells"]
        assert cells[0]["cell_type"] == "markdown", nb.name
        for c in cells:
            if c["cell_type"] == "code":
                assert not c.get("outputs") and c.get("execution_count") is None, f"{nb.name} has outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_shows_its_figures(path, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VISLAB_PROGRESS", "0")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    images = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                 if "image/png" in o.get("data", {}))
    assert images >= 1, f"{path.name} displayed no figure"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
