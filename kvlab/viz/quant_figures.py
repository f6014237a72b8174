"""Figures of KV-cache quantization, drawn from measured data: real K/V captures (kvlab.bench.quant_capture)
and accuracy rows (kvlab.bench.quant_accuracy.run_accuracy(...)["rows"], or rows of the same shape)."""
from __future__ import annotations

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ..bench.quant_capture import (OUTLIER_FACTOR, KVCapture, channel_absmax, channel_mean_abs, outlier_channels,
                                  scheme_label)
from ..cache.quantization import SCHEMES
from ..memory import format_bytes

MAGNITUDE_SCALE = "Blues"
ERROR_SCALE = "Reds"
SCHEME_COLOURS = {"int8": "#2874a6", "fp8": "#7d3c98", "int4": "#d68910", "kivi2": "#1e8449"}
FULL_COLOUR = "#566573"
BF16_COLOUR = "#a04000"
OUTLIER_COLOUR = "#c0392b"
CHANNEL_COLOUR = "#85929e"


def _row_label(row: dict) -> str:
    return scheme_label(row["scheme"], row["group_size"] if row["scheme"] in SCHEMES else None)


def _is_baseline(row: dict) -> bool:
    return row["scheme"] not in SCHEMES


def how_quantized(capture: KVCapture, values: bool = False) -> str:
    """"keys per token, groups of 32", "keys per channel, 16-token blocks", "values per token, whole head", …"""
    scheme, what = capture.scheme, "values" if values else "keys"
    if scheme.keys_per_channel and not values:
        return f"keys per channel, {capture.block_size}-token blocks"
    group = "whole head" if scheme.group_size == scheme.head_dim else f"groups of {scheme.group_size}"
    return f"{what} per token, {group}"


# --- real K/V: magnitudes and errors --------------------------------------------------------------------------
def error_heatmaps(captures: KVCapture | list[KVCapture], layer: int, head: int = 0, values: bool = False) -> go.Figure:
    """Token × channel heatmaps of one layer and KV head: |K| of the full-precision run (outlier channels are
    stripes), then |K − K̂| of each capture's scheme on one shared colour scale. K is what the quantized run's
    layer handed its cache, K̂ what the cache gives back; kivi2's newest block is exact (below the dashed line).
    values=True adds the same row for V."""
    captures = [captures] if isinstance(captures, KVCapture) else list(captures)
    if not captures:
        raise ValueError("error_heatmaps needs at least one capture")
    first = captures[0]
    if not 0 <= layer < first.num_layers or not 0 <= head < first.k.shape[2]:
        raise ValueError(f"layer {layer}, head {head} out of range: {first.num_layers} layers, "
                         f"{first.k.shape[2]} KV heads")
    kinds = [False, True] if values else [False]  # rows: K, then V
    titles = []
    for is_v in kinds:
        name = "V" if is_v else "K"
        titles.append(f"|{name}|, full precision")
        for c in captures:
            over = f"over {c.exact_from} quantized tokens" if c.exact_from < c.num_tokens else ""
            titles.append(f"{c.label}: {how_quantized(c, is_v)}<br>mean |{name} − {name}̂| "
                          f"{c.mean_quant_error(layer, head, is_v):.3f}{'<br>' + over if over else ''}")
    fig = make_subplots(rows=len(kinds), cols=1 + len(captures), subplot_titles=titles, shared_yaxes=True,
                        horizontal_spacing=0.07, vertical_spacing=0.16)
    fig.update_annotations(font_size=11)  # the subplot titles
    positions = list(range(first.num_tokens))
    for row, is_v in enumerate(kinds, start=1):
        name = "V" if is_v else "K"
        bar_y, bar_len = fig.get_subplot(row, 1).yaxis.domain, 1 / len(kinds) - 0.08
        full = (first.v if is_v else first.k)[layer, :, head]  # [T, D]
        fig.add_heatmap(z=full.abs().tolist(), y=positions, row=row, col=1, colorscale=MAGNITUDE_SCALE,
                        colorbar=dict(x=fig.get_subplot(row, 1).xaxis.domain[1] + 0.004, xanchor="left",
                                      thickness=10, len=bar_len, y=sum(bar_y) / 2),
                        hovertemplate=f"token %{{y}}, channel %{{x}}<br>|{name}| %{{z:.3f}}<extra></extra>")
        errors = [c.quant_error(layer, head, is_v) for c in captures]  # each [T, D]
        top = max(e.max().item() for e in errors) or 1.0  # one colour scale for every scheme's error
        for col, (capture, error) in enumerate(zip(captures, errors), start=2):
            given = (capture.v_in if is_v else capture.k_in)[layer, :, head]  # [T, D]
            read = (capture.v_hat if is_v else capture.k_hat)[layer, :, head]
            fig.add_heatmap(z=error.tolist(), y=positions, row=row, col=col, colorscale=ERROR_SCALE, zmin=0, zmax=top,
                            customdata=torch.stack([given, read], -1).tolist(), showscale=col == 1 + len(captures),
                            colorbar=dict(thickness=10, len=bar_len, y=sum(bar_y) / 2, title=f"|{name} − {name}̂|"),
                            hovertemplate=(f"{capture.label}, token %{{y}}, channel %{{x}}<br>"
                                           f"{name} %{{customdata[0]:.3f}} → {name}̂ %{{customdata[1]:.3f}}<br>"
                                           f"error %{{z:.3f}}<extra></extra>"))
            if capture.exact_from < capture.num_tokens:
                fig.add_hline(y=capture.exact_from - 0.5, row=row, col=col, line_dash="dash", line_color="black",
                              annotation_text="below: newest block, exact", annotation_position="bottom right")
        fig.update_yaxes(autorange="reversed", row=row, col=1, title_text="token position")
        fig.update_xaxes(title_text="channel", row=row)
    drift = ", ".join(dict.fromkeys(f"{c.label} {c.mean_drift(layer):.3f}" for c in captures))
    fig.update_layout(template="plotly_white", height=220 + 320 * len(kinds), margin=dict(t=160),
                      title_font_size=14,
                      title=f"Layer {layer}, KV head {head}: quantization error per token and channel<br><sup>K: what "
                            f"the quantized run's layer handed its cache; K̂: what the cache reads back.<br>Drift from "
                            f"earlier layers' errors, mean |K_full − K|: {drift}</sup>")
    return fig


def channel_absmax_figure(k: torch.Tensor, factor: float = OUTLIER_FACTOR, where: str = "") -> go.Figure:
    """Per-channel max |K| over the tokens of one layer and KV head, k [T, D] (bars), with the channel's mean |K|
    (dark): an outlier channel (mean |K| ≥ factor × the median channel's, in red) is large at every token — it
    sets the per-token scale of its whole group. A tall bar with a low mean is one token's spike.
    `where` starts the title ("Layer 19, KV head 0")."""
    if k.dim() != 2:
        raise ValueError(f"k must be one head's keys [tokens, channels], got shape {tuple(k.shape)}")
    channels = list(range(k.shape[1]))
    typical = channel_mean_abs(k)  # [D]
    outliers = set(outlier_channels(k, factor))
    colours = [OUTLIER_COLOUR if c in outliers else CHANNEL_COLOUR for c in channels]
    fig = go.Figure()
    fig.add_bar(x=channels, y=channel_absmax(k).tolist(), name="max |K|", marker_color=colours, opacity=0.45,
                hovertemplate="channel %{x}: max |K| %{y:.2f}<extra></extra>")
    fig.add_bar(x=channels, y=typical.tolist(), name="mean |K|", marker_color=colours,
                hovertemplate="channel %{x}: mean |K| %{y:.2f}<extra></extra>")
    fig.add_hline(y=factor * typical.median().item(), line_dash="dot", line_color=OUTLIER_COLOUR,
                  annotation_text=f"{factor:g} × the median channel's mean |K|", annotation_position="top left")
    named = f"outlier channels {', '.join(map(str, sorted(outliers)))}" if outliers else "no outlier channel"
    fig.update_layout(template="plotly_white", height=300, xaxis_title="channel", yaxis_title="|K| over the tokens",
                      barmode="overlay", legend=dict(orientation="h", y=1.12, x=1, xanchor="right"),
                      title=f"{where + ': ' if where else ''}{named} (pale: max |K|; dark: mean |K|)")
    return fig


# --- measured rows: memory and accuracy ------------------------------------------------------------------------
def memory_figure(rows: list[dict], height: int | None = None) -> go.Figure:
    """K/V bytes per token (all layers) of each quantized scheme as bars, against the full-precision and bf16
    lines (both derived from each row's memory_vs_model_dtype / memory_vs_bf16)."""
    schemes = [r for r in rows if not _is_baseline(r)]
    if not schemes:
        raise ValueError("memory_figure needs at least one quantized row")
    full = schemes[0]["bytes_per_token"] / schemes[0]["memory_vs_model_dtype"]
    bf16 = schemes[0]["bytes_per_token"] / schemes[0]["memory_vs_bf16"]
    baseline = next((r for r in rows if _is_baseline(r)), None)
    full_name = baseline["scheme"].split(" ")[0] if baseline else "full precision"
    fig = go.Figure()
    fig.add_bar(y=[_row_label(r) for r in schemes], x=[r["bytes_per_token"] for r in schemes], orientation="h",
                marker_color=[SCHEME_COLOURS[r["scheme"]] for r in schemes],
                text=[f"{format_bytes(r['bytes_per_token'])} · {r['memory_vs_bf16']:.2f}× bf16" for r in schemes],
                textposition="outside", hovertemplate="%{y}: %{x:,} bytes per token<extra></extra>")
    fig.add_vline(x=full, line_color=FULL_COLOUR, annotation_text=f"{full_name}: {format_bytes(full)}",
                  annotation_position="top left")
    fig.add_vline(x=bf16, line_dash="dash", line_color=BF16_COLOUR, annotation_text=f"bf16: {format_bytes(bf16)}",
                  annotation_position="top left")
    fig.update_layout(template="plotly_white", height=height or 150 + 40 * len(schemes), showlegend=False,
                      xaxis_title="K + V bytes per token (all layers)", xaxis_range=[0, full * 1.05],
                      yaxis_autorange="reversed", margin=dict(t=70),
                      title="Memory per token, K + V of all layers: quantized (bars) against unquantized (lines)")
    return fig


def accuracy_figure(rows: list[dict], corpus: str | None = None) -> go.Figure:
    """The trade-off: memory per token against the perplexity increase (left), and how many greedy tokens
    match the full-precision cache before the first difference (right)."""
    schemes = [r for r in rows if not _is_baseline(r)]
    if not schemes:
        raise ValueError("accuracy_figure needs at least one quantized row")
    labels = [_row_label(r) for r in schemes]
    colours = [SCHEME_COLOURS[r["scheme"]] for r in schemes]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4], horizontal_spacing=0.12,
                        subplot_titles=["memory vs perplexity increase", "greedy tokens identical to full precision"])
    full = schemes[0]["bytes_per_token"] / schemes[0]["memory_vs_model_dtype"]
    fig.add_scatter(x=[full], y=[0.0], mode="markers+text", text=["full precision"], textposition="top left",
                    marker=dict(color=FULL_COLOUR, size=11, symbol="diamond"), row=1, col=1,
                    hovertemplate="full precision: %{x:,} bytes per token<extra></extra>")
    fig.add_scatter(x=[r["bytes_per_token"] for r in schemes], y=[r["perplexity_delta"] for r in schemes],
                    mode="markers+text", text=labels, textposition="top center", marker=dict(color=colours, size=11),
                    customdata=[[r["perplexity"], r["memory_vs_bf16"]] for r in schemes], row=1, col=1,
                    hovertemplate="%{text}: %{x:,} bytes per token (%{customdata[1]:.2f}× bf16)<br>perplexity "
                                  "%{customdata[0]:.3f} (%{y:+.3f})<extra></extra>")
    fig.add_bar(x=labels, y=[100 * r["agreement"] for r in schemes], marker_color=colours, row=1, col=2,
                text=[f"{r['agreement']:.0%}" for r in schemes], textposition="outside",
                hovertemplate="%{x}: %{y:.0f}% of tokens before the first difference<extra></extra>")
    fig.update_xaxes(title_text="K + V bytes per token", rangemode="tozero", row=1, col=1)
    top = max(r["perplexity_delta"] for r in schemes)
    fig.update_yaxes(title_text="perplexity − full precision", row=1, col=1,
                     range=[min(0.0, min(r["perplexity_delta"] for r in schemes)) - 0.1 * abs(top) - 0.05,
                            1.2 * max(top, 0.0) + 0.05])
    fig.update_yaxes(title_text="% identical before the first difference", range=[0, 115], row=1, col=2)
    fig.update_layout(template="plotly_white", height=400, showlegend=False,
                      title="Quantized KV: memory saved against accuracy lost" + (f" ({corpus})" if corpus else ""))
    return fig
