"""The install files agree with each other, and the kernels ship inside the kvlab package."""
from __future__ import annotations

import pathlib
try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _pyproject_requirements() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return set(project["dependencies"]) | set(extras["lab"]) | set(extras["test"])


def _environment_requirements(path: pathlib.Path) -> set[str]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    start = lines.index("- pip:")
    return {line[2:].strip() for line in lines[start + 1:] if line.startswith("- ")}


def test_environment_yml_pins_equal_pyproject_pins():
    assert _environment_requirements(ROOT / "environment.yml") == _pyproject_requirements()


def test_binder_environment_is_a_copy_of_environment_yml():
    assert (ROOT / "binder" / "environment.yml").read_text() == (ROOT / "environment.yml").read_text()


def test_torch_is_pinned_exactly():  # an open range pulls the newest CUDA build onto CPU machines
    assert any(req.startswith("torch==") for req in _pyproject_requirements())


def test_kernels_import_as_kvlab_kernels():
    import kvlab.kernels

    assert pathlib.Path(kvlab.kernels.__file__).parent == ROOT / "kernels"


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()


def test_committed_notebooks_carry_no_widget_state_and_stay_small():
    import json

    for path in sorted((ROOT / "notebooks").glob("[0-9]*.ipynb")):
        notebook = json.loads(path.read_text())
        assert "widgets" not in notebook["metadata"], f"{path.name}: run tools/strip_widget_state.py"
        assert path.stat().st_size < 3 * 2**20, f"{path.name} is {path.stat().st_size:,} bytes"


def test_every_kvlab_subpackage_and_its_data_ship_in_the_wheel():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {"kvlab." + ".".join(p.parent.relative_to(ROOT / "kvlab").parts)
               for p in (ROOT / "kvlab").rglob("__init__.py") if p.parent != ROOT / "kvlab"}
    assert on_disk - set(setuptools["packages"]) == set(), "add these to [tool.setuptools] packages"
    assert "CLAIMS.md" in setuptools["package-data"]["kvlab.claims"]  # the ledger reads it at run time
