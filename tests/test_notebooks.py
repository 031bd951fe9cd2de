"""Every notebook in nbs/ is a user journey: it must run top to bottom on a fresh kernel.
Notebooks are stored without outputs."""
import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NBS = sorted((Path(__file__).resolve().parent.parent / "nbs").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NBS, "nbs/ holds no notebooks"


@pytest.mark.parametrize("path", NBS, ids=[p.name for p in NBS])
def test_notebook_is_stored_without_outputs(path):
    nb = json.loads(path.read_text())
    dirty = [i for i, c in enumerate(nb["cells"])
             if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{path.name}: cells {dirty} have stored outputs"


@pytest.mark.slow
@pytest.mark.parametrize("path", NBS, ids=[p.name for p in NBS])
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    plot_cells = [c for c in nb.cells if c.cell_type == "code" and ".plot" in c.source]
    assert len(images) >= len(plot_cells), "each plotting cell shows its figure"
