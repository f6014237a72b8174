"""Drop saved widget state from executed notebooks before committing them, and name the kernel as Jupyter does.

papermill stores every widget's state in `metadata.widgets`; for plotly's FigureWidget that includes its
whole JavaScript bundle (~5 MB per notebook). Nothing needs it: JupyterLab rebuilds widgets when the cells
run, nbval ignores widget views, and each widget's first view is kept in its output by
kvlab.viz.show_with_first_view (for the docs site).

`metadata.kernelspec` is set to the installed python3 kernel's own (display name "Python 3 (ipykernel)"): JupyterLab
writes the running kernel's spec into the notebook when the kernel starts, and marks the notebook as modified if it
differs. `metadata.jupytext` (the filters jupytext records when `make notebooks` updates a notebook from its source)
goes too: notebooks/jupytext.toml says them. The file is written as Jupyter writes it (nbformat: sorted keys,
indent 1, sources split into lines).

    python tools/strip_widget_state.py notebooks/*.ipynb
"""
import json
import sys

import nbformat


def python3_kernelspec() -> dict:
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    return {"display_name": spec.display_name, "language": spec.language, "name": "python3"}


def strip(path: str, kernelspec: dict) -> int:
    notebook = nbformat.read(path, as_version=4)
    removed = len(json.dumps(notebook.metadata.pop("widgets", {})))
    notebook.metadata.pop("jupytext", None)
    notebook.metadata["kernelspec"] = kernelspec
    nbformat.write(notebook, path)
    return removed


if __name__ == "__main__":
    kernelspec = python3_kernelspec()
    for notebook_path in sys.argv[1:]:
        print(f"{notebook_path}: removed {strip(notebook_path, kernelspec):,} bytes of widget state")
