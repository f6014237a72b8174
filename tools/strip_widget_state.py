"""Drop saved widget state from executed notebooks before committing them.

papermill stores every widget's state in `metadata.widgets`; for plotly's FigureWidget that includes its
whole JavaScript bundle (~5 MB per notebook). Nothing needs it: JupyterLab rebuilds widgets when the cells
run, nbval ignores widget views, and each widget's first view is also a plain plotly figure in the outputs.

    python tools/strip_widget_state.py notebooks/*.ipynb
"""
import json
import sys


def strip(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        notebook = json.load(f)
    removed = len(json.dumps(notebook["metadata"].pop("widgets", {})))
    with open(path, "w", encoding="utf-8") as f:
        json.dump(notebook, f, indent=1, ensure_ascii=False)
        f.write("\n")
    return removed


if __name__ == "__main__":
    for notebook_path in sys.argv[1:]:
        print(f"{notebook_path}: removed {strip(notebook_path):,} bytes of widget state")
