"""Plotly figures: plain functions from measured results or public state to a go.Figure."""
from __future__ import annotations

import plotly.graph_objects as go

from .. import memory

PATH_COLOURS = {"none": "#c0392b", "contiguous": "#2471a3"}
PATH_NAMES = {"none": "no cache (recompute K/V)", "contiguous": "contiguous KV cache"}


def step_time_figure(result) -> go.Figure:
    """Per-step decode time against sequence length, one line per path (kvlab.bench.CacheVsRecompute)."""
    fig = go.Figure()
    for name, path in result.paths.items():
        fig.add_scatter(x=path.context_lens, y=[s * 1e3 for s in path.step_s], mode="lines+markers",
                        marker_size=4, name=PATH_NAMES.get(name, name), line_color=PATH_COLOURS.get(name))
    fig.update_layout(title=f"One decode step, median of {result.repeats} runs", xaxis_title="sequence length (tokens)",
                      yaxis_title="time per step (ms)", template="plotly_white", height=380)
    return fig


def speedup_figure(result, claimed: tuple[float, float] = (10, 20)) -> go.Figure:
    """Total time (prefill + decode) without a cache ÷ with one, at each generated length."""
    fast = result.paths["contiguous"]
    steps = list(range(1, len(fast.step_s) + 1))
    speedups = [result.speedup_at(n) for n in steps]
    fig = go.Figure()
    fig.add_hrect(y0=claimed[0], y1=claimed[1], fillcolor="#f5b041", opacity=0.25, line_width=0,
                  annotation_text=f"the interview answer: {claimed[0]:g}–{claimed[1]:g}×", annotation_position="top left")
    fig.add_scatter(x=fast.context_lens, y=speedups, mode="lines", name="measured", line_color="#1e8449")
    fig.update_layout(title="Total-time speedup of the KV cache (measured)", xaxis_title="sequence length (tokens)",
                      yaxis_title="speedup (×)", template="plotly_white", height=380, showlegend=False)
    return fig


def kv_memory_figure(model: str, batch: int = 1, dtype: str = "bfloat16",
                     contexts: tuple[int, ...] = (2048, 8192, 32768, 131072), highlight: int | None = None) -> go.Figure:
    """KV cache size of one model at several context lengths, from kvlab.memory's formula."""
    shape = memory.resolve_shape(model)
    sizes = [memory.kv_cache_bytes(shape, c, batch, dtype) for c in contexts]
    labels = [f"{c // 1024}K" if c >= 1024 else str(c) for c in contexts]
    colours = ["#2471a3" if c != highlight else "#c0392b" for c in contexts]
    fig = go.Figure(go.Bar(x=labels, y=[s / memory.GiB for s in sizes], marker_color=colours,
                           text=[memory.format_bytes(s) for s in sizes], textposition="outside", cliponaxis=False))
    fig.update_layout(title=f"{shape.name} ({shape.attention_kind}), batch {batch}, {dtype}: KV cache size",
                      xaxis_title="context length", yaxis_title="GiB", template="plotly_white", height=380)
    return fig


def presets_figure(context_len: int, batch: int = 1, dtype: str = "bfloat16", highlight: str | None = None) -> go.Figure:
    """Every preset's KV cache at one context length and batch (log scale: MQA to MHA spans 100×)."""
    names = list(memory.PRESETS)
    sizes = [memory.kv_cache_bytes(n, context_len, batch, dtype) for n in names]
    colours = ["#c0392b" if n == highlight else "#5d6d7e" for n in names]
    kinds = [memory.PRESETS[n].attention_kind for n in names]
    fig = go.Figure(go.Bar(y=names, x=[s / memory.GiB for s in sizes], orientation="h", marker_color=colours,
                           text=[f"{memory.format_bytes(s)} · {k}" for s, k in zip(sizes, kinds)], textposition="outside",
                           cliponaxis=False))
    fig.update_layout(title=f"KV cache at {context_len:,} tokens × batch {batch} in {dtype}", xaxis_type="log",
                      xaxis_title="GiB (log scale)", template="plotly_white", height=420, margin_l=120, margin_r=110)
    return fig
