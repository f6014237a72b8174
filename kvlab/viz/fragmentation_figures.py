"""Figures of the fragmentation lab: plain functions from replay results (kvlab.bench.fragmentation) to a go.Figure.

Nothing here replays or allocates; every number drawn was recorded by a replay through the real allocators.
"""
from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..bench.fragmentation import SPLIT
from .paged_figures import FREE_COLOUR, RESERVED_COLOUR, TAIL_COLOUR, TOKENS_COLOUR

HIGHLIGHT_COLOUR = "#873600"  # the block size picked in the lab
LOG_TICKS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000]

LAYOUT_COLOURS = {"contiguous-max": "#2471a3", "contiguous-exact": "#7fb3d5", "paged": "#b9770e"}
SPLIT_COLOURS = dict(zip(SPLIT, (TOKENS_COLOUR, RESERVED_COLOUR, TAIL_COLOUR, "#7d3c98", FREE_COLOUR)))
SPLIT_NAMES = {"used": "holding tokens", "reserved, unused": "reserved for tokens still to come",
               "internal": "internal fragmentation (never filled)", "external": "external fragmentation (holes)",
               "free": "free"}


def layout_label(result) -> str:
    return f"paged, {result.block_size}-token blocks" if result.layout == "paged" else result.layout


def memory_over_time_figure(results: dict) -> go.Figure:
    """Token slots reserved (solid) and holding tokens (dotted) at every step, one colour per layout."""
    fig = go.Figure()
    for result in results.values():
        colour, label = LAYOUT_COLOURS.get(result.layout), layout_label(result)
        steps = list(range(result.steps))
        fig.add_scatter(x=steps, y=result.reserved, mode="lines", name=f"{label}: reserved", legendgroup=label,
                        line=dict(color=colour, width=2))
        fig.add_scatter(x=steps, y=result.used, mode="lines", name=f"{label}: holding tokens", legendgroup=label,
                        line=dict(color=colour, width=1.5, dash="dot"))
    pool = next(iter(results.values())).pool_tokens
    fig.add_hline(y=pool, line=dict(color="black", dash="dash"), annotation_text=f"pool: {pool:,} token slots",
                  annotation_position="top right")
    fig.update_layout(title="KV memory over the replay: reserved vs holding tokens", xaxis_title="step",
                      yaxis_title="token slots", yaxis_rangemode="tozero", template="plotly_white", height=400)
    return fig


def waste_breakdown_figure(results: dict, loaded: bool = False) -> go.Figure:
    """Where the pool goes, per layout: time-mean share of the pool in each part of SPLIT."""
    usages = [r.usage_loaded if loaded else r.usage for r in results.values()]
    labels = [f"{layout_label(r)}<br>{f'{u:.0%}' if u == u else 'never full:'} of reserved holds tokens"
              for r, u in zip(results.values(), usages)]
    splits = [r.pool_split(loaded) for r in results.values()]
    fig = go.Figure()
    for part in SPLIT:
        fig.add_bar(y=labels, x=[100 * s[part] for s in splits], orientation="h", name=SPLIT_NAMES[part],
                    marker_color=SPLIT_COLOURS[part], text=[f"{100 * s[part]:.0f}%" if s[part] >= 0.04 else ""
                                                            for s in splits], textposition="inside")
    window = "steps where a request waits" if loaded else "steps where something runs"
    fig.update_layout(barmode="stack", title=f"Where the pool goes (time-mean over {window})",
                      xaxis=dict(title="% of the pool", range=[0, 100]), yaxis_autorange="reversed",
                      template="plotly_white", height=330, margin=dict(l=230, b=90),
                      legend=dict(orientation="h", y=-0.25, yanchor="top"))
    return fig


def concurrency_figure(results: dict) -> go.Figure:
    """Requests running at every step, per layout: what the memory buys."""
    fig = go.Figure()
    for result in results.values():
        fig.add_scatter(x=list(range(result.steps)), y=result.running, mode="lines",
                        name=f"{layout_label(result)}: mean {result.mean_concurrency:.0f}, peak "
                             f"{result.peak_concurrency}, done at step {result.steps:,}",
                        line=dict(color=LAYOUT_COLOURS.get(result.layout), shape="hv"))
    fig.update_layout(title="Requests running at once (same pool, same trace)", xaxis_title="step",
                      yaxis_title="running requests", yaxis_rangemode="tozero", template="plotly_white", height=380,
                      legend=dict(orientation="h", y=-0.2, yanchor="top"))
    return fig


def block_size_sweep_figure(points: list, highlight: int | None = None) -> go.Figure:
    """Paged layout at each block size: internal waste (left axis) vs block-table cost (right axis, log)."""
    labels = [str(p.block_size) for p in points]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_bar(x=labels, y=[100 * p.internal_of_reserved for p in points], name="unfilled block tails, % of reserved",
                marker_color=[HIGHLIGHT_COLOUR if p.block_size == highlight else TAIL_COLOUR for p in points],
                text=[f"{100 * p.internal_of_reserved:.1f}%" for p in points], textposition="outside",
                cliponaxis=False, secondary_y=False)
    fig.add_scatter(x=labels, y=[p.cost.entries_per_seq for p in points], mode="lines+markers", secondary_y=True,
                    name="block-table entries per sequence", line_color="#2471a3")
    fig.add_scatter(x=labels, y=[p.cost.gathers_per_step for p in points], mode="lines+markers", secondary_y=True,
                    name="blocks gathered per decode step", line=dict(color="#1b2631", dash="dot"))
    fig.update_layout(title="Block size: waste against bookkeeping", xaxis_title="block size (tokens)",
                      template="plotly_white", height=400, legend=dict(orientation="h", y=-0.2, yanchor="top"))
    fig.update_yaxes(title_text="internal waste (% of reserved)", rangemode="tozero", secondary_y=False)
    fig.update_yaxes(title_text="per sequence (log)", type="log", secondary_y=True, showgrid=False, tickvals=LOG_TICKS)
    return fig
