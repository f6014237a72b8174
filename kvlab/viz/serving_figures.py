"""Figures of the serving engine, drawn from its public record: the step log (StepRecord) and the per-request
outputs (RequestOutput) of a ServeResult, and snapshots of the block pool taken between steps.

* gantt_figure — one row per request, one cell per step: waiting, prefill chunk, recompute after preemption,
  decode, or running but not scheduled; a cross where it was preempted, a diamond where it finished;
* batch_composition_figure / step_composition_figure — prefill and decode tokens per step under the budget;
* slot_occupancy_figure — the share of max_num_seqs that computed something, and KV usage, per step (one line
  per run: static beside continuous);
* running_metrics / running_metrics_figure — throughput and TTFT so far, as a replay advances;
* step_cost_figure — a decode step's time and tokens/s against the batch;
* latency_throughput_figure — TTFT p50/p99 against throughput, one point per request rate, under a TTFT SLO;
* pool_snapshot — the pool's public state after a step, in the shape paged_figures.pool_figure draws.

The engine does not know it is drawn; what a request did in a step is read back from the log alone (a step
emitted a token for a request when that request's token times hold the step's end time).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..engine.metrics import StepRecord, percentile
from .paged_figures import FREE_COLOUR, sequence_colour

STATES = {  # kind → (colour, legend)
    "waiting": ("#d5d8dc", "waiting (arrived, not running)"),
    "prefill": ("#e67e22", "prefill chunk"),
    "recompute": ("#8e44ad", "recompute after preemption"),
    "decode": ("#2e86c1", "decode: one token"),
    "stalled": ("#f7dc6f", "running, not scheduled"),
}
PREEMPTED_COLOUR = "#c0392b"
FINISHED_COLOUR = "#1e8449"
FUTURE_OPACITY = 0.25  # cells after the replayed step
NOW_COLOUR = "#17202a"
PREFILL_COLOUR, DECODE_COLOUR = STATES["prefill"][0], STATES["decode"][0]
TTFT_SLO_S = 0.5


# --- what each request did in each step, from the log ---------------------------------------------------

@dataclass(frozen=True)
class Cell:
    """One request's state during one step."""
    seq_id: int
    step: int
    kind: str  # a key of STATES
    tokens: int  # tokens it fed the model this step (0 when it computed nothing)
    emitted: bool  # the step gave it a new token
    text: str  # what happened, for hovering


@dataclass(frozen=True)
class Timeline:
    cells: list[Cell]
    preempted: list[tuple[int, int]]  # (seq id, step): preempted when that step was scheduled (blocks freed)
    finished: list[tuple[int, int]]  # (seq id, step): its last token came out of that step

    def of(self, seq_id: int, kind: str | None = None) -> list[Cell]:
        return [c for c in self.cells if c.seq_id == seq_id and (kind is None or c.kind == kind)]


def steps_and_outputs(source) -> tuple[list[StepRecord], list]:
    """A ServeResult, or (steps, outputs) — e.g. an engine's `steps` and `result().outputs` part-way."""
    if hasattr(source, "steps") and hasattr(source, "outputs"):
        return list(source.steps), list(source.outputs)
    steps, outputs = source
    return list(steps), list(outputs)


def timeline(steps: list[StepRecord], outputs: list) -> Timeline:
    """Every (request, step) the request was in the engine, classified from the step log."""
    by_seq = {o.seq_id: o for o in outputs}
    token_index = {o.seq_id: {t: i for i, t in enumerate(o.token_times_s)} for o in outputs}
    was_preempted: set[int] = set()
    cells, preempted, finished = [], [], []
    for step in steps:
        prefill = dict(step.prefill)
        for seq in step.preempted:
            was_preempted.add(seq)
            preempted.append((seq, step.index))
        for seq in step.finished:
            finished.append((seq, step.index))
        present = set(step.decode) | set(prefill) | set(step.running) | set(step.waiting) | set(step.finished)
        for seq in sorted(present):
            out = by_seq.get(seq)
            n_out = len(out.token_ids) if out is not None else 0
            k = token_index.get(seq, {}).get(step.end_s)  # which of its tokens this step gave, if any
            emitted = k is not None
            got = f" → token {k + 1} of {n_out}" if emitted else ""
            if seq in step.decode:
                kind, tokens, what = "decode", 1, f"decode 1 token{got}"
            elif seq in prefill:
                kind = "recompute" if seq in was_preempted else "prefill"
                tokens = prefill[seq]
                label = "recompute chunk (after preemption)" if kind == "recompute" else "prefill chunk"
                what = f"{label}: {tokens} tokens{got}"
            elif seq in step.running:
                kind, tokens, what = "stalled", 0, "running, not scheduled this step (token budget spent)"
            elif seq in step.waiting:
                kind, tokens = "waiting", 0
                what = ("preempted: blocks freed, waiting to recompute" if seq in step.preempted else
                        "waiting to recompute" if seq in was_preempted else
                        f"waiting (arrived at {out.arrival_s:.2f} s)" if out is not None else "waiting")
            else:
                continue  # finished by a fork's logits without being scheduled: nothing to draw
            if seq in step.finished:
                what += f" · finished ({out.finish_reason})" if out is not None else " · finished"
            text = (f"seq {seq} · step {step.index} · t {step.start_s:.2f}–{step.end_s:.2f} s<br>{what}")
            cells.append(Cell(seq, step.index, kind, tokens, emitted, text))
    return Timeline(cells, preempted, finished)


def _last_step(steps: list[StepRecord], upto_step: int | None) -> int:
    if not steps:
        raise ValueError("the run has no steps")
    if upto_step is None:
        return len(steps) - 1
    if isinstance(upto_step, bool) or not isinstance(upto_step, int) or not 0 <= upto_step < len(steps):
        raise ValueError(f"upto_step must be a step index from 0 to {len(steps) - 1}, got {upto_step!r}")
    return upto_step


def _now_line(fig, x: float, label: str | None = None) -> None:
    """The replay's "now": a dotted line named "now" (a widget moves it), in every subplot."""
    label = dict(annotation_text=label, annotation_position="top") if label else {}
    fig.add_vline(x=x, line=dict(color=NOW_COLOUR, width=2, dash="dot"), name="now", **label)


def _spans(steps, x: str):
    """Per step: (start, width) on the chosen x axis; 'step' centres cell k on k."""
    if x == "step":
        return [(s.index - 0.5, 1.0) for s in steps]
    if x == "time":
        return [(s.start_s, s.end_s - s.start_s) for s in steps]
    raise ValueError(f"x must be 'step' or 'time', got {x!r}")


# --- the Gantt chart -----------------------------------------------------------------------------------

def gantt_figure(source, upto_step: int | None = None, x: str = "step") -> go.Figure:
    """One row per request (seq id), a cell per step it spent in the engine, coloured by what it did; with
    `upto_step`, later cells are faded and a line marks the end of that step (the replay's "now")."""
    steps, outputs = steps_and_outputs(source)
    now = _last_step(steps, upto_step) if upto_step is not None else None
    spans = _spans(steps, x)
    line = timeline(steps, outputs)
    rows = [f"seq {o.seq_id}" for o in outputs]
    fig = go.Figure()
    for kind, (colour, legend) in STATES.items():
        cells = [c for c in line.cells if c.kind == kind]
        if not cells:
            continue
        fig.add_bar(
            y=[f"seq {c.seq_id}" for c in cells], x=[spans[c.step][1] for c in cells],
            base=[spans[c.step][0] for c in cells], orientation="h", name=legend, width=0.7,
            customdata=[c.step for c in cells], hovertext=[c.text for c in cells], hoverinfo="text",
            marker=dict(color=colour, line=dict(color="white", width=0.5),
                        opacity=[1.0 if now is None or c.step <= now else FUTURE_OPACITY for c in cells]))
    for name, points, symbol, colour, at_end in (
            ("preempted", line.preempted, "x", PREEMPTED_COLOUR, False),
            ("finished", line.finished, "diamond", FINISHED_COLOUR, True)):
        if not points:
            continue
        fig.add_scatter(
            y=[f"seq {s}" for s, _ in points], x=[spans[k][0] + (spans[k][1] if at_end else 0) for _, k in points],
            mode="markers", name=name, customdata=[k for _, k in points],
            hovertext=[f"seq {s} {name} at step {k}" for s, k in points], hoverinfo="text",
            marker=dict(symbol=symbol, size=11 if name == "preempted" else 8, color=colour,
                        line=dict(color="white", width=1),
                        opacity=[1.0 if now is None or k <= now else FUTURE_OPACITY for _, k in points]))
    if now is not None:
        start, width = spans[now]
        _now_line(fig, start + width, f"after step {now}")
    sizes = {o.seq_id: f"{len(o.prompt_token_ids)}→{len(o.token_ids)}" for o in outputs}
    ticks = [f"<span style='color:{sequence_colour(o.seq_id)}'>■</span> seq {o.seq_id} · {sizes[o.seq_id]}"
             for o in outputs]
    fig.update_yaxes(categoryorder="array", categoryarray=rows, tickvals=rows, ticktext=ticks, autorange="reversed",
                     title="request (prompt → output tokens)")
    fig.update_xaxes(title="engine step" if x == "step" else "engine clock (s)", rangemode="tozero")
    preemptions = len(line.preempted)
    fig.update_layout(
        title=f"Requests over the run: {len(outputs)} requests, {len(steps)} steps, "
              f"{preemptions} preemption{'s' * (preemptions != 1)}", barmode="overlay", template="plotly_white",
        height=max(320, 170 + 20 * len(rows)), margin=dict(t=70, l=150, r=20, b=110),
        legend=dict(orientation="h", x=0, xanchor="left", yref="container", y=0, yanchor="bottom"), bargap=0.2)
    return fig


# --- what each step computed ---------------------------------------------------------------------------

def batch_composition_figure(source, budget: int | None = None, upto_step: int | None = None) -> go.Figure:
    """Prefill and decode tokens stacked per step, under the token budget (max_num_batched_tokens; read from a
    ServeResult, or given)."""
    steps = source.steps if hasattr(source, "steps") else list(source)
    budget = budget if budget is not None else getattr(source, "max_num_batched_tokens", None)
    index = [s.index for s in steps]
    fig = go.Figure()
    fig.add_bar(x=index, y=[s.prefill_tokens for s in steps], name="prefill tokens", marker_color=PREFILL_COLOUR,
                customdata=[len(s.prefill) for s in steps],
                hovertemplate="step %{x}: %{y} prefill tokens in %{customdata} chunks<extra></extra>")
    fig.add_bar(x=index, y=[s.decode_tokens for s in steps], name="decode tokens (one per sequence)",
                marker_color=DECODE_COLOUR, hovertemplate="step %{x}: %{y} decode tokens<extra></extra>")
    if budget is not None:
        fig.add_hline(y=budget, line=dict(color="black", dash="dash"),
                      annotation_text=f"token budget {budget}", annotation_position="top left")
    if upto_step is not None:
        _now_line(fig, _last_step(steps, upto_step) + 0.5, f"after step {upto_step}")
    fig.update_layout(barmode="stack", bargap=0.1, template="plotly_white", height=340,
                      title="Tokens each step fed the model: prefill chunks and decode tokens",
                      xaxis_title="engine step", yaxis_title="tokens", yaxis_rangemode="tozero",
                      margin=dict(t=60, l=60, r=20, b=50))
    return fig


def step_composition_figure(step: StepRecord, budget: int | None = None) -> go.Figure:
    """One step's batch as one bar: each scheduled sequence's tokens (its colour, as in the pool), then the
    budget left unused."""
    fig = go.Figure()
    chunks = [(s, 1, "decode") for s in step.decode] + [(s, n, "prefill") for s, n in step.prefill]
    for seq, tokens, kind in chunks:
        fig.add_bar(y=["batch"], x=[tokens], orientation="h", name=f"seq {seq}", showlegend=False,
                    marker=dict(color=sequence_colour(seq), line=dict(color="white", width=1),
                                pattern=dict(shape="/" if kind == "prefill" else "")),
                    text=[f"seq {seq}: {kind} {tokens}"], textposition="inside", insidetextanchor="middle",
                    hovertemplate=f"seq {seq}: {kind}, {tokens} token{'s' * (tokens != 1)}<extra></extra>")
    used = step.prefill_tokens + step.decode_tokens
    if budget is not None and budget > used:
        fig.add_bar(y=["batch"], x=[budget - used], orientation="h", name="unused budget", showlegend=False,
                    marker_color=FREE_COLOUR, text=[f"unused {budget - used}"], textposition="inside",
                    hovertemplate="budget left unused: %{x} tokens<extra></extra>")
    of_budget = f" of the {budget}-token budget" if budget is not None else ""
    fig.update_layout(
        barmode="stack", template="plotly_white", height=170, margin=dict(t=50, l=60, r=20, b=30),
        title=f"Step {step.index}: {step.decode_tokens} decode + {step.prefill_tokens} prefill tokens{of_budget} "
              f"· {step.num_scheduled} of {step.max_num_seqs} slots busy",
        xaxis=dict(title="tokens (hatched: prefill)", rangemode="tozero"), yaxis=dict(visible=False))
    return fig


def slot_occupancy_figure(runs, x: str = "step", upto_step: int | None = None) -> go.Figure:
    """Slot occupancy (sequences computing ÷ max_num_seqs) and KV usage (share of the pool in use) per step,
    one line per run: a ServeResult, or {label: ServeResult} to compare (static beside continuous)."""
    if hasattr(runs, "steps"):
        runs = {f"{runs.policy} batching": runs}
    runs = dict(runs)
    if not runs:
        raise ValueError("no runs to draw")
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12, subplot_titles=(
        "slots busy: sequences computing ÷ max_num_seqs", "KV cache in use: share of the pool"))
    palette = ["#2e86c1", "#e67e22", "#1e8449", "#8e44ad", "#c0392b"]
    for i, (label, run) in enumerate(runs.items()):
        colour = palette[i % len(palette)]
        xs = [s.index for s in run.steps] if x == "step" else [s.end_s for s in run.steps] if x == "time" else None
        if xs is None:
            raise ValueError(f"x must be 'step' or 'time', got {x!r}")
        m = run.metrics()
        fig.add_scatter(x=xs, y=[s.occupancy for s in run.steps], mode="lines", line=dict(color=colour, shape="hv"),
                        name=f"{label}: {m['mean_occupancy']:.0%} busy on average, {len(run.steps)} steps",
                        legendgroup=label, hovertemplate="%{x}: %{y:.0%} of the slots<extra>" + label + "</extra>",
                        row=1, col=1)
        fig.add_scatter(x=xs, y=[s.kv_usage for s in run.steps], mode="lines", showlegend=False, legendgroup=label,
                        line=dict(color=colour, shape="hv"),
                        hovertemplate="%{x}: %{y:.0%} of the pool<extra>" + label + "</extra>", row=2, col=1)
    if upto_step is not None:
        _now_line(fig, upto_step)
    fig.update_yaxes(tickformat=".0%", range=[0, 1.05])
    fig.update_xaxes(title="engine step" if x == "step" else "engine clock (s)", row=2, col=1)
    fig.update_layout(template="plotly_white", height=420, margin=dict(t=60, l=60, r=20, b=50),
                      title="How full the batch and the cache were, step by step",
                      legend=dict(orientation="h", y=-0.18, yanchor="top"))
    return fig


# --- metrics as a replay advances ----------------------------------------------------------------------

def running_metrics(source, upto_step: int | None = None) -> dict:
    """Throughput and TTFT as they stood at the end of step `upto_step` (default: the last step, where they
    equal ServeResult.metrics()): output tokens so far ÷ time since the first arrival, and the TTFT of every
    request that had its first token by then."""
    steps, outputs = steps_and_outputs(source)
    k = _last_step(steps, upto_step)
    now_s = steps[k].end_s
    start_s = min(o.arrival_s for o in outputs)
    tokens = sum(s.tokens_out for s in steps[:k + 1])
    ttft = [o.first_token_s - o.arrival_s for o in outputs if o.first_token_s is not None and o.first_token_s <= now_s]
    elapsed = now_s - start_s
    return {"step": k, "time_s": now_s, "elapsed_s": elapsed, "output_tokens": tokens,
            "throughput_tok_s": tokens / elapsed if elapsed > 0 else float("nan"),
            "first_tokens": len(ttft), "ttft_p50_s": percentile(ttft, 50), "ttft_p99_s": percentile(ttft, 99),
            "finished": sum(len(s.finished) for s in steps[:k + 1]), "requests": len(outputs),
            "running": len(steps[k].running), "waiting": len(steps[k].waiting)}


def describe_metrics(m: dict) -> str:
    """running_metrics as one line of text."""
    ttft = (f"TTFT p50 {m['ttft_p50_s'] * 1e3:.0f} ms / p99 {m['ttft_p99_s'] * 1e3:.0f} ms over "
            f"{m['first_tokens']} first tokens" if m["first_tokens"] else "no first token yet")
    return (f"after step {m['step']} (t = {m['time_s']:.2f} s): {m['output_tokens']} tokens out, "
            f"{m['throughput_tok_s']:.1f} tok/s so far · {ttft} · {m['finished']} of {m['requests']} finished, "
            f"{m['running']} running, {m['waiting']} waiting")


def running_metrics_figure(source, upto_step: int | None = None) -> go.Figure:
    """Throughput so far after each step (top) and each request's TTFT at the step its first token came out
    (bottom), with the running p50."""
    steps, outputs = steps_and_outputs(source)
    series = [running_metrics((steps, outputs), s.index) for s in steps]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12, subplot_titles=(
        "throughput so far: output tokens ÷ time since the first arrival", "time to first token"))
    index = [s.index for s in steps]
    fig.add_scatter(x=index, y=[m["throughput_tok_s"] for m in series], mode="lines", name="tokens/s so far",
                    line_color=DECODE_COLOUR, hovertemplate="after step %{x}: %{y:.1f} tok/s<extra></extra>",
                    row=1, col=1)
    step_of_end = {s.end_s: s.index for s in steps}
    firsts = sorted((step_of_end[o.first_token_s], o.seq_id, o.ttft_s) for o in outputs
                    if o.first_token_s in step_of_end)
    fig.add_scatter(x=[k for k, _, _ in firsts], y=[t * 1e3 for _, _, t in firsts], mode="markers",
                    name="a request's TTFT", marker=dict(color=[sequence_colour(s) for _, s, _ in firsts], size=8),
                    customdata=[s for _, s, _ in firsts],
                    hovertemplate="seq %{customdata}: first token at step %{x}, TTFT %{y:.0f} ms<extra></extra>",
                    row=2, col=1)
    fig.add_scatter(x=index, y=[m["ttft_p50_s"] * 1e3 for m in series], mode="lines", name="TTFT p50 so far",
                    line=dict(color="black", shape="hv"), row=2, col=1,
                    hovertemplate="after step %{x}: p50 %{y:.0f} ms<extra></extra>")
    if upto_step is not None:
        _now_line(fig, _last_step(steps, upto_step))
    fig.update_yaxes(title="tok/s", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title="ms", rangemode="tozero", row=2, col=1)
    fig.update_xaxes(title="engine step", row=2, col=1)
    fig.update_layout(template="plotly_white", height=420, margin=dict(t=60, l=60, r=20, b=50),
                      title="As the replay advances: throughput and TTFT so far",
                      legend=dict(orientation="h", y=-0.18, yanchor="top"))
    return fig


# --- many runs: what a batch costs, latency against throughput -------------------------------------------

def step_cost_figure(rows: list[dict]) -> go.Figure:
    """A decode step's measured time against the batch (left) and the tokens/s it gives (right), beside the line
    a step costing the same at every batch would give: rows of {batch, step_ms, tok_s} (kvlab.bench.serve's
    step_costs)."""
    if not rows:
        raise ValueError("no step costs to draw")
    rows = sorted(rows, key=lambda r: r["batch"])
    batches = [r["batch"] for r in rows]
    first = rows[0]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12, subplot_titles=(
        "one decode step: wall time", "tokens per second: batch ÷ step time"))
    fig.add_scatter(x=batches, y=[r["step_ms"] for r in rows], mode="lines+markers", name="step time",
                    line_color=DECODE_COLOUR, hovertemplate="batch %{x}: %{y:.1f} ms a step<extra></extra>",
                    row=1, col=1)
    fig.add_scatter(x=batches, y=[r["tok_s"] for r in rows], mode="lines+markers", name="tokens/s, measured",
                    line_color=FINISHED_COLOUR, hovertemplate="batch %{x}: %{y:.1f} tok/s<extra></extra>",
                    row=1, col=2)
    fig.add_scatter(x=batches, y=[first["tok_s"] * b / first["batch"] for b in batches], mode="lines",
                    name=f"if every step cost batch {first['batch']}'s", line=dict(color="black", dash="dash"),
                    hovertemplate="batch %{x}: %{y:.1f} tok/s<extra></extra>", row=1, col=2)
    fig.update_xaxes(type="log", tickvals=batches, title="batch (sequences decoding)")
    fig.update_yaxes(title="ms", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title="tok/s", rangemode="tozero", row=1, col=2)
    fig.update_layout(template="plotly_white", height=380, margin=dict(t=70, l=60, r=20, b=50),
                      title="What a batch costs: the step barely slows while the weights' read is shared",
                      legend=dict(orientation="h", yref="container", y=0, yanchor="bottom"))
    return fig


POINT_KEYS = ("rate_per_s", "throughput_tok_s", "ttft_p50_s", "ttft_p99_s")


def _point(p) -> tuple[float, float, float, float]:
    values = tuple(p[k] for k in POINT_KEYS) if isinstance(p, dict) else tuple(p)
    if len(values) != 4:
        raise ValueError(f"a point is (rate_per_s, throughput_tok_s, ttft_p50_s, ttft_p99_s), got {p!r}")
    return tuple(float(v) for v in values)


def latency_throughput_figure(points, slo_ttft_s: float = TTFT_SLO_S) -> go.Figure:
    """TTFT p50 and p99 against throughput, one point per request rate, under a TTFT objective. `points`: a list
    of (rate_per_s, throughput_tok_s, ttft_p50_s, ttft_p99_s) or dicts with those keys — or {label: list} for
    several policies."""
    series = points if isinstance(points, dict) else {"": points}
    fig = go.Figure()
    palette = ["#2e86c1", "#e67e22", "#1e8449", "#8e44ad"]
    for i, (label, rows) in enumerate(series.items()):
        rows = sorted((_point(p) for p in rows), key=lambda r: r[0])
        colour, name = palette[i % len(palette)], f"{label} " if label else ""
        rates = [f"{r:g} req/s" for r, *_ in rows]
        for q, column, dash in (("p50", 2, "solid"), ("p99", 3, "dash")):
            fig.add_scatter(x=[r[1] for r in rows], y=[r[column] * 1e3 for r in rows], mode="lines+markers+text",
                            name=f"{name}TTFT {q}", line=dict(color=colour, dash=dash),
                            text=rates if q == "p99" else None,
                            textposition="top center", textfont=dict(size=10, color=colour), customdata=rates,
                            hovertemplate=f"%{{customdata}}: %{{x:.1f}} tok/s, TTFT {q} %{{y:.0f}} ms<extra></extra>")
    fig.add_hline(y=slo_ttft_s * 1e3, line=dict(color=PREEMPTED_COLOUR, dash="dot"),
                  annotation_text=f"TTFT {slo_ttft_s * 1e3:.0f} ms", annotation_position="top left")
    fig.update_xaxes(title="throughput (output tokens/s)", rangemode="tozero")
    fig.update_yaxes(title="time to first token (ms, log)", type="log")
    fig.update_layout(template="plotly_white", height=420, margin=dict(t=60, l=70, r=20, b=50),
                      title="Latency against throughput: each point a request rate; past the knee TTFT explodes")
    return fig


# --- the block pool between steps ----------------------------------------------------------------------

@dataclass(frozen=True)
class AllocatorSnapshot:
    num_blocks: int
    ref_counts: list[int]
    lru: list[int] = field(default_factory=list)  # a prefix cache's evictable blocks, next evicted first

    @property
    def num_free(self) -> int:
        return sum(1 for r in self.ref_counts if r == 0) - len(self.lru)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free - len(self.lru)

    def lru_order(self) -> list[int]:
        return list(self.lru)


@dataclass(frozen=True)
class PoolSnapshot:
    """A paged cache's public state at one moment (block tables, lengths, reference counts), copied: what
    paged_figures.pool_figure reads, for replaying the pool after a run."""
    block_size: int
    block_tables: dict[int, list[int]]
    lengths: dict[int, int]
    allocator: AllocatorSnapshot
    block_bytes: int

    def reserved_bytes(self) -> int:
        return self.allocator.num_used * self.block_bytes

    def pool_bytes(self) -> int:
        return self.allocator.num_blocks * self.block_bytes


def pool_snapshot(cache) -> PoolSnapshot | None:
    """Copy a paged cache's pool state (None for a layout without a block pool)."""
    allocator = getattr(cache, "allocator", None)
    if allocator is None or not hasattr(cache, "block_tables"):
        return None
    return PoolSnapshot(cache.block_size, {s: list(t) for s, t in cache.block_tables.items()}, dict(cache.lengths),
                        AllocatorSnapshot(allocator.num_blocks, list(allocator.ref_counts), allocator.lru_order()),
                        cache.block_bytes())
