"""Helpers for the scripts that write a notebook's cells (run them, then execute the notebook with papermill)."""
from __future__ import annotations

import pathlib

import nbformat

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[2] / "notebooks"


def md(text: str):
    return nbformat.v4.new_markdown_cell(text.strip("\n"))


def code(text: str, tags: list[str] | None = None):
    cell = nbformat.v4.new_code_cell(text.strip("\n"))
    if tags:
        cell.metadata["tags"] = tags
    return cell


def write(name: str, cells: list) -> pathlib.Path:
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    path = NOTEBOOKS / name
    nbformat.write(nb, path)
    return path
