"""Figures of the paged KV cache, drawn from the public state of real caches.

Every function reads what a PagedCache or ContiguousCache exposes — block tables, lengths, the allocator's
free list and reference counts (and, for a prefix cache, its LRU list of evictable blocks), the caches' byte
counts — and returns a plain go.Figure. The caches do not
know they are drawn; nothing here re-derives where a token goes.
"""
from __future__ import annotations

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from .. import memory

FREE_COLOUR = "#e5e7e9"
SEQUENCE_COLOURS = qualitative.Plotly
TOKENS_COLOUR = "#1e8449"  # slots holding a token
RESERVED_COLOUR = "#c0392b"  # slots reserved for a sequence and never filled
TAIL_COLOUR = "#f5b041"  # unfilled tail of a sequence's last block
FREE_BLOCKS_COLOUR = "#aab7b8"
CACHED_ONLY_COLOUR = "#c9b79c"  # a prefix cache's evictable blocks: nobody holds them, their K/V is kept until needed


def sequence_colour(seq_id: int) -> str:
    """The same colour for a sequence in every figure."""
    return SEQUENCE_COLOURS[seq_id % len(SEQUENCE_COLOURS)]


def block_fills(cache) -> dict[int, tuple[int, int]]:
    """Physical block id → (owning sequence, tokens the block holds). A shared block goes to its lowest seq id.

    Logical block j of a sequence of `length` tokens holds min(bs, length − j·bs) of them: full blocks hold bs,
    the last one length − (len(table) − 1)·bs.
    """
    bs = cache.block_size
    owners: dict[int, tuple[int, int]] = {}
    for seq_id in sorted(cache.block_tables):
        length = cache.lengths.get(seq_id, 0)
        for logical, block in enumerate(cache.block_tables[seq_id]):
            owners.setdefault(block, (seq_id, min(bs, max(0, length - logical * bs))))
    return owners


def lru_ranks(cache) -> dict[int, int]:
    """Evictable block → its place in the eviction order (0: evicted next). Empty for a cache that keeps no
    released block (a plain PagedCache)."""
    return {block: rank for rank, block in enumerate(cache.allocator.lru_order())}


def holding_fraction(cache) -> float:
    """Share of the memory a cache holds for K/V that actually holds cached tokens."""
    reserved = cache.reserved_bytes()
    return cache.used_bytes() / reserved if reserved else 0.0


def _category_colorscale(colours: list[str]) -> list[tuple[float, str]]:
    """Integer z = i gets colours[i] exactly (use with zmin = −0.5, zmax = len(colours) − 0.5)."""
    n = len(colours)
    scale = []
    for i, colour in enumerate(colours):
        scale += [(i / n, colour), ((i + 1) / n, colour)]
    return scale


def pool_figure(cache, columns: int = 16) -> go.Figure:
    """The physical pool of a PagedCache as a grid of blocks, left to right, `columns` per row.

    Colour = owning sequence (free: light grey); each cell shows its block id and fill ("k/bs" tokens);
    a block with reference count > 1 is outlined and marked "×refs". In a prefix cache, blocks cached without an
    owner (evictable) have their own colour and a dotted outline, and show their LRU rank ("LRU 0": evicted next).
    """
    if columns < 1:
        raise ValueError(f"columns must be ≥ 1, got {columns}")
    allocator, bs = cache.allocator, cache.block_size
    num_rows = -(-allocator.num_blocks // columns)
    owners, lru_rank = block_fills(cache), lru_ranks(cache)
    seq_ids = sorted({seq for seq, _ in owners.values()})
    first_seq = 2 if lru_rank else 1
    category = {seq: i + first_seq for i, seq in enumerate(seq_ids)}  # 0 = free, 1 = cached without owner
    z = [[None] * columns for _ in range(num_rows)]  # [rows, columns] owner category, None past the pool
    text = [[""] * columns for _ in range(num_rows)]
    owner = [[None] * columns for _ in range(num_rows)]  # seq id, None when free
    fig = go.Figure()
    for block in range(allocator.num_blocks):
        row, col = divmod(block, columns)
        refs = allocator.ref_counts[block]
        if block in owners:
            seq, fill = owners[block]
            z[row][col], owner[row][col] = category[seq], seq
            text[row][col] = f"#{block}<br>{fill}/{bs}" + (f" ×{refs}" if refs > 1 else "")
        elif block in lru_rank:
            z[row][col], text[row][col] = 1, f"#{block}<br>LRU {lru_rank[block]}"
            fig.add_shape(type="rect", x0=col - 0.45, x1=col + 0.45, y0=row - 0.45, y1=row + 0.45,
                          line=dict(color="#6e2c00", width=2, dash="dot"))
        else:
            z[row][col], text[row][col] = 0, f"#{block}<br>free"
        if refs > 1:
            fig.add_shape(type="rect", x0=col - 0.5, x1=col + 0.5, y0=row - 0.5, y1=row + 0.5,
                          line=dict(color="black", width=3))
    cached_only = [CACHED_ONLY_COLOUR] if lru_rank else []
    colours = [FREE_COLOUR] + cached_only + [sequence_colour(s) for s in seq_ids]
    labels = ["free"] + ["cached, no owner"] * len(cached_only) + [f"seq {s}" for s in seq_ids]
    fig.add_heatmap(z=z, text=text, texttemplate="%{text}", customdata=owner, hovertemplate="%{text}<extra></extra>",
                    colorscale=_category_colorscale(colours), zmin=-0.5, zmax=len(colours) - 0.5, xgap=3, ygap=3,
                    colorbar=dict(tickvals=list(range(len(colours))), ticktext=labels, title="owner"))
    used, total = allocator.num_used, allocator.num_blocks
    shared = sum(1 for r in allocator.ref_counts if r > 1)
    note = f" · {shared} shared (outlined)" if shared else ""
    evictable = f"{len(lru_rank)} cached without owner (LRU rank shown), " if lru_rank else ""
    fig.update_layout(
        title=f"KV block pool: {used} of {total} blocks in use, {evictable}{allocator.num_free} free{note} — "
              f"{memory.format_bytes(cache.reserved_bytes())} of {memory.format_bytes(cache.pool_bytes())}, "
              f"{bs} tokens per block",
        template="plotly_white", height=120 + 60 * num_rows, margin=dict(t=60, b=20),
        xaxis=dict(visible=False), yaxis=dict(visible=False, autorange="reversed"))
    return fig


def block_tables_figure(cache) -> go.Figure:
    """Each sequence's block table: logical block j → physical block id, with its token count."""
    seq_ids = sorted(cache.block_tables)
    width = max((len(cache.block_tables[s]) for s in seq_ids), default=0)
    header = ["sequence", "tokens", "blocks"] + [f"logical {j}" for j in range(width)]
    tables = [cache.block_tables[s] for s in seq_ids]
    columns = [[f"seq {s}" for s in seq_ids], [cache.lengths.get(s, 0) for s in seq_ids], [len(t) for t in tables]]
    columns += [[t[j] if j < len(t) else "" for t in tables] for j in range(width)]
    fills = [[sequence_colour(s) for s in seq_ids]] + [["white"] * len(seq_ids)] * (len(header) - 1)
    fig = go.Figure(go.Table(header=dict(values=header, fill_color="#d5d8dc", align="center"),
                             cells=dict(values=columns, fill_color=fills, align="center")))
    fig.update_layout(title=f"Block tables (physical block ids); token t sits in slot "
                            f"table[t // {cache.block_size}] × {cache.block_size} + t % {cache.block_size}",
                      height=120 + 30 * len(seq_ids), margin=dict(t=50, b=10))
    return fig


def snapshot(step_index: int, cache, running: list[int]) -> dict:
    """A plain-dict record of a PagedCache at one step, for generate(on_step=...): the cache is freed later."""
    return {
        "step": step_index,
        "running": list(running),
        "block_size": cache.block_size,
        "pool_blocks": cache.allocator.num_blocks,
        "used_blocks": cache.allocator.num_used,
        "tokens": dict(cache.lengths),  # seq_id -> tokens cached
        "tables": {s: list(t) for s, t in cache.block_tables.items()},  # seq_id -> physical block ids
    }


def occupancy_figure(snapshots: list[dict], block_size: int) -> go.Figure:
    """Blocks in use and tokens stored (in block units) per step, under the pool size. The gap between the
    two is internal fragmentation: the unfilled tails of the last blocks."""
    steps = [s["step"] for s in snapshots]
    stored_blocks = [sum(s["tokens"].values()) / block_size for s in snapshots]
    fig = go.Figure()
    fig.add_scatter(x=steps, y=[s["pool_blocks"] for s in snapshots], name="pool size", mode="lines",
                    line=dict(color="black", dash="dash"))
    fig.add_scatter(x=steps, y=stored_blocks, name="tokens stored ÷ block size", mode="lines",
                    line_color=TOKENS_COLOUR)
    fig.add_scatter(x=steps, y=[s["used_blocks"] for s in snapshots], name="blocks in use", mode="lines+markers",
                    line=dict(color=TAIL_COLOUR, shape="hv"), fill="tonexty", fillcolor="rgba(245,176,65,0.3)")
    fig.update_layout(title="Pool occupancy per step — shaded: unfilled tails of the last blocks",
                      xaxis_title="generation step", yaxis_title=f"blocks ({block_size} tokens each)",
                      yaxis_rangemode="tozero", template="plotly_white", height=380)
    return fig


def _stacked_bars(fig, col: int, labels: list[str], parts: list[tuple[str, list[int], str]], shown: set) -> None:
    for name, values, colour in parts:
        fig.add_bar(y=labels, x=values, orientation="h", name=name, marker_color=colour, legendgroup=name,
                    showlegend=name not in shown, row=1, col=col)
        shown.add(name)


def reservation_figure(contiguous_cache, paged_cache) -> go.Figure:
    """Where the K/V memory goes in two real caches holding the same sequences, in token slots.

    Contiguous: each row of max_len slots, holding tokens vs reserved and empty. Paged: each sequence's
    blocks, holding tokens vs the unfilled tail of its last block, and the pool's free blocks.
    """
    cc, pc = contiguous_cache, paged_cache
    rows = sorted(cc.row_of.items(), key=lambda item: item[1])  # (seq_id, slab row)
    free_rows = sorted(cc.free_rows)
    c_labels = [f"seq {s}" for s, _ in rows] + [f"free row {r}" for r in free_rows]
    c_tokens = [cc.lengths[s] for s, _ in rows] + [0] * len(free_rows)
    c_empty = [cc.max_len - n for n in c_tokens]

    bs = pc.block_size
    seq_ids = sorted(pc.block_tables)
    p_labels = [f"seq {s}" for s in seq_ids] + ["free blocks"]
    p_tokens = [pc.lengths[s] for s in seq_ids] + [0]
    p_tail = [len(pc.block_tables[s]) * bs - pc.lengths[s] for s in seq_ids] + [0]
    p_free = [0] * len(seq_ids) + [pc.allocator.num_free * bs]

    c_share, p_share = holding_fraction(cc), holding_fraction(pc)
    fig = make_subplots(rows=1, cols=2, shared_xaxes=True, horizontal_spacing=0.12, subplot_titles=(
        f"contiguous: {c_share:.0%} of {memory.format_bytes(cc.reserved_bytes())} reserved holds tokens",
        f"paged: {p_share:.0%} of {memory.format_bytes(pc.reserved_bytes())} in blocks holds tokens"))
    shown: set = set()
    _stacked_bars(fig, 1, c_labels, [("holding tokens", c_tokens, TOKENS_COLOUR),
                                     ("reserved, empty", c_empty, RESERVED_COLOUR)], shown)
    _stacked_bars(fig, 2, p_labels, [("holding tokens", p_tokens, TOKENS_COLOUR),
                                     ("unfilled tail of the last block", p_tail, TAIL_COLOUR),
                                     ("free: any request can take them", p_free, FREE_BLOCKS_COLOUR)], shown)
    fig.update_layout(barmode="stack", template="plotly_white", height=180 + 40 * max(len(c_labels), len(p_labels)),
                      title="The same sequences in two real caches, in token slots", margin=dict(b=70),
                      legend=dict(orientation="h", y=-0.12, yanchor="top"))
    fig.update_yaxes(autorange="reversed")
    return fig


def decode_bandwidth_figure(report: dict) -> go.Figure:
    """Achieved GB/s of paged decode attention vs context, one line per batch (kvlab.bench.decode.run's report),
    beside SDPA over a contiguous cache (and, from a CPU run, the torch gather path), with the copy bandwidth
    measured in the same run as a horizontal line."""
    fig = go.Figure()
    batches = sorted({c["batch"] for c in report["cases"]})
    for i, batch in enumerate(batches):
        cases = sorted((c for c in report["cases"] if c["batch"] == batch), key=lambda c: c["context"])
        colour = SEQUENCE_COLOURS[i % len(SEQUENCE_COLOURS)]
        fig.add_scatter(x=[c["context"] for c in cases], y=[c["paged_gb_s"] for c in cases], mode="lines+markers",
                        name=f"paged, batch {batch}", line_color=colour)
        fig.add_scatter(x=[c["context"] for c in cases], y=[c["sdpa_gb_s"] for c in cases], mode="lines+markers",
                        name=f"SDPA contiguous, batch {batch}", line=dict(color=colour, dash="dot"))
        gathered = [c for c in cases if c.get("gather_s") is not None]
        if gathered:  # a CPU run: the torch path that gathers the blocks first
            fig.add_scatter(x=[c["context"] for c in gathered], y=[c["gather_gb_s"] for c in gathered],
                            mode="lines+markers", name=f"gather then attend, batch {batch}",
                            line=dict(color=colour, dash="dashdot", width=1), marker_symbol="x")
    fig.add_hline(y=report["copy_gb_s"], line=dict(color="black", dash="dash"),
                  annotation_text=f"copy bandwidth measured here: {report['copy_gb_s']:.0f} GB/s",
                  annotation_position="top left")
    fig.update_layout(title=f"Decode attention on {report['device']}, {report['dtype']}<br><sup>{report['path']}</sup>",
                      xaxis_title="context (tokens)", xaxis_type="log", yaxis_title="achieved GB/s",
                      yaxis_rangemode="tozero", template="plotly_white", height=400)
    return fig


VLLM_PAGED_SLOWDOWN = (1.20, 1.26)  # Kwon et al. 2023, §7.1: their paged kernel vs a contiguous one, same data


def paging_cost_figure(report: dict) -> go.Figure:
    """What paging costs at decode: each paged path's time ÷ SDPA's over the same K/V in a contiguous cache, per
    (batch, context) of a decode benchmark report, beside the vLLM paper's 20–26 % band. A CPU run has two paged
    paths: the C++ kernel reading the blocks in place, and the torch path gathering them into a copy first."""
    cases = sorted(report["cases"], key=lambda c: (c["batch"], c["context"]))
    labels = [f"B{c['batch']} · {c['context']:,}" for c in cases]
    in_place = "C++ kernel, blocks read in place" if any(c.get("gather_s") is not None for c in cases) else "paged kernel"
    fig = go.Figure()
    fig.add_hrect(y0=VLLM_PAGED_SLOWDOWN[0], y1=VLLM_PAGED_SLOWDOWN[1], fillcolor=TAIL_COLOUR, opacity=0.35, line_width=0)
    fig.add_hline(y=1.0, line=dict(color="black", dash="dash"))
    for y, anchor, text in ((VLLM_PAGED_SLOWDOWN[1], "bottom", "vLLM paper: paged kernel<br>20–26 % slower"),
                            (1.0, "top", "SDPA, contiguous cache")):  # beside the plot, clear of the bars
        fig.add_annotation(xref="paper", x=1.01, xanchor="left", y=y, yanchor=anchor, text=text, showarrow=False,
                           align="left", font_size=11)
    fig.add_bar(x=labels, y=[c["paged_over_sdpa_time"] for c in cases], name=in_place, marker_color=TOKENS_COLOUR,
                text=[f"{c['paged_over_sdpa_time']:.2f}×" for c in cases], textposition="inside")
    gathered = [c.get("gather_over_sdpa_time") for c in cases]
    if any(g is not None for g in gathered):
        fig.add_bar(x=labels, y=gathered, name="torch: gather the blocks, then attend", marker_color=RESERVED_COLOUR,
                    text=[f"{g:.2f}×" if g is not None else "" for g in gathered], textposition="outside")
    fig.update_layout(barmode="group", template="plotly_white", height=420, yaxis_rangemode="tozero",
                      title=f"Decode attention time ÷ SDPA's on a contiguous cache — {report['device']}, {report['dtype']}",
                      xaxis_title="batch · context (tokens)", yaxis_title="time ÷ SDPA's", margin=dict(r=170),
                      legend=dict(orientation="h", y=-0.25, yanchor="top"))
    return fig
