"""The radix view of a prefix cache: its cached blocks drawn as the tree of prefixes they spell (the picture of
SGLang's RadixAttention, Zheng et al. 2024).

Everything is read from the state the cache itself serves from: `cache.index` (which cached block follows which,
its token ids, its hits) and `cache.allocator` (reference counts, the LRU order of evictable blocks). A chain of
cached blocks that never branches is one node — one radix edge, e.g. blocks 3→7→9, 48 tokens. `radix_tree`
computes the tree and its layout as plain data; `radix_figure` draws it.
"""
from __future__ import annotations

import html
from dataclasses import dataclass

import plotly.graph_objects as go

from ..cache.prefix_index import CachedBlock
from .paged_figures import CACHED_ONLY_COLOUR

IN_USE_COLOUR = "#2874a6"  # every block held by a sequence
EVICTABLE_COLOUR = CACHED_ONLY_COLOUR  # cached, nobody holds it: the next allocations may evict it, LRU first
BOTH_COLOUR = "#85c1e9"  # held at the top, cached-only below
STATES = {  # state → (colour, fill pattern, legend text)
    "in use": (IN_USE_COLOUR, "", "in use (held by sequences, ×N)"),
    "evictable": (EVICTABLE_COLOUR, "/", "cached only: evictable, LRU rank 0 goes first"),
    "both": (BOTH_COLOUR, ".", "in use at the top, cached only below"),
}
EDGE_COLOUR = "#7f8c8d"
LABEL_CHARS, HOVER_CHARS = 24, 120  # how much of a node's text its label and its hover show
HOVER_BLOCKS = 8  # blocks a node's hover details one by one


@dataclass(frozen=True)
class RadixNode:
    node_id: int  # 0 is the root, which holds no block
    parent: int | None  # None for the root
    blocks: tuple[int, ...]  # physical block ids along this edge, in prefix order
    token_ids: tuple[int, ...]  # the tokens those blocks hold, in order
    start: int  # tokens of the prefix before this node (the position of its first token)
    ref_counts: tuple[int, ...]  # per block: sequences holding it now (0: cached only)
    hits: tuple[int, ...]  # per block: times a new sequence reused it instead of computing it
    lru_ranks: tuple[int | None, ...]  # per block: place in the eviction order (0: evicted next); None while held
    row: float  # vertical position: leaves 0, 1, 2, … top to bottom, a parent midway between its children

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def end(self) -> int:
        return self.start + self.num_tokens

    @property
    def state(self) -> str:
        """"root", "in use" (every block held), "evictable" (none held) or "both"."""
        if not self.blocks:
            return "root"
        held = [refs > 0 for refs in self.ref_counts]
        return "in use" if all(held) else "evictable" if not any(held) else "both"


@dataclass(frozen=True)
class RadixTree:
    nodes: tuple[RadixNode, ...]  # the root first, then depth first, siblings by their first block id
    block_size: int

    @property
    def edges(self) -> list[tuple[int, int]]:
        """(parent node id, child node id), one per node but the root."""
        return [(node.parent, node.node_id) for node in self.nodes if node.parent is not None]

    def children(self, node_id: int) -> list[RadixNode]:
        return [node for node in self.nodes if node.parent == node_id]

    def node_of(self, block: int) -> RadixNode:
        return next(node for node in self.nodes if block in node.blocks)


def radix_tree(cache) -> RadixTree:
    """The cached prefixes of a PrefixCachedPagedCache as a radix tree, with a layout (start/end in tokens, row)."""
    index, allocator = cache.index, cache.allocator
    lru_rank = {block: rank for rank, block in enumerate(allocator.lru_order())}
    edges: list[tuple[int, list[CachedBlock], int]] = []  # (parent node id, the edge's cached blocks, start)

    def add_edges(parent_id: int, first_blocks, start: int) -> None:
        for block in sorted(first_blocks):
            chain = [index.by_block[block]]
            while len(index.children[chain[-1].block]) == 1:  # no branching: the same radix edge goes on
                (only_child,) = index.children[chain[-1].block]
                chain.append(index.by_block[only_child])
            edges.append((parent_id, chain, start))
            add_edges(len(edges), index.children[chain[-1].block], start + len(chain) * cache.block_size)

    add_edges(0, index.children[None], 0)
    kids: dict[int, list[int]] = {node_id: [] for node_id in range(len(edges) + 1)}
    for node_id, (parent_id, _, _) in enumerate(edges, start=1):
        kids[parent_id].append(node_id)
    rows: dict[int, float] = {}
    leaf_rows = iter(range(len(edges) + 1))
    for node_id in range(1, len(edges) + 1):  # ids are depth-first order: leaves get rows 0, 1, 2, … top to bottom
        if not kids[node_id]:
            rows[node_id] = next(leaf_rows)
    for node_id in reversed(range(len(edges) + 1)):  # a child's id is larger than its parent's: parents after kids
        if kids[node_id]:
            rows[node_id] = sum(rows[k] for k in kids[node_id]) / len(kids[node_id])
    root = RadixNode(0, None, (), (), 0, (), (), (), rows.get(0, 0.0))
    nodes = [root] + [
        RadixNode(node_id, parent_id, tuple(e.block for e in chain), tuple(t for e in chain for t in e.token_ids),
                  start, tuple(allocator.ref_counts[e.block] for e in chain), tuple(e.hits for e in chain),
                  tuple(lru_rank.get(e.block) for e in chain), float(rows[node_id]))
        for node_id, (parent_id, chain, start) in enumerate(edges, start=1)]
    for node in nodes[1:]:
        assert node.num_tokens == len(node.blocks) * cache.block_size, f"node {node.node_id}: cached blocks are full"
        assert all(rank is None for refs, rank in zip(node.ref_counts, node.lru_ranks) if refs), "held yet evictable"
    return RadixTree(tuple(nodes), cache.block_size)


# --- the figure -----------------------------------------------------------------------------------------
def text_start(tokenizer, token_ids, chars: int) -> str:
    """The decoded tokens, newlines shown as ⏎, cut to `chars` characters, quoted and HTML-escaped."""
    text = tokenizer.decode(list(token_ids)).replace("\n", "⏎")
    return html.escape(f"“{text[:chars]}…”" if len(text) > chars else f"“{text}”")


def _span(values) -> str:
    low, high = min(values), max(values)
    return f"{low}" if low == high else f"{low}–{high}"


def _block_list(blocks) -> str:
    shown = blocks if len(blocks) <= 4 else (*blocks[:2], "…", blocks[-1])
    return "→".join(map(str, shown))


def _holders(node: RadixNode) -> str:
    """"in use ×2", "cached only · LRU 3", "in use ×1–2, then cached only · evicted next" (a block's holders hold
    the block before it too, so reference counts only shrink down a chain)."""
    held = [refs for refs in node.ref_counts if refs]
    ranks = [rank for rank in node.lru_ranks if rank is not None]
    parts = [f"in use ×{_span(held)}"] if held else []
    if ranks:
        first_to_go = "evicted next" if min(ranks) == 0 else f"LRU {min(ranks)}"
        parts.append(("then " if held else "") + f"cached only · {first_to_go}")
    return ", ".join(parts)


def node_label(node: RadixNode, tokenizer=None) -> str:
    """The text on a node: block ids and tokens; holders (or LRU rank) and hits; the start of its text."""
    lines = [f"#{_block_list(node.blocks)} · {node.num_tokens} tok", f"{_holders(node)} · hits {_span(node.hits)}"]
    if tokenizer is not None:
        lines.append(text_start(tokenizer, node.token_ids, LABEL_CHARS))
    return "<br>".join(lines)


def node_hover(node: RadixNode, tokenizer=None) -> str:
    """Per block (the first HOVER_BLOCKS of them): who holds it, its hits, its place in the eviction order."""
    blocks = " → ".join(map(str, node.blocks))
    lines = [f"tokens {node.start}–{node.end - 1} ({node.num_tokens}) in blocks {blocks}"]
    details = list(zip(node.blocks, node.ref_counts, node.hits, node.lru_ranks))
    for block, refs, hits, rank in details[:HOVER_BLOCKS]:
        if refs:
            holders = f"held by {refs} sequence{'s' if refs > 1 else ''}"
        else:
            holders = f"cached only, LRU rank {rank}" + (" (evicted next)" if rank == 0 else "")
        lines.append(f"block {block}: {holders}, {hits} hit{'' if hits == 1 else 's'}")
    if len(node.blocks) > HOVER_BLOCKS:
        lines.append(f"… and {len(node.blocks) - HOVER_BLOCKS} more blocks")
    if tokenizer is not None:
        lines.append(text_start(tokenizer, node.token_ids, HOVER_CHARS))
    return "<br>".join(lines)


def radix_figure(cache, tokenizer=None) -> go.Figure:
    """The radix tree of a PrefixCachedPagedCache: one bar per node, spanning its token positions, an elbow from
    each parent to its children; colour = in use / evictable / both. Always the same six traces (edges, nodes,
    root, three legend keys), so a live FigureWidget can redraw it trace by trace."""
    tree = radix_tree(cache)
    nodes = tree.nodes[1:]
    fig = go.Figure()
    edge_x, edge_y = [], []
    for parent_id, child_id in tree.edges:
        parent, child = tree.nodes[parent_id], tree.nodes[child_id]
        edge_x += [parent.end, parent.end, child.start, None]
        edge_y += [parent.row, child.row, child.row, None]
    fig.add_scatter(x=edge_x, y=edge_y, mode="lines", line=dict(color=EDGE_COLOUR, width=1.5), hoverinfo="skip",
                    showlegend=False, name="edges")
    fig.add_bar(orientation="h", base=[n.start for n in nodes], x=[n.num_tokens for n in nodes],
                y=[n.row for n in nodes], width=0.62, customdata=[n.node_id for n in nodes],
                marker=dict(color=[STATES[n.state][0] for n in nodes], line=dict(color="white", width=2),
                            pattern=dict(shape=[STATES[n.state][1] for n in nodes], fgcolor="#a04000", size=8)),
                text=[node_label(n, tokenizer) for n in nodes], textposition="inside", insidetextanchor="middle",
                textfont=dict(size=10), hovertext=[node_hover(n, tokenizer) for n in nodes],
                hovertemplate="%{hovertext}<extra></extra>", showlegend=False, name="nodes")
    root = tree.nodes[0]
    fig.add_scatter(x=[0], y=[root.row], mode="markers+text", text=["root"], textposition="middle left",
                    marker=dict(color="black", size=10), hoverinfo="skip", showlegend=False, name="root")
    for colour, _, legend in STATES.values():
        fig.add_scatter(x=[None], y=[None], mode="markers", name=legend,
                        marker=dict(color=colour, size=12, symbol="square"))
    span = max((n.end for n in nodes), default=cache.block_size)
    cached = sum(len(n.blocks) for n in nodes)
    leaves = 1 + int(max((n.row for n in nodes), default=0))
    evictable = sum(rank is not None for n in nodes for rank in n.lru_ranks)
    title = "Radix tree of cached prefixes: " + (
        f"{len(nodes)} nodes, {cached} cached blocks of {cache.block_size} tokens ({cached - evictable} in use, "
        f"{evictable} evictable)" if nodes else "empty")
    fig.update_layout(title=title, template="plotly_white", barmode="overlay", height=190 + 64 * leaves,
                      uniformtext=dict(minsize=9, mode="show"), margin=dict(t=90, b=40, l=20, r=20),
                      xaxis=dict(title="position in the sequence (tokens)", range=[-0.12 * span, 1.02 * span],
                                 zeroline=False),
                      yaxis=dict(visible=False, autorange="reversed"),
                      legend=dict(orientation="h", x=0, y=1.0, yanchor="bottom"))
    if not nodes:
        fig.add_annotation(text="The prefix cache is empty: no full block has been cached yet.", showarrow=False,
                           x=0.5 * span, y=0)
    return fig
