"""Figures of speculative decoding, drawn from the engine's step log (StepRecord.speculation: kvlab.spec.SpecRow)
and from the benchmark's report (kvlab.bench.spec).

* drafts_figure — one row per verification of a sequence: its drafts coloured accepted / rejected, then the
  target's own token (the correction at the first rejection, or the bonus after the last accepted draft);
* spec_blocks_figure — per step: blocks in use, and blocks the rejected drafts had taken and gave back;
* running_acceptance_figure — α and tokens per target pass so far, as a replay advances;
* speedup_figure — decode speedup over plain greedy against k, per drafter and prompt kind;
* tokens_per_pass_figure — measured tokens per target pass against the i.i.d. formula (1 − α^(k+1)) / (1 − α);
* verify_cost_figure — one pass of T tokens against one decode step;
* layer_sweep_figure — the self-draft's candidate layer subsets: α and weight bytes per draft token.
"""
from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..spec import expected_tokens_per_pass

ACCEPTED, REJECTED, TARGET = "#1e8449", "#c0392b", "#2e86c1"
DRAFTER_COLOURS = {"ngram": "#d35400", "self": "#7d3c98"}


def _token_text(tokenizer, token: int) -> str:
    if tokenizer is None:
        return str(token)
    text = tokenizer.decode([token]).replace("\n", "⏎")
    return text if text.strip() else repr(text)[1:-1] or "·"


def verifications(steps, seq_id: int | None = None, upto_step: int | None = None) -> list[tuple[int, object]]:
    """(step index, SpecRow) of every verification (of one sequence), up to a step."""
    return [(s.index, row) for s in steps if upto_step is None or s.index <= upto_step
            for row in s.speculation if seq_id is None or row.seq_id == seq_id]


def drafts_figure(steps, tokenizer=None, seq_id: int = 0, upto_step: int | None = None, last: int = 12) -> go.Figure:
    """The last `last` verifications of `seq_id`, one row each: its drafts in order, accepted (green) or rejected
    (red), and in the last column the target's own token (blue) — the correction that replaced the first rejected
    draft, or the bonus after the last accepted one."""
    rows = verifications(steps, seq_id, upto_step)[-last:]
    width = max((len(row.drafted) for _, row in rows), default=1)
    labels = [f"step {step}" for step, _ in rows]
    cells = {"accepted draft": ([], [], [], ACCEPTED), "rejected draft": ([], [], [], REJECTED),
             "the target's own token": ([], [], [], TARGET)}
    for label, (_, row) in zip(labels, rows):
        for x, token in enumerate(row.drafted):
            kind = "accepted draft" if x < row.accepted else "rejected draft"
            for values, value in zip(cells[kind][:3], (x + 1, label, _token_text(tokenizer, token))):
                values.append(value)
        if len(row.emitted) > row.accepted:  # not cut by a stop
            own = cells["the target's own token"]
            for values, value in zip(own[:3], (width + 1.5, label, _token_text(tokenizer, row.emitted[row.accepted]))):
                values.append(value)
    fig = go.Figure()
    for name, (xs, ys, texts, colour) in cells.items():
        fig.add_scatter(x=xs, y=ys, text=[t[:7] for t in texts], customdata=texts, mode="markers+text", name=name,
                        marker=dict(symbol="square", size=30, color=colour), textposition="middle center",
                        textfont=dict(color="white", size=9),
                        hovertemplate=f"%{{y}}: %{{customdata}} ({name})<extra></extra>")
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=labels, autorange="reversed")
    fig.update_xaxes(tickvals=list(range(1, width + 1)) + [width + 1.5],
                     ticktext=[f"draft {i}" for i in range(1, width + 1)] + ["target's token"],
                     range=[0.4, width + 2.1])
    fig.update_layout(template="plotly_white", height=40 * len(rows) + 150, margin=dict(t=50, l=70, r=20, b=40),
                      title=f"Sequence {seq_id}: what each verification kept", legend=dict(orientation="h", y=-0.1,
                                                                                          yanchor="top"))
    return fig


def spec_blocks_figure(steps, upto_step: int | None = None) -> go.Figure:
    """Blocks in use after each step, and the blocks rejected drafts had taken and gave back (rollback)."""
    index = [s.index for s in steps]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12, row_heights=[0.6, 0.4],
                        subplot_titles=("blocks in use after the step", "blocks given back by rollback"))
    fig.add_scatter(x=index, y=[s.blocks_used or 0 for s in steps], mode="lines", line=dict(shape="hv", color=TARGET),
                    name="in use", row=1, col=1)
    fig.add_bar(x=index, y=[sum(r.blocks_rolled_back for r in s.speculation) for s in steps], name="rolled back",
                marker_color=REJECTED, row=2, col=1)
    if upto_step is not None:
        for row in (1, 2):
            fig.add_vline(x=upto_step + 0.5, line=dict(color="black", dash="dot"), row=row, col=1)
    fig.update_xaxes(title="engine step", row=2, col=1)
    fig.update_layout(template="plotly_white", height=360, margin=dict(t=60, l=60, r=20, b=50), showlegend=False,
                      title="The pool: drafts take slots, rejected ones give them back")
    return fig


def running_acceptance(steps, upto_step: int | None = None) -> dict:
    """α and tokens per target pass over the verifications so far."""
    rows = [row for _, row in verifications(steps, upto_step=upto_step)]
    proposed = sum(len(r.drafted) for r in rows)
    accepted = sum(r.accepted for r in rows)
    return dict(passes=len(rows), proposed=proposed, accepted=accepted,
                alpha=accepted / proposed if proposed else float("nan"),
                tokens_per_pass=sum(len(r.emitted) for r in rows) / len(rows) if rows else float("nan"))


def _none(value: float):
    """NaN (nothing verified yet) → None: a gap in the line, and JSON a widget can send."""
    return None if value != value else value


def running_acceptance_figure(steps, k: int, upto_step: int | None = None) -> go.Figure:
    index = [s.index for s in steps if upto_step is None or s.index <= upto_step]
    so_far = [running_acceptance(steps, i) for i in index]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("α so far (drafts accepted ÷ proposed)",
                                                        "tokens per target pass so far"))
    fig.add_scatter(x=index, y=[_none(r["alpha"]) for r in so_far], mode="lines", line_color=ACCEPTED, name="α",
                    row=1, col=1)
    fig.add_scatter(x=index, y=[_none(r["tokens_per_pass"]) for r in so_far], mode="lines", line_color=TARGET,
                    name="measured", row=1, col=2)
    fig.add_scatter(x=index, y=[expected_tokens_per_pass(r["alpha"], k) if r["proposed"] else None for r in so_far],
                    mode="lines", line=dict(color="black", dash="dot"), name="(1 − α^(k+1)) / (1 − α)", row=1, col=2)
    fig.update_yaxes(range=[0, 1.05], row=1, col=1)
    fig.update_yaxes(range=[0, k + 1.2], row=1, col=2)
    fig.update_xaxes(title="engine step")
    fig.update_layout(template="plotly_white", height=300, margin=dict(t=50, l=50, r=20, b=50),
                      legend=dict(orientation="h", y=-0.3))
    return fig


# --- from the benchmark ---------------------------------------------------------------------------------------

def _mean_by(rows, key):
    groups = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    return groups


def speedup_figure(report: dict) -> go.Figure:
    """report["speed"]: decode speedup against k, one line per (drafter, prompt kind), mean over its prompts."""
    rows = report["speed"]["rows"]
    fig = go.Figure()
    for (drafter, kind), group in sorted(_mean_by(rows, lambda r: (r["drafter"], r["kind"])).items()):
        by_k = _mean_by(group, lambda r: r["k"])
        ks = sorted(by_k)
        fig.add_scatter(x=ks, y=[sum(r["speedup"] for r in by_k[k]) / len(by_k[k]) for k in ks], mode="lines+markers",
                        name=f"{drafter}, {kind} prompts", line=dict(color=DRAFTER_COLOURS.get(drafter),
                                                                     dash="solid" if kind == "grounded" else "dash"),
                        hovertemplate=f"{drafter}, {kind}: k=%{{x}}: %{{y:.2f}}×<extra></extra>")
    fig.add_hline(y=1, line=dict(color="black", dash="dot"), annotation_text="plain greedy decoding")
    fig.update_xaxes(title="k (drafts per verification)", dtick=1)
    fig.update_yaxes(title="decode speedup (×)", rangemode="tozero")
    fig.update_layout(template="plotly_white", height=380, margin=dict(t=60, l=60, r=20, b=50),
                      title="Speculative decoding against plain greedy, measured on this machine",
                      legend=dict(orientation="h", y=-0.2))
    return fig


def tokens_per_pass_figure(report: dict) -> go.Figure:
    """Measured tokens per target pass against the i.i.d. formula at the measured α, every (prompt, drafter, k)."""
    rows = [r for r in report["speed"]["rows"] if r["proposed"]]
    fig = go.Figure()
    for drafter in sorted({r["drafter"] for r in rows}):
        mine = [r for r in rows if r["drafter"] == drafter]
        fig.add_scatter(x=[r["iid_tokens_per_pass"] for r in mine], y=[r["tokens_per_pass"] for r in mine],
                        mode="markers", name=drafter, marker=dict(color=DRAFTER_COLOURS.get(drafter), size=9),
                        customdata=[[r["prompt"], r["k"], r["alpha"]] for r in mine],
                        hovertemplate="%{customdata[0]}, k=%{customdata[1]}, α %{customdata[2]:.2f}: formula "
                                      "%{x:.2f}, measured %{y:.2f}<extra></extra>")
    top = max([r["iid_tokens_per_pass"] for r in rows] + [r["tokens_per_pass"] for r in rows] + [1.5])
    fig.add_scatter(x=[1, top], y=[1, top], mode="lines", line=dict(color="black", dash="dot"), name="equal")
    fig.update_xaxes(title="(1 − α^(k+1)) / (1 − α) at the measured α")
    fig.update_yaxes(title="measured tokens per target pass")
    fig.update_layout(template="plotly_white", height=380, margin=dict(t=60, l=60, r=20, b=50),
                      title="Are acceptances independent? Measured against the i.i.d. formula")
    return fig


def verify_cost_figure(report: dict) -> go.Figure:
    verify = report["verify_cost"]
    widths = [r["width"] for r in verify["rows"]]
    fig = go.Figure()
    fig.add_scatter(x=widths, y=[r["relative"] for r in verify["rows"]], mode="lines+markers", name="measured",
                    line_color=TARGET, customdata=[r["time_s"] * 1e3 for r in verify["rows"]],
                    hovertemplate="%{x} tokens: %{y:.2f}× a decode step (%{customdata:.1f} ms)<extra></extra>")
    fig.add_scatter(x=widths, y=widths, mode="lines", line=dict(color="black", dash="dot"),
                    name="k + 1 separate steps")
    fig.add_hline(y=1, line=dict(color=ACCEPTED, dash="dash"), annotation_text="one decode step")
    fig.update_xaxes(type="log", title="tokens in one pass (last token + k drafts)", tickvals=widths)
    fig.update_yaxes(type="log", title="time ÷ one decode step")
    fig.update_layout(template="plotly_white", height=360, margin=dict(t=60, l=60, r=20, b=50),
                      title=f"What verifying costs, over {verify['context']} cached tokens",
                      legend=dict(orientation="h", y=-0.25))
    return fig


def layer_sweep_figure(report: dict) -> go.Figure:
    sweep = report["layer_sweep"]
    names = [r["name"] for r in sweep["rows"]]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("α (greedy)", "weight MB read per draft token"))
    colours = [ACCEPTED if n == sweep["best"] else "#95a5a6" for n in names]
    fig.add_bar(x=names, y=[r["alpha"] for r in sweep["rows"]], marker_color=colours, row=1, col=1,
                hovertemplate="%{x}: α %{y:.2f}<extra></extra>")
    fig.add_bar(x=names, y=[r["weight_bytes"] / 1e6 for r in sweep["rows"]], marker_color=colours, row=1, col=2,
                hovertemplate="%{x}: %{y:.0f} MB<extra></extra>")
    fig.add_hline(y=sweep["target_weight_bytes"] / 1e6, line=dict(color="black", dash="dot"),
                  annotation_text="the target", row=1, col=2)
    fig.update_layout(template="plotly_white", height=380, showlegend=False, margin=dict(t=60, l=50, r=20, b=110),
                      title=f"Self-draft: which of the target's layers to keep (chosen: {sweep['best']})")
    return fig
