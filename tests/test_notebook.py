"""notebooks/docvqa.ipynb: stored without outputs, and every cell runs on the embedded default."""

import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "docvqa.ipynb")


def _code_cells():
    with open(NOTEBOOK) as f:
        return [c for c in json.load(f)["cells"] if c["cell_type"] == "code"]


def test_notebook_is_stored_without_outputs():
    cells = _code_cells()
    assert cells
    for i, cell in enumerate(cells):
        assert not cell["outputs"] and cell["execution_count"] is None, (
            f"code cell {i} of {NOTEBOOK} has outputs: clear them before committing "
            "(jupyter nbconvert --clear-output --inplace)")


def test_notebook_runs_on_the_embedded_default(tmp_path, monkeypatch):
    import nbclient  # the test extras; not skipped when missing: CI must run the notebook
    import nbformat

    out = tmp_path / "out"
    # A few steps on a small synthetic set (the settings cell reads PG_NOTEBOOK_SMOKE); the set
    # and the outputs go to tmp_path; the kernel imports this checkout's pg_jax.
    monkeypatch.setenv("PG_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("PG_NOTEBOOK_OUT", str(out))
    monkeypatch.setenv("PG_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    path = [ROOT, os.environ.get("PYTHONPATH")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in path if p))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}})
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    if os.environ.get("PG_NOTEBOOK_KEEP"):  # to read the outputs: PG_NOTEBOOK_KEEP=out.ipynb
        nbformat.write(nb, os.environ["PG_NOTEBOOK_KEEP"])

    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.outputs)
    assert "the embedded default" in text
    # The trainer's device line names the resolved attention next to the dtype.
    assert "compute float32 (auto: float32 on cpu), attention einsum (auto: float32 on cpu)" in text
    workdir = out / "pg_docvqa"
    with open(workdir / "summary.json") as f:
        assert json.load(f)["after"]["steps"] == 2
    with open(workdir / "docvqa_val_metrics.json") as f:
        metrics = json.load(f)
    assert 0 <= metrics["docvqa/val/anls"] <= 1 and metrics["docvqa/val/num"] == 8
    assert (workdir / "training_curve.png").stat().st_size > 0
    assert (workdir / "hf" / "config.json").exists()
    # The report is shown inline (an iframe holding the page thumbnails).
    html = [o["data"]["text/html"] for c in nb.cells if c.cell_type == "code"
            for o in c.outputs if "text/html" in o.get("data", {})]
    assert html and "data:image/png;base64" in html[0]
