"""The quickstart notebook, run top to bottom by a real Jupyter kernel."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "quickstart.ipynb"


def _text(cell: dict) -> str:  # type: ignore[type-arg]
    parts = []
    for out in cell.get("outputs", []):
        if "text" in out:
            parts.append(out["text"])
        data = out.get("data", {})
        parts.append(data.get("text/html", ""))
        parts.append(data.get("text/plain", ""))
    return "".join(parts)


def test_quickstart_notebook_runs_and_its_answers_are_right(tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    text = "\n".join(_text(c) for c in code)
    assert "2 workers, 2 threads" in _text(code[0])  # the client's HTML view
    total, sync = re.search(r"array total ([\d.]+), sync ([\d.]+)", text).groups()  # type: ignore[union-attr]
    assert total == sync
    assert "groupby equals pandas: True" in text
    assert "futures total 5050" in text
    assert "first three [1, 2, 3]" in text
    assert "sql equals pandas: True" in text
    rows, want = re.search(r"rows over 5000: (\d+) pandas: (\d+)", text).groups()  # type: ignore[union-attr]
    assert rows == want == "4999"
