"""The roofline lab: pick a batch, a context and a prompt length, press measure, and see where the real model's
prefill step, its decode step and decode attention alone land under this device's measured roofs.

Every press measures three new points (kvlab.bench.roofline) and adds them to the plot; earlier presses stay,
so a sweep builds up point by point. On a CPU a "weights" toggle picks what the steps read: the float32
weights, or the GGUF file's 4-/8-bit blocks (same weights, 5.6× fewer bytes: the decode point moves right).
The widget reads measurements; it computes no time itself.
"""
from __future__ import annotations

import html

import ipywidgets as widgets
import plotly.graph_objects as go

from kvlab.bench.roofline import measure_attention, measure_decode, measure_prefill

from .roofline_figures import duration, roofline_figure

ERROR_COLOUR = "#b00020"
PLOT_WIDTH_PX = 900  # plotly's default is 700; autosize leaves a FigureWidget inside a VBox at 700
WEIGHTS = {"float32": "the float32 weights (what HF transformers reads)",
           "GGUF blocks": "the GGUF file's blocks (4-bit layers, 8-bit lm_head): the same weights in 5.6x fewer bytes"}


def describe(point, roofs) -> str:
    bound = roofs.attainable_flops_per_s(point.intensity)
    side = "bandwidth-bound side" if point.intensity < roofs.ridge_flop_per_byte else "compute-bound side"
    return (f"<b>{html.escape(point.label)}</b>: {duration(point.seconds)}, {point.intensity:.2f} FLOP/byte "
            f"({side}), {point.flops_per_s / 1e9:.1f} GFLOP/s = {point.flops_per_s / bound:.0%} of the roofline there, "
            f"{point.gb_per_s:.1f} GB/s")


class RooflineLab:
    def __init__(self, model, roofs, batches=(1, 2, 4, 8, 16), contexts=(64, 256, 1024, 2048), prompt_lens=(16, 64, 256),
                 batch: int = 1, context: int = 256, prompt_len: int = 64):
        self.model, self.roofs = model, roofs
        self.points: list = []
        self.batch = widgets.SelectionSlider(options=list(batches), value=batch, description="batch")
        self.context = widgets.SelectionSlider(options=list(contexts), value=context, description="context")
        self.prompt_len = widgets.SelectionSlider(options=list(prompt_lens), value=prompt_len, description="prompt")
        self.button = widgets.Button(description="measure", button_style="primary", icon="stopwatch")
        self.clear = widgets.Button(description="clear points")
        self.weights = widgets.ToggleButtons(options=list(WEIGHTS), value="float32", description="weights",
                                             tooltips=list(WEIGHTS.values()), style={"button_width": "110px"})
        self.weights.layout.display = None if model.can_read_blocks else "none"  # only a CPU model has blocks
        self.message = widgets.HTML().add_class("kvlab-roofline-message")
        self.figure = go.FigureWidget(roofline_figure(roofs, [], labels=True))
        self.figure.layout.width = PLOT_WIDTH_PX
        self.button.on_click(lambda _: self._measure_safely())
        self.clear.on_click(lambda _: self.reset())
        controls = widgets.HBox([widgets.VBox([self.batch, self.context, self.prompt_len]),
                                 widgets.VBox([self.button, self.clear])])
        controls = widgets.VBox([controls, self.weights])
        self.widget = widgets.VBox([controls, self.message, self.figure]).add_class("kvlab-roofline-lab")

    def measure(self) -> list:
        """Measure prefill (batch × prompt), a decode step (batch, context) and decode attention alone (batch,
        context); add them to the plot and return them. A bad choice raises before anything is added."""
        batch, context, prompt_len = self.batch.value, self.context.value, self.prompt_len.value
        self.message.value = f"measuring batch {batch}, context {context}, prompt {prompt_len}…"
        reads_blocks = self.model.decode_reads_blocks
        try:
            if self.model.can_read_blocks:
                self.model.decode_reads_blocks = self.weights.value == "GGUF blocks"
            new = [measure_prefill(self.model, batch, prompt_len), measure_decode(self.model, batch, context),
                   measure_attention(self.model, batch, context)]
        finally:
            self.model.decode_reads_blocks = reads_blocks  # the model is as the notebook left it
        self.points.extend(new)
        self._redraw()
        self.message.value = "<br>".join(describe(p, self.roofs) for p in new)
        return new

    def reset(self) -> None:
        self.points.clear()
        self._redraw()
        self.message.value = "points cleared"

    def _redraw(self) -> None:
        fresh = roofline_figure(self.roofs, self.points, labels=True)
        with self.figure.batch_update():
            self.figure.data = ()
            self.figure.add_traces(list(fresh.data))
            self.figure.layout = fresh.layout
            self.figure.layout.width = PLOT_WIDTH_PX

    def _measure_safely(self) -> None:
        try:
            self.measure()
        except ValueError as error:
            self.message.value = f"<span style='color:{ERROR_COLOUR}'>{html.escape(str(error))}</span>"

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def roofline_lab(model, roofs, measure: bool = True, **options) -> RooflineLab:
    """A RooflineLab, measured once at its first choices (measure=False: wait for the button)."""
    lab = RooflineLab(model, roofs, **options)
    if measure:
        lab.measure()
    return lab
