"""Figures for notebook 06: the roofline, decode attention's bandwidth, prefill vs decode per token, and the
latency–throughput trade-off. They draw measured points (kvlab.bench.roofline) against measured roofs
(kvlab.bench.roofs); nothing here computes a time.
"""
from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

def duration(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.0f} µs"


KIND_STYLE = {"prefill": ("#d62728", "square"), "decode": ("#1f77b4", "circle"), "attention": ("#2ca02c", "diamond")}


def short_label(point) -> str:
    """A few characters beside a point: B = batch, T = prompt tokens, ctx = context; "blocks" for GGUF blocks.
    (A decode step's time hardly depends on a short context, so its label leaves it out: hover for it.)"""
    size = {"prefill": f" T{point.tokens}", "attention": f" ctx{point.context}"}.get(point.kind, "")
    return f"B{point.batch}{size}" + (" blocks" if point.weights else "")


def roofline_figure(roofs, points: list, title: str = "", labels: bool = False) -> go.Figure:
    """Achieved FLOP/s against arithmetic intensity, log-log, under min(compute roof, intensity × bandwidth).
    labels: write a short label beside every point (the lab does; hovering gives the full one anyway)."""
    bandwidth = roofs.copy.gb_per_s * 1e9
    peak = roofs.matmul.flops_per_s
    intensities = [p.intensity for p in points] or [roofs.ridge_flop_per_byte]
    low = min(min(intensities) / 3, roofs.ridge_flop_per_byte / 30)
    high = max(max(intensities) * 3, roofs.ridge_flop_per_byte * 30)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[low, roofs.ridge_flop_per_byte, high], y=[low * bandwidth, peak, peak], mode="lines",
                             line=dict(color="black"), name="roofline (measured)",
                             hovertemplate="attainable %{y:.3s}FLOP/s at %{x:.3g} FLOP/byte<extra></extra>"))
    measured_roofs = (f"copy {roofs.copy.gb_per_s:.1f} GB/s · {roofs.matmul.dtype} matmul {peak / 1e12:.3g} TFLOP/s · "
                      f"ridge {roofs.ridge_flop_per_byte:.1f} FLOP/byte")
    for kind, (colour, symbol) in KIND_STYLE.items():
        chosen = [p for p in points if p.kind == kind]
        if not chosen:
            continue
        fig.add_trace(go.Scatter(
            x=[p.intensity for p in chosen], y=[p.flops_per_s for p in chosen], name=kind,
            mode="markers+text" if labels else "markers", customdata=[short_label(p) for p in chosen],
            texttemplate="%{customdata}", textposition="top center", textfont=dict(size=10, color=colour),
            marker=dict(color=colour, symbol=symbol, size=11, line=dict(color="white", width=1)),
            text=[f"{p.label}<br>{duration(p.seconds)} · {p.gb_per_s:.1f} GB/s · {p.flops_per_s / 1e9:.1f} GFLOP/s"
                  for p in chosen],
            hovertemplate="%{text}<br>%{x:.3g} FLOP/byte<extra></extra>"))
    fig.update_xaxes(type="log", dtick=1, title="arithmetic intensity (FLOP per byte moved)")
    fig.update_yaxes(type="log", dtick=1, exponentformat="SI", title="achieved FLOP/s (G = 10⁹, T = 10¹²)")
    lowest = min([low * bandwidth] + [p.flops_per_s for p in points])
    highest = max([peak] + [p.flops_per_s for p in points])
    fig.update_yaxes(range=[math.log10(lowest) - 0.3, math.log10(highest) + 0.3])  # every point and the whole roof
    heading = title or "Roofline: measured steps under the measured roofs"
    fig.update_layout(title=f"{heading}<br><sup>{measured_roofs}</sup>", height=480, margin=dict(t=80, l=70, r=20, b=50))
    return fig


def attention_bandwidth_figure(points: list, copy_gb_s: float) -> go.Figure:
    """Achieved GB/s of decode attention against context length, one line per batch size."""
    fig = go.Figure()
    for batch in sorted({p.batch for p in points}):
        row = sorted((p for p in points if p.batch == batch), key=lambda p: p.context)
        fig.add_trace(go.Scatter(x=[p.context for p in row], y=[p.gb_per_s for p in row], mode="lines+markers",
                                 name=f"batch {batch}",
                                 text=[f"{p.seconds * 1e6:.0f} µs, {p.bytes / 1e6:.1f} MB" for p in row],
                                 hovertemplate="context %{x}: %{y:.1f} GB/s (%{text})<extra></extra>"))
    fig.add_hline(y=copy_gb_s, line=dict(color="black", dash="dash"),
                  annotation_text=f"measured copy bandwidth {copy_gb_s:.1f} GB/s")
    fig.update_xaxes(type="log", title="context length (tokens per sequence)")
    fig.update_yaxes(title="achieved GB/s (K/V bytes read / time)", rangemode="tozero")
    fig.update_layout(title="Decode attention: bandwidth achieved grows with the bytes there are to stream",
                      height=400, margin=dict(t=60, l=60, r=20, b=50))
    return fig


def per_token_figure(prefill: list, decode: list) -> go.Figure:
    """Milliseconds per token of a prefill step and of a decode step, side by side."""
    points = prefill + decode
    labels = [p.label for p in points]
    fig = go.Figure(go.Bar(
        x=labels, y=[p.seconds_per_token * 1e3 for p in points],
        marker_color=[KIND_STYLE[p.kind][0] for p in points],
        text=[f"{p.seconds_per_token * 1e3:.2f} ms/token" for p in points], textposition="outside",
        hovertemplate="%{x}: %{y:.3f} ms per token<extra></extra>"))
    fig.update_yaxes(title="milliseconds per token (step time / tokens in the step)", type="log")
    fig.update_layout(title="Per token, prefill is cheap and decode is dear: same weights, read once for many tokens "
                            "or for one", height=420, margin=dict(t=60, l=60, r=20, b=90))
    return fig


def batch_tradeoff_figure(rows: list[dict]) -> go.Figure:
    """TTFT and decode tokens/s against batch size: the latency–throughput trade-off."""
    batches = [r["batch"] for r in rows]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("time to first token (latency)", "decode tokens/s, whole batch "
                                                                                          "(throughput)"))
    fig.add_trace(go.Scatter(x=batches, y=[r["ttft_s"] * 1e3 for r in rows], mode="lines+markers", name="TTFT",
                             hovertemplate="batch %{x}: %{y:.0f} ms<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(x=batches, y=[r["decode_tokens_per_s"] for r in rows], mode="lines+markers",
                             name="tokens/s", hovertemplate="batch %{x}: %{y:.1f} tok/s<extra></extra>"), row=1, col=2)
    fig.update_xaxes(type="log", title="batch size", tickvals=batches)
    fig.update_yaxes(title="ms", row=1, col=1, rangemode="tozero")
    fig.update_yaxes(title="tokens/s", row=1, col=2, rangemode="tozero")
    fig.update_layout(height=380, showlegend=False, margin=dict(t=60, l=60, r=20, b=50),
                      title="Batching: more tokens per second for everyone, a later first token for each")
    return fig
