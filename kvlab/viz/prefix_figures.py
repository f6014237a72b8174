"""Figures of prefix caching, drawn from a measured scenario (kvlab.bench.prefix.measure_scenario's report)."""
from __future__ import annotations

import plotly.graph_objects as go

COLD_COLOUR = "#c0392b"
WARM_COLOUR = "#1e8449"
CACHED_COLOUR = "#1e8449"
COMPUTED_COLOUR = "#f5b041"


def _short(label: str, chars: int = 28) -> str:
    return label if len(label) <= chars else label[: chars - 1] + "…"


def ttft_figure(scenario: dict) -> go.Figure:
    """Time to first token of each request: its own fresh cache (cold) vs one prefix cache shared by all (warm)."""
    rows = scenario["requests"]
    labels = [f"{i + 1}. {_short(r['label'])}" for i, r in enumerate(rows)]
    hover = [f"{r['prompt_tokens']} prompt tokens, {r['cached_tokens']} from the cache, {r['computed_tokens']} computed"
             for r in rows]
    fig = go.Figure()
    fig.add_bar(x=labels, y=[r["cold_ttft_s"] * 1e3 for r in rows], name="cold: prefill the whole prompt",
                marker_color=COLD_COLOUR, hovertext=hover)
    fig.add_bar(x=labels, y=[r["warm_ttft_s"] * 1e3 for r in rows], name="warm: prefill what the cache lacks",
                marker_color=WARM_COLOUR, hovertext=hover)
    reduction = scenario["ttft_reduction"]
    fig.update_layout(barmode="group", template="plotly_white", height=400, yaxis_title="time to first token (ms)",
                      title=f"{scenario['name']}: median TTFT {scenario['cold_ttft_s'] * 1e3:.0f} ms cold → "
                            f"{scenario['warm_ttft_s'] * 1e3:.0f} ms warm ({reduction:.0%} less; request 1 fills the cache)",
                      legend=dict(orientation="h", y=-0.35))
    return fig


def prompt_tokens_figure(scenario: dict) -> go.Figure:
    """Each request's prompt split into tokens served from the cache and tokens prefilled."""
    rows = scenario["requests"]
    labels = [f"{i + 1}. {_short(r['label'], 40)}" for i, r in enumerate(rows)]
    fig = go.Figure()
    fig.add_bar(y=labels, x=[r["cached_tokens"] for r in rows], name="from the prefix cache", orientation="h",
                marker_color=CACHED_COLOUR)
    fig.add_bar(y=labels, x=[r["computed_tokens"] for r in rows], name="prefilled", orientation="h",
                marker_color=COMPUTED_COLOUR)
    fig.update_layout(barmode="stack", template="plotly_white", height=120 + 34 * len(rows),
                      xaxis_title="prompt tokens", yaxis_autorange="reversed",
                      title=f"{scenario['name']}: {scenario['hit_rate']:.0%} of prompt tokens served from the cache",
                      legend=dict(orientation="h", y=-0.2))
    return fig
