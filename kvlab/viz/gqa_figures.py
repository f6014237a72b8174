"""Figures for notebook 07: KV bytes and measured decode time of MHA, GQA and MQA side by side
(from kvlab.bench.gqa reports, live or recorded; nothing here times anything)."""
from __future__ import annotations

import plotly.graph_objects as go


def gqa_figure(report: dict, title: str = "") -> go.Figure:
    """Bytes and time of each variant relative to MHA: if decode is bandwidth-bound, the bars pair up."""
    rows = [r for r in report["rows"] if "time_vs_mha" in r]
    names = [f"{r['variant']}<br>{r['num_q_heads']} q / {r['num_kv_heads']} kv heads" for r in rows]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=names, y=[r["bytes_vs_mha"] for r in rows], name="K/V bytes vs MHA", marker_color="#7f7f7f",
                         text=[f"{r['bytes_vs_mha']:.3g}×" for r in rows], textposition="outside"))
    fig.add_trace(go.Bar(x=names, y=[r["time_vs_mha"] for r in rows], name="decode time vs MHA (measured)",
                         marker_color="#1f77b4", text=[f"{r['time_vs_mha']:.3g}×<br>{r['seconds'] * 1e6:.0f} µs"
                                                       for r in rows], textposition="outside"))
    fig.update_yaxes(type="log", title="relative to MHA (log scale)")
    fig.update_layout(barmode="group", height=420, margin=dict(t=70, l=60, r=20, b=70),
                      title=title or (f"{report['device']}, {report['dtype']}: batch {report['batch']}, context "
                                      f"{report['context']} — fewer KV heads, fewer bytes, less time"))
    return fig


def bytes_per_token_figure(rows: list[tuple[str, int]]) -> go.Figure:
    """(label, bytes per token) bars, e.g. read from real cache objects of each head layout."""
    fig = go.Figure(go.Bar(x=[label for label, _ in rows], y=[b for _, b in rows], marker_color="#2ca02c",
                           text=[f"{b:,} B" for _, b in rows], textposition="outside"))
    fig.update_yaxes(title="K/V bytes per token (all layers)")
    fig.update_layout(height=360, margin=dict(t=50, l=70, r=20, b=60), title="What one token costs in the cache")
    return fig
