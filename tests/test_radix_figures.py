"""The radix view draws the real index and allocator of a prefix cache: one node per branch-free chain of cached
blocks, their holders, hits and LRU ranks, a layout in token positions."""
from __future__ import annotations

import random

import pytest
import torch

from kvlab.cache import PrefixCachedPagedCache
from kvlab.model.config import LlamaConfig
from kvlab.viz.radix_figures import (BOTH_COLOUR, EVICTABLE_COLOUR, IN_USE_COLOUR, STATES, node_label, radix_figure,
                                     radix_tree, text_start)

TINY = LlamaConfig(name="tiny", num_layers=2, hidden_size=64, ffn_size=128, num_heads=4, num_kv_heads=2, head_dim=16,
                   vocab_size=100, context_len=512, rope_base=10000.0, rms_eps=1e-5, tied_embeddings=True,
                   bos_token_id=1, eos_token_id=2)
BS = 4
SHARED = [1] * 8  # two full blocks


def make_cache(num_blocks: int = 16) -> PrefixCachedPagedCache:
    return PrefixCachedPagedCache(TINY, "cpu", torch.float32, num_blocks=num_blocks, block_size=BS)


def prefill(cache, seq_id: int, ids: list[int]) -> int:
    """Add a sequence with its prompt ids and feed the tokens the cache does not hold (no model: ids only)."""
    cached = cache.add_sequence(seq_id, len(ids), ids)
    cache.begin_step([seq_id], [len(ids) - cached], [ids[cached:]])
    cache.end_step()
    return cached


@pytest.fixture
def diverging():
    """seq 0: SHARED + [5]*4 + [7], seq 1: SHARED + [6]*4 + [7] — two shared blocks, then one block each."""
    cache = make_cache()
    prefill(cache, 0, SHARED + [5] * 4 + [7])
    assert prefill(cache, 1, SHARED + [6] * 4 + [7]) == 8
    return cache


def test_two_prompts_sharing_two_blocks_then_diverging_give_root_shared_node_and_two_children(diverging):
    table_0, table_1 = diverging.block_tables[0], diverging.block_tables[1]
    tree = radix_tree(diverging)
    root, shared, own_0, own_1 = tree.nodes
    assert tree.edges == [(0, 1), (1, 2), (1, 3)]
    assert shared.blocks == tuple(table_0[:2]) == tuple(table_1[:2]) and shared.token_ids == tuple(SHARED)
    assert (shared.start, shared.end, shared.ref_counts, shared.hits) == (0, 8, (2, 2), (1, 1))
    assert own_0.blocks == (table_0[2],) and own_1.blocks == (table_1[2],)
    assert own_0.token_ids == (5,) * 4 and own_1.token_ids == (6,) * 4
    assert (own_0.start, own_0.end, own_0.ref_counts, own_0.hits) == (8, 12, (1,), (0,))
    assert [n.row for n in tree.nodes] == [0.5, 0.5, 0.0, 1.0]  # leaves top to bottom, parents between children
    assert [n.state for n in tree.nodes] == ["root", "in use", "in use", "in use"]
    assert tree.node_of(table_1[2]) is own_1 and [c.node_id for c in tree.children(1)] == [2, 3]


def test_a_chain_of_blocks_without_branching_is_one_node():
    cache = make_cache()
    prefill(cache, 0, list(range(10, 27)))  # 17 tokens: 4 full blocks and one token
    tree = radix_tree(cache)
    assert len(tree.nodes) == 2 and tree.edges == [(0, 1)]
    assert tree.nodes[1].blocks == tuple(cache.block_tables[0][:4]) and tree.nodes[1].num_tokens == 16


def test_released_blocks_get_lru_ranks_tail_first_and_the_next_victim_says_so(diverging):
    table_0, table_1 = list(diverging.block_tables[0]), list(diverging.block_tables[1])
    diverging.free_sequence(0)  # its own full block becomes evictable; the shared ones are still held by seq 1
    diverging.free_sequence(1)  # then seq 1's own block, then the shared ones, last block first
    assert diverging.allocator.lru_order() == [table_0[2], table_1[2], table_1[1], table_1[0]]
    root, shared, own_0, own_1 = radix_tree(diverging).nodes
    assert shared.lru_ranks == (3, 2) and own_0.lru_ranks == (0,) and own_1.lru_ranks == (1,)
    assert {n.state for n in (shared, own_0, own_1)} == {"evictable"} and shared.ref_counts == (0, 0)
    assert "cached only · evicted next" in node_label(own_0) and "cached only · LRU 1" in node_label(own_1)
    assert "cached only · LRU 2" in node_label(shared)


def test_a_node_held_at_the_top_and_cached_only_below_is_both():
    cache = make_cache()
    prefill(cache, 0, [1] * 12 + [7])  # three full blocks
    assert prefill(cache, 1, [1] * 8 + [9]) == 8  # holds the first two
    cache.free_sequence(0)
    (node,) = radix_tree(cache).nodes[1:]
    assert node.ref_counts == (1, 1, 0) and node.lru_ranks == (None, None, 0) and node.state == "both"
    assert node_label(node).split("<br>")[1] == "in use ×1, then cached only · evicted next · hits 0–1"


def test_evicting_one_branch_merges_the_other_into_its_parent_edge():
    cache = make_cache(num_blocks=6)
    prefill(cache, 0, SHARED + [5] * 4 + [7])
    prefill(cache, 1, SHARED + [6] * 4 + [7])  # blocks: 2 shared, 1 + 1 own full, 2 partial = all 6
    own_block_0, table_1 = cache.block_tables[0][2], list(cache.block_tables[1])
    cache.free_sequence(0)  # its partial block is free, its own full block evictable
    prefill(cache, 2, [9] * 5)  # two blocks: the free one and the evicted one
    assert cache.events[-2].kind == "evict" and cache.events[-2].blocks == (own_block_0,)
    tree = radix_tree(cache)
    assert all(own_block_0 not in n.blocks for n in tree.nodes)
    merged = tree.node_of(table_1[0])
    assert merged.blocks == tuple(table_1[:3]) and merged.num_tokens == 12  # no branching left: one edge
    assert tree.edges == [(0, 1), (0, 2)] and tree.node_of(cache.block_tables[2][0]).num_tokens == 4


def test_a_prompt_that_needs_the_whole_pool_evicts_every_cached_node(diverging):
    diverging.free_sequence(0)
    diverging.free_sequence(1)
    prefill(diverging, 2, [9] * 64)  # 16 blocks: the whole pool
    assert diverging.stats.evicted_blocks == 4
    tree = radix_tree(diverging)
    assert len(tree.nodes) == 2 and tree.nodes[1].blocks == tuple(diverging.block_tables[2])


def test_layout_never_overlaps_nodes_and_children_start_where_parents_end():
    rng = random.Random(0)
    cache = make_cache(num_blocks=64)
    for seq_id in range(12):  # prompts over a two-letter alphabet share and branch at block boundaries
        blocks = rng.randint(1, 4)
        prefill(cache, seq_id, [t for _ in range(blocks) for t in [rng.choice([3, 4])] * BS] + [0])
    tree = radix_tree(cache)
    assert len(tree.nodes) > 5 and sum(len(n.blocks) for n in tree.nodes) == len(cache.index)
    for parent, child in tree.edges:
        assert tree.nodes[child].start == tree.nodes[parent].end
    leaves = sorted(n.row for n in tree.nodes[1:] if not tree.children(n.node_id))
    assert leaves == list(range(len(leaves)))
    for a in tree.nodes[1:]:
        for b in tree.nodes[1:]:
            if a is not b and a.start < b.end and b.start < a.end:  # overlapping token spans
                assert abs(a.row - b.row) >= 1, (a, b)
        assert len(tree.children(a.node_id)) != 1  # a single child would have been merged into the edge


def test_radix_figure_draws_each_node_as_a_bar_over_its_tokens_coloured_by_state(diverging):
    diverging.free_sequence(0)
    tree = radix_tree(diverging)
    fig = radix_figure(diverging)
    edges, bars, root = fig.data[:3]
    assert list(bars.base) == [0, 8, 8] and list(bars.x) == [8, 4, 4] and list(bars.y) == [0.5, 0.0, 1.0]
    assert list(bars.marker.color) == [IN_USE_COLOUR, EVICTABLE_COLOUR, IN_USE_COLOUR]
    assert list(bars.marker.pattern.shape) == ["", "/", ""]
    assert list(bars.text) == [node_label(n) for n in tree.nodes[1:]]
    assert bars.text[0].startswith(f"#{tree.nodes[1].blocks[0]}→{tree.nodes[1].blocks[1]} · 8 tok")
    assert "in use ×1 · hits 1" in bars.text[0] and "evicted next" in bars.text[1]
    assert f"block {tree.nodes[2].blocks[0]}: cached only, LRU rank 0 (evicted next), 0 hits" in bars.hovertext[1]
    assert list(edges.x) == [0, 0, 0, None, 8, 8, 8, None, 8, 8, 8, None]  # elbows: parent end → child start
    assert list(edges.y) == [0.5, 0.5, 0.5, None, 0.5, 0.0, 0.0, None, 0.5, 1.0, 1.0, None]
    assert list(root.y) == [0.5] and "3 nodes, 4 cached blocks" in fig.layout.title.text
    legend_keys = [(legend, colour) for colour, _, legend in STATES.values()]
    assert [(t.name, t.marker.color) for t in fig.data[3:]] == legend_keys
    assert [colour for colour, _, _ in STATES.values()] == [IN_USE_COLOUR, EVICTABLE_COLOUR, BOTH_COLOUR]


def test_radix_figure_of_an_empty_cache_says_it_is_empty_with_the_same_traces(diverging):
    fig = radix_figure(make_cache())
    assert "empty" in fig.layout.annotations[0].text and fig.layout.title.text.endswith("empty")
    assert len(fig.data[1].x) == 0 and [t.type for t in fig.data] == [t.type for t in radix_figure(diverging).data]


def test_long_chains_shorten_their_block_list():
    cache = make_cache()
    prefill(cache, 0, list(range(10, 35)))  # 6 full blocks
    blocks = cache.block_tables[0]
    label = node_label(radix_tree(cache).nodes[1])
    assert label.startswith(f"#{blocks[0]}→{blocks[1]}→…→{blocks[5]} · 24 tok")


def test_text_labels_show_the_start_of_each_nodes_text_escaped(tokenizer):
    ids = tokenizer.encode("<b>Tom & Jerry</b> chase each other around the kitchen all day long, every day.")
    cache = make_cache(num_blocks=32)
    prefill(cache, 0, ids)
    (node,) = radix_tree(cache).nodes[1:]
    label = radix_figure(cache, tokenizer).data[1].text[0]
    assert label.split("<br>")[2] == text_start(tokenizer, node.token_ids, 24)
    assert label.split("<br>")[2].startswith("“&lt;b&gt;Tom &amp; Jerry") and "<b>" not in label
    assert tokenizer.decode(list(node.token_ids)).startswith("<b>Tom & Jerry</b> chase")
