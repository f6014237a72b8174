"""kvlab's serving configuration beside vLLM's arguments (a table), and kvlab's serving metrics beside a vLLM
server's on the same trace — or kvlab's alone, plainly marked, where no vLLM run is recorded. Draws only: the
mapping comes from kvlab.vllm.args, the numbers from ServeResult.metrics() and kvlab.vllm.result_import (seconds,
tok/s), the recording from kvlab.vllm.replay."""
from __future__ import annotations

import html
import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

LATENCIES = (("ttft_p50_s", "TTFT p50"), ("ttft_p99_s", "TTFT p99"), ("tpot_p50_s", "TPOT p50"),
             ("tpot_p99_s", "TPOT p99"), ("itl_p50_s", "ITL p50"), ("itl_p99_s", "ITL p99"))
NO_VLLM = "no vLLM result recorded yet — run `make gpu-check` on a GPU machine"
KVLAB_COLOUR, VLLM_COLOUR = "#2e86c1", "#e67e22"
KIND_COLOURS = {"same": "#0b6e4f", "differs": "#8a5a00", "implicit": "#555", "client": "#1f4e79",
                "kvlab only": "#555", "none": "#b00020"}


def mapping_table_html(table: list[dict]) -> str:
    """VllmMapping.table() as an HTML table, the kind of each row coloured (none: red, differs: amber)."""
    rows = "".join(
        f"<tr><td><code>{html.escape(r['kvlab knob'])}</code></td><td><code>{html.escape(r['kvlab value'])}</code></td>"
        f"<td style='text-align:left'><code>{html.escape(r['vLLM'])}</code></td>"
        f"<td style='color:{KIND_COLOURS[r['kind']]}'><b>{html.escape(r['kind'])}</b></td>"
        f"<td style='text-align:left'>{html.escape(r['note'])}</td></tr>" for r in table)
    return ("<table><tr><th>kvlab knob</th><th>value</th><th style='text-align:left'>vLLM flag</th><th>kind</th>"
            "<th style='text-align:left'>note</th></tr>" + rows + "</table>")


def _ms(metrics: dict, key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value * 1e3


def comparison_figure(kvlab_metrics: dict, vllm_metrics: dict | None = None, kvlab_label: str = "kvlab",
                      vllm_label: str = "vLLM") -> go.Figure:
    """Latency percentiles (ms, log scale) and output throughput (tok/s), one bar per side; without vllm_metrics
    only kvlab's bars, and the note that no vLLM result is recorded (no number stands in for one)."""
    sides = [(kvlab_label, kvlab_metrics, KVLAB_COLOUR)]
    if vllm_metrics is not None:
        sides.append((vllm_label, vllm_metrics, VLLM_COLOUR))
    fig = make_subplots(rows=1, cols=2, column_widths=[0.75, 0.25], horizontal_spacing=0.1,
                        subplot_titles=("latency per request and per token", "output throughput"))
    names = [label for _, label in LATENCIES]
    for label, metrics, colour in sides:
        values = [_ms(metrics, key) for key, _ in LATENCIES]
        fig.add_bar(x=names, y=values, name=label, marker_color=colour, legendgroup=label,
                    text=[f"{v:.0f}" if v is not None and v >= 10 else f"{v:.1f}" if v is not None else "n/a"
                          for v in values], textposition="outside",
                    hovertemplate=f"{label}: %{{x}} %{{y:.1f}} ms<extra></extra>", row=1, col=1)
        throughput = metrics.get("throughput_tok_s")
        fig.add_bar(x=["tok/s"], y=[throughput], name=label, marker_color=colour, legendgroup=label,
                    showlegend=False, text=[f"{throughput:.0f}" if throughput is not None else "n/a"],
                    textposition="outside", hovertemplate=f"{label}: %{{y:.0f}} tok/s<extra></extra>", row=1, col=2)
    fig.update_yaxes(type="log", title="ms", row=1, col=1)
    fig.update_yaxes(title="tok/s", rangemode="tozero", row=1, col=2)
    title = f"{kvlab_label} beside {vllm_label} on the same trace" if vllm_metrics is not None \
        else f"{kvlab_label} — {NO_VLLM}"
    fig.update_layout(template="plotly_white", height=420, barmode="group", title=title,
                      margin=dict(t=80, l=60, r=20, b=60),
                      legend=dict(orientation="h", yref="container", y=0, yanchor="bottom"))
    return fig
