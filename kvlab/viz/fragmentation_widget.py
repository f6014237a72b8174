"""Fragmentation lab: pick a trace, a pool and a block size; replay it through the real allocators of every
layout and see where the memory goes."""
from __future__ import annotations

import html

import ipywidgets as widgets
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..bench.fragmentation import BLOCK_SIZES, DEFAULT_POOL_TOKENS, block_size_sweep, compare_layouts
from ..workload import CHAT_OUTPUT_MEAN, CHAT_PROMPT_MEAN, DISTRIBUTIONS, Trace, chat_trace, synthetic_trace
from .fragmentation_figures import (LOG_TICKS, block_size_sweep_figure, concurrency_figure, layout_label,
                                    memory_over_time_figure, waste_breakdown_figure)

POOL_SIZES = [2**k for k in range(9, 19)]  # 512 … 262,144 token slots
MESSAGE_CLASS = "kvlab-message"


def make_trace(preset: bool = True, distribution: str = "lognormal", prompt_mean: int = CHAT_PROMPT_MEAN,
               output_mean: int = CHAT_OUTPUT_MEAN, num_requests: int = 200, seed: int = 0) -> Trace:
    """The chat trace (preset) or a synthetic one from the user's picks."""
    if preset:
        return chat_trace(num_requests, seed)
    return synthetic_trace(distribution, prompt_mean, output_mean, num_requests, seed)


def _percent(x: float) -> str:
    return "—" if x != x else f"{x:.0%}"


def describe(trace: Trace, results: dict) -> str:
    """An HTML table of each layout's summary numbers, under a line describing the trace."""
    head = ("<tr><th>layout</th><th>tokens / reserved</th><th>… while requests wait</th><th>reserved, unused</th>"
            "<th>internal</th><th>external (of pool)</th><th>running: mean / peak</th><th>steps to finish</th>"
            "<th>preemptions</th></tr>")
    rows = "".join(
        f"<tr><td>{layout_label(r)}</td><td><b>{_percent(r.usage)}</b></td><td>{_percent(r.usage_loaded)}</td>"
        f"<td>{_percent(r.share_of_reserved('reserved_unused'))}</td>"
        f"<td>{_percent(r.share_of_reserved('internal'))}</td>"
        f"<td>{_percent(r.pool_split()['external'])}</td><td>{r.mean_concurrency:.0f} / {r.peak_concurrency}</td>"
        f"<td>{r.steps:,}</td><td>{r.preemptions:,}</td></tr>" for r in results.values())
    return f"<p>{html.escape(trace.describe())}</p><table>{head}{rows}</table>"


def lab_figures(trace: Trace, pool_tokens: int, block_size: int, sweep=None) -> tuple[dict, list, list[go.Figure]]:
    """Replay every layout and the block-size sweep; the four figures of the lab."""
    results = compare_layouts(trace, pool_tokens, block_size)
    sweep = sweep if sweep is not None else block_size_sweep(trace, pool_tokens)
    figures = [memory_over_time_figure(results), waste_breakdown_figure(results), concurrency_figure(results),
               block_size_sweep_figure(sweep, highlight=block_size)]
    return results, sweep, figures


def fragmentation_lab_figure(preset: bool = True, distribution: str = "lognormal", prompt_mean: int = CHAT_PROMPT_MEAN,
                             output_mean: int = CHAT_OUTPUT_MEAN, num_requests: int = 200, seed: int = 0,
                             block_size: int = 16, pool_tokens: int = DEFAULT_POOL_TOKENS) -> go.Figure:
    """The lab's initial view as one plain go.Figure (for headless runs): the four figures in a 2 × 2 grid."""
    trace = make_trace(preset, distribution, prompt_mean, output_mean, num_requests, seed)
    _, _, parts = lab_figures(trace, pool_tokens, block_size)
    grid = make_subplots(rows=2, cols=2, specs=[[{}, {}], [{}, {"secondary_y": True}]], vertical_spacing=0.14,
                         horizontal_spacing=0.2, subplot_titles=[f.layout.title.text for f in parts])
    for (row, col), part in zip([(1, 1), (1, 2), (2, 1), (2, 2)], parts):
        for trace_ in part.data:
            secondary = trace_.yaxis == "y2" if (row, col) == (2, 2) else None
            grid.add_trace(trace_, row=row, col=col, secondary_y=secondary)
    grid.add_hline(y=pool_tokens, line=dict(color="black", dash="dash"), row=1, col=1)
    grid.update_xaxes(title_text="step", row=1, col=1)
    grid.update_yaxes(title_text="token slots", row=1, col=1)
    grid.update_xaxes(title_text="% of the pool", range=[0, 100], row=1, col=2)
    grid.update_yaxes(autorange="reversed", row=1, col=2)
    grid.update_xaxes(title_text="step", row=2, col=1)
    grid.update_yaxes(title_text="running requests", row=2, col=1)
    grid.update_xaxes(title_text="block size (tokens)", row=2, col=2)
    grid.update_yaxes(title_text="internal waste (% of reserved)", secondary_y=False, row=2, col=2)
    grid.update_yaxes(title_text="per sequence (log)", type="log", showgrid=False, tickvals=LOG_TICKS,
                      secondary_y=True, row=2, col=2)
    grid.update_layout(barmode="stack", template="plotly_white", height=1050, legend=dict(orientation="h", y=-0.08),
                       title=f"Fragmentation lab — {trace.name}, pool {pool_tokens:,} token slots")
    return grid


def _show(widget: go.FigureWidget, fresh: go.Figure) -> None:
    widget.data = ()
    widget.add_traces(list(fresh.data))
    widget.layout = fresh.layout


def fragmentation_lab(preset: bool = True, distribution: str = "lognormal", prompt_mean: int = CHAT_PROMPT_MEAN,
                      output_mean: int = CHAT_OUTPUT_MEAN, num_requests: int = 200, seed: int = 0,
                      block_size: int = 16, pool_tokens: int = DEFAULT_POOL_TOKENS) -> widgets.VBox:
    """An ipywidgets panel: every change replays the trace through the real allocators and redraws.

    The returned VBox carries `.controls` (name → widget), `.message` (the red error line) and `.figures`.
    """
    controls = {
        "preset": widgets.ToggleButton(value=preset, description="chat trace (ShareGPT-like)", icon="comments",
                                       layout=widgets.Layout(width="220px")),
        "distribution": widgets.Dropdown(options=list(DISTRIBUTIONS), value=distribution, description="lengths"),
        "prompt_mean": widgets.IntSlider(value=prompt_mean, min=1, max=1024, description="prompt mean"),
        "output_mean": widgets.IntSlider(value=output_mean, min=1, max=1536, description="output mean"),
        "num_requests": widgets.IntSlider(value=num_requests, min=10, max=400, step=10, description="requests"),
        "seed": widgets.BoundedIntText(value=seed, min=0, max=10**6, description="seed"),
        "block_size": widgets.SelectionSlider(options=list(BLOCK_SIZES), value=block_size, description="block size"),
        "pool_tokens": widgets.SelectionSlider(options=[(f"{p:,}", p) for p in POOL_SIZES], value=pool_tokens,
                                               description="pool (tokens)"),
    }
    message = widgets.HTML()
    message.add_class(MESSAGE_CLASS)
    caption = widgets.HTML()
    figures = [go.FigureWidget() for _ in range(4)]
    sweeps: dict[tuple, list] = {}  # the sweep does not depend on the chosen block size: replay it once per trace

    def redraw(_=None) -> None:
        picks = {name: control.value for name, control in controls.items()}
        for name in ("distribution", "prompt_mean", "output_mean"):
            controls[name].disabled = picks["preset"]
        try:
            trace = make_trace(picks["preset"], picks["distribution"], picks["prompt_mean"], picks["output_mean"],
                               picks["num_requests"], picks["seed"])
            key = (trace, picks["pool_tokens"])
            results, sweeps[key], fresh = lab_figures(trace, picks["pool_tokens"], picks["block_size"], sweeps.get(key))
        except ValueError as error:  # bad input: say so in red, keep the last good figures
            message.value = f'<span style="color:#c0392b"><b>Cannot replay:</b> {html.escape(str(error))}</span>'
            return
        message.value = ""
        caption.value = describe(trace, results)
        for widget, figure in zip(figures, fresh):
            _show(widget, figure)

    for control in controls.values():
        control.observe(redraw, names="value")
    redraw()
    c = controls
    panel = widgets.VBox([widgets.HBox([c["preset"], c["distribution"], c["seed"]]),
                          widgets.HBox([c["prompt_mean"], c["output_mean"], c["num_requests"]]),
                          widgets.HBox([c["block_size"], c["pool_tokens"]]), message, caption, *figures])
    panel.controls, panel.message, panel.figures = controls, message, figures
    return panel

