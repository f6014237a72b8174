"""Display a widget together with its first view, for readers without a kernel (the docs site, tools/build_docs.py).

A widget view cannot draw without the kernel that holds its state, and that state is stripped before the notebooks
are committed. `show_with_first_view(lab)` displays one output whose mime bundle holds the widget view, its text
form, and — under FIRST_VIEW_MIME — the plotly figures the widget shows right now:

    {"application/vnd.jupyter.widget-view+json": {...}, "text/plain": "VBox(...)",
     "application/vnd.kvlab.first-view+json": {"figures": [{"data": [...], "layout": {...}}, ...]}}

JupyterLab renders the richest type it has a renderer for (the widget) and ignores the rest: nothing else shows in
the notebook. The docs build draws the figures where the widget was. Displayed on its own, an output with only an
unknown type would show JupyterLab's "No renderer could be found for output" box, so the figures ride along in the
widget's own bundle rather than in a sibling output.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

import ipywidgets as widgets
import plotly.graph_objects as go
import plotly.io as pio
from IPython.display import display

FIRST_VIEW_MIME = "application/vnd.kvlab.first-view+json"


def view_of(lab) -> widgets.Widget:
    """The ipywidget itself, or a lab's `.widget` (BlockTableLab, QuantizationLab, RooflineLab, ServingLab, SpecLab)."""
    view = lab if isinstance(lab, widgets.Widget) else getattr(lab, "widget", None)
    if not isinstance(view, widgets.Widget):
        raise TypeError(f"{type(lab).__name__} is neither an ipywidget nor a lab with a .widget")
    return view


def figure_widgets(view: widgets.Widget) -> Iterator[go.FigureWidget]:
    """Every FigureWidget on screen in `view`, in display order: `children` walked depth first; a box hidden with
    layout.display = "none" is skipped with everything in it."""
    if isinstance(view, go.FigureWidget):  # its .layout is plotly's, not an ipywidgets Layout
        yield view
        return
    if getattr(getattr(view, "layout", None), "display", None) == "none":
        return
    for child in getattr(view, "children", ()):
        yield from figure_widgets(child)


def figure_json(figure: go.Figure | go.FigureWidget) -> dict:
    """{"data": [...], "layout": {...}} as plotly.io writes it for plotly.js (numpy arrays as typed-array specs)."""
    return json.loads(pio.to_json(figure, validate=False))


def first_view_bundle(lab, figures: Iterable[go.Figure] | None = None) -> dict:
    """The widget's mime bundle plus FIRST_VIEW_MIME: `figures`, or else every FigureWidget in its view (an empty
    list when it has none yet)."""
    view = view_of(lab)
    bundle = dict(view._repr_mimebundle_())
    shown = list(figure_widgets(view)) if figures is None else list(figures)
    bundle[FIRST_VIEW_MIME] = {"figures": [figure_json(figure) for figure in shown]}
    return bundle


def show_with_first_view(lab, figures: Iterable[go.Figure] | None = None) -> None:
    """Display `lab` (an ipywidget or a lab with `.widget`) as one output that also carries its first view."""
    display(first_view_bundle(lab, figures), raw=True)
