"""notebooks/fruitpipe_walkthrough.ipynb runs top to bottom (nbclient), and what it shows is right."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "fruitpipe_walkthrough.ipynb"


def test_notebook_is_saved_without_outputs() -> None:
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)


def test_walkthrough_runs_top_to_bottom(tmp_path: Path, monkeypatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("FRUITPIPE_WALKTHROUGH_DIR", str(tmp_path))
    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    src = str(Path(__file__).resolve().parents[1] / "src")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # a cell that raises fails execute() with CellExecutionError (allow_errors is False)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
                   ).execute()
    assert any(output.get("output_type") == "display_data" and "image/png" in output.get("data", {})
               for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs), "no scree plot"
    printed = [line for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
               for line in output.get("text", "").splitlines() if line.startswith('{"k"')]
    summary = json.loads(printed[-1])

    # k: the smallest number of components reaching 95% of the variance, recomputed with numpy from the
    # run's raw features of the same photos
    features = pq.read_table(Path(summary["run_output"]) / "features").to_pydict()
    matrix = np.asarray([f for f, view in zip(features["features"], features["view"], strict=True) if view == 0])
    eigenvalues = np.clip(np.linalg.eigvalsh(np.cov(matrix, rowvar=False)), 0, None)[::-1]
    k = int(np.searchsorted(np.cumsum(eigenvalues) / eigenvalues.sum(), 0.95 - 1e-9) + 1)
    assert summary["k"] == k

    # the predicted class: a direct call of the bundle's arrays on the photo
    from fruitpipe.recognise.bundle import Bundle

    bundle = Bundle.load(summary["model_dir"])
    probabilities = bundle.probabilities([Path(summary["photo"]).read_bytes()])[0]
    assert summary["predicted"] == bundle.classes[int(np.argmax(probabilities))]

    # drift: the verdict shown is the one written to drift.json, and the same photos in black and white are drift
    from fruitpipe.monitor import drift
    from fruitpipe.storage import Store

    written, png = drift.load(Store(), summary["drift_output"])
    assert summary["drift_status"] == written.status == "drift", written.reasons
    assert png.startswith(b"\x89PNG")
