"""Every notebook in nbs/ is a user journey: it must run top to bottom on a fresh kernel, every cell that draws
must show its figure, no cell may take longer than its budget, and the journey ends by asserting its key
numbers. Notebooks are stored without outputs."""
import json
import re
from datetime import datetime
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NBS = sorted((Path(__file__).resolve().parent.parent / "nbs").glob("*.ipynb"))
CELL_BUDGET_S = 180  # per cell; a cell may set its own in metadata {"time_budget": seconds}
DRAWS = re.compile(r"\.plot\b|\bplot_\w+\(|\.imshow\(")


def test_there_are_notebooks():
    assert NBS, "nbs/ holds no notebooks"


@pytest.mark.parametrize("path", NBS, ids=[p.name for p in NBS])
def test_notebook_is_stored_without_outputs_and_ends_with_assertions(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    dirty = [i for i, c in enumerate(nb["cells"])
             if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{path.name}: cells {dirty} have stored outputs"
    assert "assert " in "".join(code[-1]["source"]), f"{path.name}: the last cell asserts the journey's key numbers"


def seconds(cell) -> float:
    t = cell.metadata.get("execution", {})
    start, end = t.get("iopub.execute_input"), t.get("shell.execute_reply")
    if not (start and end):
        return 0.0
    parse = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


@pytest.mark.slow
@pytest.mark.parametrize("path", NBS, ids=[p.name for p in NBS])
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    cells = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    for i, c in enumerate(cells):
        if DRAWS.search(c.source):
            assert any("image/png" in o.get("data", {}) for o in c.outputs), \
                f"{path.name}, code cell {i} draws but shows no figure:\n{c.source}"
        budget = c.metadata.get("time_budget", CELL_BUDGET_S)
        assert seconds(c) <= budget, f"{path.name}, code cell {i} took {seconds(c):.0f} s (budget {budget} s)"
