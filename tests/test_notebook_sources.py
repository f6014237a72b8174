"""Every executed notebook has its source as text, and the two hold the same cells.

notebooks/NN_name.ipynb (outputs committed) is paired with notebooks/src/NN_name.py (py:percent, by
notebooks/jupytext.toml); `make notebooks NB=NN` updates the notebook from its source and re-executes it. A source
edited without re-executing, or a notebook edited without its source, leaves the two with different cells: the
diff a reviewer reads would not be what runs. Compared: each cell's type, its source and its metadata (tags such
as papermill's `parameters`), leaving out the run records that stay in the .ipynb only.
"""
from __future__ import annotations

import pathlib
import shutil

import pytest

jupytext = pytest.importorskip("jupytext")  # the lab extra

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NAME_GLOB = "[0-9][0-9]_*"
RUN_RECORDS = ("papermill", "execution")  # cell metadata that papermill writes into the .ipynb alone


def cell_contents(notebook) -> list[tuple[str, str, dict]]:
    """(type, source, metadata) per cell; the run records and empty tags left out."""
    contents = []
    for cell in notebook.cells:
        metadata = {key: value for key, value in cell.metadata.items() if key not in RUN_RECORDS}
        if not metadata.get("tags", True):
            del metadata["tags"]
        contents.append((cell.cell_type, cell.source, metadata))
    return contents


def first_difference(executed: list, source: list) -> str:
    for index, (in_notebook, in_source) in enumerate(zip(executed, source)):
        if in_notebook != in_source:
            what = "type" if in_notebook[0] != in_source[0] else "source" if in_notebook[1] != in_source[1] else "metadata"
            return f"cell {index} differs in its {what}: {in_notebook[1][:60]!r} vs {in_source[1][:60]!r}"
    return f"{len(executed)} cells vs {len(source)}"


def pairing_problems(notebooks: pathlib.Path) -> list[str]:
    """What keeps `notebooks`' NN_*.ipynb and src/NN_*.py from being the same notebooks, one line each."""
    executed = {path.stem: path for path in notebooks.glob(f"{NAME_GLOB}.ipynb")}
    sources = {path.stem: path for path in (notebooks / "src").glob(f"{NAME_GLOB}.py")}
    problems = [f"{name}.ipynb has no source src/{name}.py" for name in sorted(executed.keys() - sources.keys())]
    problems += [f"src/{name}.py has no executed {name}.ipynb (make notebooks NB={name[:2]})"
                 for name in sorted(sources.keys() - executed.keys())]
    for name in sorted(executed.keys() & sources.keys()):
        in_notebook = cell_contents(jupytext.read(executed[name]))
        in_source = cell_contents(jupytext.read(sources[name]))
        if in_notebook != in_source:
            problems.append(f"{name}: {first_difference(in_notebook, in_source)} "
                            f"(edit src/{name}.py, then make notebooks NB={name[:2]})")
    return problems


def test_every_notebook_and_its_source_hold_the_same_cells():
    assert sorted(NOTEBOOKS.glob(f"{NAME_GLOB}.ipynb")), "no notebooks found"
    assert pairing_problems(NOTEBOOKS) == []


@pytest.fixture
def notebooks_copy(tmp_path) -> pathlib.Path:
    copy = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOKS, copy, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    return copy


def _a_notebook(notebooks: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """Notebook 01 (it has a parameters cell) and its source, in the copy."""
    return notebooks / "01_why_kv_cache.ipynb", notebooks / "src" / "01_why_kv_cache.py"


def test_a_source_edited_without_re_executing_is_caught(notebooks_copy):
    _, source = _a_notebook(notebooks_copy)
    source.write_text(source.read_text().replace("\n# %%\n", "\n# %%\nprint('new line')\n", 1))
    assert any("differs in its source" in problem for problem in pairing_problems(notebooks_copy))


def test_a_notebook_edited_without_its_source_is_caught(notebooks_copy):
    notebook, _ = _a_notebook(notebooks_copy)
    edited = jupytext.read(notebook)
    edited.cells[0].source += "\nOne more sentence."
    jupytext.write(edited, notebook)
    assert any("cell 0 differs in its source" in problem for problem in pairing_problems(notebooks_copy))


def test_a_lost_parameters_tag_is_caught(notebooks_copy):
    notebook, _ = _a_notebook(notebooks_copy)
    edited = jupytext.read(notebook)
    tagged = next(cell for cell in edited.cells if "parameters" in cell.metadata.get("tags", []))
    tagged.metadata["tags"] = [tag for tag in tagged.metadata["tags"] if tag != "parameters"]
    jupytext.write(edited, notebook)
    assert any("differs in its metadata" in problem for problem in pairing_problems(notebooks_copy))


def test_a_notebook_without_a_source_and_a_source_without_a_notebook_are_caught(notebooks_copy):
    notebook, source = _a_notebook(notebooks_copy)
    source.rename(source.with_name("99_orphan.py"))
    problems = pairing_problems(notebooks_copy)
    assert f"{notebook.stem}.ipynb has no source src/{notebook.stem}.py" in problems
    assert any(problem.startswith("src/99_orphan.py has no executed") for problem in problems)
