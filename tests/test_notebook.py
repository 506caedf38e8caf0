"""The tutorial notebook runs top to bottom (small draws, built-in data) and is stored without outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "dragons.ipynb"


def _read():
    import nbformat

    return nbformat.read(NOTEBOOK, as_version=4)


def test_notebook_is_stored_without_outputs():
    nb = _read()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("BAYESLMM_NOTEBOOK_DRAWS", "200")
    monkeypatch.setenv("BAYESLMM_NOTEBOOK_CACHE", str(tmp_path / "fits"))
    monkeypatch.delenv("BAYESLMM_DRAGONS", raising=False)  # the built-in data: the same on every machine
    nb = _read()
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 20  # every figure shown once (figures are built outside pyplot)
    texts = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "bodyLength2: posterior mean" in texts and "chi-squared" in texts
