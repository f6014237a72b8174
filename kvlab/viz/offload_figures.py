"""Figures of the tier below the pool, drawn from measurements and from the engine's step log.

* tier_bandwidth_figure — each tier's measured write and read GB/s beside the device's copy bandwidth;
* swap_vs_recompute_figure — swapping a request's K/V out and in against recomputing it, by context length,
  with the crossover where swapping starts to win;
* prefix_ttft_figure — TTFT of a prompt whose prefix is cold, cached in the pool, or loaded back from the tier;
* chatbot_tier_figure — the chatbot scenario with other traffic between its requests: TTFT per request and the
  prompt tokens the pool and the tier served, with and without the tier;
* tier_traffic_figure — per step: blocks in the pool, blocks in the tier, and the requests swapped out and in.
"""
from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .serving_figures import DECODE_COLOUR, PREEMPTED_COLOUR, PREFILL_COLOUR, _last_step, _now_line

TIER_COLOUR = "#7d3c98"
POOL_COLOUR = DECODE_COLOUR


def tier_bandwidth_figure(report: dict) -> go.Figure:
    """report: kvlab.bench.offload.tier_bandwidth's {"copy_gb_s", "rows": [{tier, write_gb_s, read_gb_s}]}."""
    rows = report["rows"]
    if not rows:
        raise ValueError("no tier measurements to draw")
    names = [r["tier"] for r in rows]
    fig = go.Figure()
    fig.add_bar(x=names, y=[r["write_gb_s"] for r in rows], name="write: pool → tier", marker_color=TIER_COLOUR,
                hovertemplate="%{x}: writes %{y:.2f} GB/s<extra></extra>")
    fig.add_bar(x=names, y=[r["read_gb_s"] for r in rows], name="read: tier → pool (checksums checked)",
                marker_color=POOL_COLOUR, hovertemplate="%{x}: reads %{y:.2f} GB/s<extra></extra>")
    copy = report["copy_gb_s"]
    fig.add_hline(y=copy, line=dict(color="black", dash="dash"),
                  annotation_text=f"device copy (read + write) {copy:.1f} GB/s", annotation_position="top left")
    fig.update_layout(template="plotly_white", barmode="group", height=360, margin=dict(t=60, l=60, r=20, b=60),
                      title="The tiers below the pool, measured on this machine", yaxis_title="GB/s",
                      legend=dict(orientation="h", y=-0.2, yanchor="top"))
    return fig


def swap_vs_recompute_figure(report: dict) -> go.Figure:
    """report: kvlab.bench.offload.swap_vs_recompute's {"rows": [{tokens, swap_s, recompute_s}], "crossover_tokens"}."""
    rows = sorted(report["rows"], key=lambda r: r["tokens"])
    if not rows:
        raise ValueError("no lengths to draw")
    tokens = [r["tokens"] for r in rows]
    fig = go.Figure()
    fig.add_scatter(x=tokens, y=[r["recompute_s"] * 1e3 for r in rows], mode="lines+markers",
                    name="recompute: prefill the tokens again", line_color=PREFILL_COLOUR,
                    hovertemplate="%{x} tokens: recompute %{y:.2f} ms<extra></extra>")
    fig.add_scatter(x=tokens, y=[r["swap_s"] * 1e3 for r in rows], mode="lines+markers",
                    name="swap: blocks to the tier and back", line_color=TIER_COLOUR,
                    customdata=[r["bytes"] / 2**20 for r in rows],
                    hovertemplate="%{x} tokens: swap %{y:.2f} ms (%{customdata:.2f} MiB each way)<extra></extra>")
    crossover = report.get("crossover_tokens")
    if crossover is not None:
        fig.add_vline(x=crossover, line=dict(color="black", dash="dot"),
                      annotation_text=f"swapping wins from {crossover} tokens", annotation_position="top")
    fig.update_xaxes(type="log", tickvals=tokens, title="tokens the preempted request holds")
    fig.update_yaxes(type="log", title="ms (out + in, or one prefill)")
    fig.update_layout(template="plotly_white", height=380, margin=dict(t=60, l=60, r=20, b=50),
                      title="Bring a preempted request back: copy its K/V or compute it again?",
                      legend=dict(orientation="h", y=-0.2, yanchor="top"))
    return fig


def prefix_ttft_figure(report: dict) -> go.Figure:
    """report: kvlab.bench.offload.prefix_hit_ttft's {cold_ttft_s, pool_hit_ttft_s, tier_hit_ttft_s, prefix_tokens}."""
    names = ["cold: prefill it all", "hit in the pool", "hit in the tier: load it back"]
    values = [report[k] * 1e3 for k in ("cold_ttft_s", "pool_hit_ttft_s", "tier_hit_ttft_s")]
    fig = go.Figure(go.Bar(x=names, y=values, marker_color=[PREFILL_COLOUR, POOL_COLOUR, TIER_COLOUR],
                           text=[f"{v:.0f} ms" for v in values], textposition="outside",
                           hovertemplate="%{x}: TTFT %{y:.1f} ms<extra></extra>"))
    fig.update_layout(template="plotly_white", height=340, margin=dict(t=60, l=60, r=20, b=40), yaxis_title="ms",
                      title=f"Time to first token of a prompt sharing a {report['prefix_tokens']}-token prefix")
    return fig


def chatbot_tier_figure(report: dict) -> go.Figure:
    """report: kvlab.bench.offload_chatbot.chatbot_tier's {"runs": {"pool", "tier"}: {"rows": [{kind, ttft_s,
    prompt_tokens, pool_hit_tokens, tier_hit_tokens}]}}."""
    runs = report["runs"]
    names = [f"{i + 1} · {r['kind']}" for i, r in enumerate(runs["pool"]["rows"])]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=("time to first token (ms)", "prompt tokens: served by … (left: pool only)"))
    for run, label, colour in (("pool", "pool only", PREFILL_COLOUR), ("tier", "pool + tier", TIER_COLOUR)):
        fig.add_bar(x=names, y=[r["ttft_s"] * 1e3 for r in runs[run]["rows"]], name=f"TTFT, {label}",
                    marker_color=colour, offsetgroup=run, row=1, col=1,
                    hovertemplate=f"%{{x}}, {label}: TTFT %{{y:.0f}} ms<extra></extra>")
    parts = (("pool_hit_tokens", "the pool", POOL_COLOUR), ("tier_hit_tokens", "the tier", TIER_COLOUR),
             (None, "prefill", PREFILL_COLOUR))
    for run, group in (("pool", "left"), ("tier", "right")):
        for key, label, colour in parts:
            rows = runs[run]["rows"]
            values = [r[key] if key else r["prompt_tokens"] - r["pool_hit_tokens"] - r["tier_hit_tokens"]
                      for r in rows]
            fig.add_bar(x=names, y=values, name=label, marker_color=colour, offsetgroup=group,
                        legendgroup=label, showlegend=run == "pool",
                        hovertemplate=f"%{{x}} ({'pool only' if run == 'pool' else 'pool + tier'}): %{{y}} tokens "
                                      f"from {label}<extra></extra>", row=1, col=2)
    # "relative": bars of one offset group stack (right), offset groups stand side by side (both panels)
    fig.update_layout(template="plotly_white", barmode="relative", height=400, margin=dict(t=70, l=60, r=20, b=60),
                      title=f"A chatbot's {report['shared_prompt_tokens']}-token system prompt, other traffic between "
                            "its requests", legend=dict(orientation="h", y=-0.2, yanchor="top"))
    return fig


def tier_traffic_figure(source, upto_step: int | None = None) -> go.Figure:
    """Per step of a run (a ServeResult or its steps): blocks in use in the pool and in the tier (top) and the
    requests swapped out and in, and preempted to recompute (bottom)."""
    steps = source.steps if hasattr(source, "steps") else list(source)
    if not steps:
        raise ValueError("the run has no steps")
    index = [s.index for s in steps]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12, row_heights=[0.6, 0.4],
                        subplot_titles=("blocks holding K/V", "requests moved per step"))
    fig.add_scatter(x=index, y=[s.blocks_used or 0 for s in steps], mode="lines", name="in the pool",
                    line=dict(color=POOL_COLOUR, shape="hv"), row=1, col=1,
                    hovertemplate="step %{x}: %{y} pool blocks<extra></extra>")
    fig.add_scatter(x=index, y=[s.tier_blocks_used or 0 for s in steps], mode="lines", name="in the tier",
                    line=dict(color=TIER_COLOUR, shape="hv"),
                    hovertemplate="step %{x}: %{y} tier blocks<extra></extra>",
                    row=1, col=1)
    recomputed = [len(s.preempted) - len(s.swapped_out) for s in steps]
    for values, name, colour in (([len(s.swapped_out) for s in steps], "swapped out", TIER_COLOUR),
                                 ([len(s.swapped_in) for s in steps], "swapped back in", POOL_COLOUR),
                                 (recomputed, "preempted to recompute", PREEMPTED_COLOUR)):
        fig.add_bar(x=index, y=values, name=name, marker_color=colour, row=2, col=1,
                    hovertemplate=f"step %{{x}}: %{{y}} {name}<extra></extra>")
    if upto_step is not None:
        _now_line(fig, _last_step(steps, upto_step))
    fig.update_yaxes(title="blocks", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title="requests", rangemode="tozero", row=2, col=1)
    fig.update_xaxes(title="engine step", row=2, col=1)
    fig.update_layout(template="plotly_white", height=400, barmode="group", margin=dict(t=60, l=60, r=20, b=50),
                      title="The pool and the tier below it, step by step",
                      legend=dict(orientation="h", y=-0.2, yanchor="top"))
    return fig
