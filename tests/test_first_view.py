"""kvlab.viz.first_view: a widget displayed with its first view, for the docs site (tools/build_docs.py).

The helper walks a widget's view for its FigureWidgets (display order, hidden boxes skipped) and adds their figures
to the widget's own mime bundle under FIRST_VIEW_MIME, with no text form of its own. First on small made-up widget
trees, then on each lab the notebooks display (03 fragmentation, 04 prefix block tables, 05 quantization,
06 roofline, 08/09 serving, 10 speculative), built on the real model with small settings: the helper must find
exactly the FigureWidgets each lab draws into.
"""
from __future__ import annotations

import base64
import importlib.util
import json
import pathlib
import sys
from unittest import mock

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
import pytest

from kvlab.model.config import LlamaConfig
from kvlab.viz import first_view
from kvlab.viz.first_view import FIRST_VIEW_MIME, figure_widgets, first_view_bundle, show_with_first_view

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
ROOT = pathlib.Path(__file__).resolve().parents[1]


def bar(*y) -> go.FigureWidget:
    return go.FigureWidget(go.Figure(go.Bar(y=list(y))))


def drawn(bundle: dict) -> list[list]:
    """Each first-view figure's first trace's y values."""
    return [list(figure["data"][0]["y"]) for figure in bundle[FIRST_VIEW_MIME]["figures"]]


# ---------------------------------------------------------------- made-up widget trees

def test_figure_widgets_are_found_depth_first_in_display_order():
    a, b, c, d = bar(1), bar(2), bar(3), bar(4)
    view = widgets.VBox([widgets.HTML("title"), a, widgets.HBox([widgets.VBox([b]), widgets.Button(), c]), d])
    assert list(figure_widgets(view)) == [a, b, c, d]
    assert list(figure_widgets(a)) == [a]
    assert list(figure_widgets(widgets.VBox([widgets.Button()]))) == []


def test_a_box_hidden_with_display_none_is_skipped_with_its_figures():
    shown, hidden = bar(1), bar(2)
    box = widgets.VBox([hidden])
    box.layout.display = "none"
    assert list(figure_widgets(widgets.VBox([box, shown]))) == [shown]
    box.layout.display = None
    assert list(figure_widgets(widgets.VBox([box, shown]))) == [hidden, shown]


def test_the_bundle_is_the_widgets_own_plus_its_figures_as_plain_json():
    view = widgets.VBox([bar(1, 2), go.FigureWidget(go.Figure(go.Heatmap(z=np.arange(6).reshape(2, 3))))])
    bundle = first_view_bundle(view)
    own = view._repr_mimebundle_()
    assert set(bundle) == {WIDGET_MIME, "text/plain", FIRST_VIEW_MIME}
    assert bundle[WIDGET_MIME] == own[WIDGET_MIME] and bundle["text/plain"] == own["text/plain"]
    figures = json.loads(json.dumps(bundle[FIRST_VIEW_MIME]))["figures"]  # JSON all the way down
    assert [f["data"][0]["type"] for f in figures] == ["bar", "heatmap"] and set(figures[0]) >= {"data", "layout"}
    assert figures[0]["data"][0]["y"] == [1, 2]
    z = figures[1]["data"][0]["z"]  # a numpy array: plotly.js's typed-array spec, as in any plotly output
    decoded = np.frombuffer(base64.b64decode(z["bdata"]), dtype=z["dtype"]).reshape(2, 3)
    assert decoded.tolist() == [[0, 1, 2], [3, 4, 5]]


def test_the_first_view_is_what_the_figure_shows_now_not_what_it_was_made_with():
    view = widgets.VBox([bar(1, 2)])
    view.children[0].data[0].y = [5, 6, 7]
    assert drawn(first_view_bundle(view)) == [[5, 6, 7]]


def test_explicit_figures_replace_the_walk_and_a_widget_without_figures_has_an_empty_first_view():
    view = widgets.VBox([bar(1)])
    assert drawn(first_view_bundle(view, [go.Figure(go.Bar(y=[9]))])) == [[9]]
    assert first_view_bundle(widgets.VBox([widgets.Button()]))[FIRST_VIEW_MIME] == {"figures": []}


def test_a_lab_is_shown_by_its_widget_and_anything_else_is_refused():
    class Lab:
        def __init__(self):
            self.widget = widgets.VBox([bar(3)])

    lab = Lab()
    assert first_view_bundle(lab)[WIDGET_MIME] == lab.widget._repr_mimebundle_()[WIDGET_MIME]
    assert drawn(first_view_bundle(lab)) == [[3]]
    with pytest.raises(TypeError, match="neither an ipywidget nor a lab"):
        first_view_bundle(object())


def test_show_with_first_view_displays_one_raw_output_carrying_both():
    view = widgets.VBox([bar(1)])
    with mock.patch.object(first_view, "display") as display:
        show_with_first_view(view)
    (bundle,), options = display.call_args
    assert display.call_count == 1 and options == {"raw": True}
    assert bundle == first_view_bundle(view)


def test_the_docs_build_reads_the_same_mime_type():
    build_docs = sys.modules.get("build_docs")  # tests/test_docs_site.py loads it under this name
    if build_docs is None:
        spec = importlib.util.spec_from_file_location("build_docs", ROOT / "tools" / "build_docs.py")
        build_docs = sys.modules["build_docs"] = importlib.util.module_from_spec(spec)  # tools/ is not a package
        spec.loader.exec_module(build_docs)
    assert build_docs.FIRST_VIEW_MIME == FIRST_VIEW_MIME


# ---------------------------------------------------------------- the labs the notebooks display

TINY = LlamaConfig(name="tiny", num_layers=2, hidden_size=64, ffn_size=128, num_heads=4, num_kv_heads=2, head_dim=16,
                   vocab_size=100, context_len=128, rope_base=10000.0, rms_eps=1e-5, tied_embeddings=True,
                   bos_token_id=1, eos_token_id=2)


def assert_first_view_is(lab_or_view, expected: list[go.FigureWidget]) -> None:
    view = first_view.view_of(lab_or_view)
    assert expected and list(figure_widgets(view)) == expected
    figures = first_view_bundle(lab_or_view)[FIRST_VIEW_MIME]["figures"]
    assert len(figures) == len(expected)
    for figure, widget in zip(figures, expected):
        assert [t["type"] for t in figure["data"]] == [t.type for t in widget.data]
        assert figure["layout"].get("title") == json.loads(widget.layout.to_json()).get("title")


def test_fragmentation_lab_03_first_view_is_its_four_plots():
    from kvlab.viz.fragmentation_widget import fragmentation_lab

    panel = fragmentation_lab(num_requests=20)
    assert len(panel.figures) == 4 and all(f.data for f in panel.figures)
    assert_first_view_is(panel, list(panel.figures))


def test_prefix_block_table_lab_04_first_view_is_its_pool_and_radix_tree():
    from kvlab.viz.block_table_widget import block_table_lab

    lab = block_table_lab(TINY, num_blocks=16, block_size=4, layout="prefix", initial_requests=[("a:8+2", 1), "a:8+3"])
    assert_first_view_is(lab, [lab.pool_view, lab.radix_view])


def test_quantization_lab_05_first_view_is_its_four_plots(model, tokenizer):
    from kvlab.viz.quant_widget import quantization_lab

    # measure=False: the notebook measures first (18 s here), which only changes what the same four plots show
    lab = quantization_lab(model, tokenizer, measure=False, new_tokens=4, ppl_windows=1, ppl_tokens=32)
    assert_first_view_is(lab, [lab.memory_view, lab.error_view, lab.absmax_view, lab.accuracy_view])


def test_roofline_lab_06_first_view_is_its_roofline_with_the_measured_points(model):
    from kvlab.bench.roofs import device_roofs
    from kvlab.viz.roofline_widget import roofline_lab

    lab = roofline_lab(model, device_roofs(model.device), batches=(1,), contexts=(16,), prompt_lens=(8,),
                       batch=1, context=16, prompt_len=8)
    assert_first_view_is(lab, [lab.figure])
    names = {t["name"] for t in first_view_bundle(lab)[FIRST_VIEW_MIME]["figures"][0]["data"]}
    assert {"prefill", "decode", "attention"} <= names


def test_serving_lab_08_09_first_view_is_its_six_plots_after_the_run(model, tokenizer):
    from kvlab.viz.serving_widget import ServingLab

    from kvlab.engine import Request

    lab = ServingLab(model, tokenizer, requests_fn=lambda n, rate: [Request("Once upon a time", 3) for _ in range(n)],
                     num_requests=2, num_blocks=8, step_s=1.0)
    assert_first_view_is(lab, list(lab._views()))
    assert len(lab._views()) == 6


def test_spec_lab_10_first_view_is_its_three_plots_after_the_run(model, tokenizer):
    from kvlab.viz.spec_widget import SpecLab

    lab = SpecLab(model, tokenizer, drafter="ngram", k=2, prompt="quote a passage", new_tokens=4)
    assert_first_view_is(lab, list(lab.views))
    assert len(lab.views) == 3
