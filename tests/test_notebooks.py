"""The tutorials in ``notebooks/``: committed without outputs, and each runs top to bottom (at its smoke size).

The notebooks run in a Jupyter kernel of this very interpreter (``ipykernel``'s ``python3`` kernelspec, which
``jupyter_client`` launches with ``sys.executable``), importing the ``lightning_meta`` of this checkout, with the
working directory in a temporary folder so that their ``outputs/`` never lands in the repository.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbclient
import nbformat
import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPOSITORY / "notebooks").glob("*.ipynb"))


def test_the_three_tutorials_are_there():
    assert [path.name for path in NOTEBOOKS] == [
        "01_quickstart.ipynb", "02_leap_vs_reptile.ipynb", "03_learned_optimizers.ipynb"
    ]


def cells_with_outputs(notebook: dict) -> list[int]:
    """Indices of the code cells that carry outputs or an execution count."""
    code_cells = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    return [i for i, cell in enumerate(code_cells) if cell.get("outputs") or cell.get("execution_count") is not None]


def test_the_output_check_sees_outputs_and_counts():
    clean = nbformat.v4.new_code_cell("1 + 1")
    counted = nbformat.v4.new_code_cell("1 + 1", execution_count=3)
    printed = nbformat.v4.new_code_cell("print(2)", outputs=[nbformat.v4.new_output("stream", text="2\n")])
    notebook = nbformat.v4.new_notebook(cells=[clean, nbformat.v4.new_markdown_cell("text"), counted, printed])
    assert cells_with_outputs(notebook) == [1, 2]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_committed_notebook_has_no_outputs(path: Path):
    """Outputs (figures, logs, numbers of one machine) and execution counts stay out of git."""
    notebook = json.loads(path.read_text())
    assert any(cell["cell_type"] == "code" for cell in notebook["cells"]), f"{path.name} has no code"
    dirty = cells_with_outputs(notebook)
    assert not dirty, (
        f"{path.name}: code cells {dirty} have outputs or execution counts; clear them before committing "
        "(JupyterLab or VS Code: 'Clear All Outputs', then save)"
    )


def kernel_environment(glyph_root: str) -> dict[str, str]:
    """The kernel imports this checkout's package, runs at smoke size and shares the session's glyph cache.

    One thread per kernel: the smoke-sized models gain nothing from more, and lose a lot when the cores are shared.
    """
    path = os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))
    return {
        **os.environ, "PYTHONPATH": path, "LIGHTNING_META_NOTEBOOK_SMOKE": "1", "LIGHTNING_META_CACHE": glyph_root,
        "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1",
    }


PROBE = "import os, sys, lightning_meta\nprint(sys.executable, lightning_meta.__file__, os.getcwd(), sep='\\n')"
"""Appended to every notebook run: which interpreter, which package and which working directory the kernel had."""


def files_under(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if "__pycache__" not in path.parts}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_top_to_bottom(path: Path, glyph_root: str, tmp_path: Path):
    repository_files = files_under(REPOSITORY / "notebooks")
    notebook = nbformat.read(path, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(PROBE))
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    executed = client.execute(env=kernel_environment(glyph_root))  # raises CellExecutionError on the first error

    code_cells = [cell for cell in executed.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code_cells)
    figures = [output for cell in code_cells for output in cell.outputs if "image/png" in output.get("data", {})]
    assert figures, f"{path.name} showed no figure inline"
    executable, package, cwd = code_cells[-1].outputs[0]["text"].split()
    assert Path(executable).resolve() == Path(sys.executable).resolve(), "the kernel is not this interpreter"
    assert Path(package).resolve() == REPOSITORY / "lightning_meta" / "__init__.py", "the kernel imported another copy"
    assert Path(cwd).resolve() == tmp_path.resolve()
    assert files_under(REPOSITORY / "notebooks") == repository_files, "the notebook wrote into the repository"
    assert (tmp_path / "outputs" / "notebooks" / path.stem).is_dir(), "logs and figures belong under outputs/"
