"""The paged-cache figures draw the real state of real caches: owners, fills, sharing, evictable blocks, reservation
shares."""
from __future__ import annotations

import pytest
import torch

from kvlab.bench.decode import DecodeCase
from kvlab.cache import ContiguousCache, PagedCache, PrefixCachedPagedCache
from kvlab.model.config import LlamaConfig
from kvlab.viz.paged_figures import (CACHED_ONLY_COLOUR, FREE_COLOUR, block_fills, block_tables_figure,
                                     decode_bandwidth_figure, occupancy_figure, paging_cost_figure, pool_figure,
                                     reservation_figure, sequence_colour, snapshot)

TINY = LlamaConfig(name="tiny", num_layers=2, hidden_size=64, ffn_size=128, num_heads=4, num_kv_heads=2, head_dim=16,
                   vocab_size=100, context_len=512, rope_base=10000.0, rms_eps=1e-5, tied_embeddings=True,
                   bos_token_id=1, eos_token_id=2)
BS = 4


def step(cache, seq_ids, counts):
    """One cache step without the model: blocks are allocated, the tokens count as cached."""
    cache.begin_step(seq_ids, counts)
    cache.end_step()


@pytest.fixture
def paged():
    """Sequence 0: 9 tokens (blocks 4, 4, 1); sequence 1: 6 tokens (4, 2); allocated interleaved."""
    cache = PagedCache(TINY, "cpu", torch.float32, num_blocks=10, block_size=BS)
    cache.add_sequence(0, 32)
    cache.add_sequence(1, 32)
    step(cache, [0, 1], [5, 3])  # 0 → [0, 1], 1 → [2]
    step(cache, [0, 1], [4, 3])  # 0 → [0, 1, 3], 1 → [2, 4]
    return cache


def cell(block: int, columns: int) -> tuple[int, int]:
    return divmod(block, columns)


def test_pool_figure_colours_exactly_the_used_blocks_by_owner(paged):
    columns = 4
    fig = pool_figure(paged, columns=columns)
    heat = fig.data[0]
    labels = list(heat.colorbar.ticktext)
    owner_of = {b: s for s, t in paged.block_tables.items() for b in t}
    assert owner_of == {0: 0, 1: 0, 3: 0, 2: 1, 4: 1}
    for block in range(paged.allocator.num_blocks):
        row, col = cell(block, columns)
        expected = f"seq {owner_of[block]}" if block in owner_of else "free"
        assert labels[heat.z[row][col]] == expected
        assert heat.customdata[row][col] == owner_of.get(block)
    assert len(heat.z) == 3 and list(heat.z[2][2:]) == [None, None]  # 10 blocks in rows of 4: two cells past the pool
    scale = dict(heat.colorscale)
    assert scale[0.0] == FREE_COLOUR and sequence_colour(1) in scale.values()
    assert "5 of 10 blocks in use" in fig.layout.title.text


def test_pool_figure_fill_annotations_equal_the_tokens_in_each_block(paged):
    fig = pool_figure(paged, columns=16)
    text = fig.data[0].text[0]
    assert [text[b].split("<br>")[1] for b in range(6)] == ["4/4", "4/4", "4/4", "1/4", "2/4", "free"]
    assert block_fills(paged) == {0: (0, 4), 1: (0, 4), 3: (0, 1), 2: (1, 4), 4: (1, 2)}


def test_pool_figure_marks_a_block_shared_after_fork(paged):
    paged.fork(0, 7)  # full blocks 0 and 1 shared, partial block 3 copied into a fresh block
    fig = pool_figure(paged, columns=16)
    text = fig.data[0].text[0]
    shared = [b for b in range(paged.allocator.num_blocks) if "×2" in text[b]]
    assert shared == [0, 1] == [b for b, r in enumerate(paged.allocator.ref_counts) if r == 2]
    outlined = sorted(int(shape.x0 + 0.5) for shape in fig.layout.shapes)
    assert outlined == [0, 1]
    assert text[5].split("<br>")[1] == "1/4"  # the child's copy of the partial block
    assert "2 shared" in fig.layout.title.text


def test_pool_figure_of_an_empty_pool_is_all_free():
    cache = PagedCache(TINY, "cpu", torch.float32, num_blocks=3, block_size=BS)
    fig = pool_figure(cache, columns=2)
    assert [list(r) for r in fig.data[0].z] == [[0, 0], [0, None]] and list(fig.data[0].colorbar.ticktext) == ["free"]


def test_block_tables_figure_lists_each_table_and_token_count(paged):
    table = block_tables_figure(paged).data[0]
    values = table.cells.values
    assert list(table.header.values) == ["sequence", "tokens", "blocks", "logical 0", "logical 1", "logical 2"]
    assert list(values[0]) == ["seq 0", "seq 1"] and list(values[1]) == [9, 6] and list(values[2]) == [3, 2]
    assert [list(col) for col in values[3:]] == [[0, 2], [1, 4], [3, ""]]


def test_occupancy_figure_follows_snapshots_of_real_steps():
    cache = PagedCache(TINY, "cpu", torch.float32, num_blocks=8, block_size=BS)
    cache.add_sequence(0, 32)
    snaps = []
    for index, count in enumerate([3, 1, 1, 4]):  # 3, 4, 5, 9 tokens → 1, 1, 2, 3 blocks
        step(cache, [0], [count])
        snaps.append(snapshot(index, cache, [0]))
    assert snaps[-1]["tables"] == {0: [0, 1, 2]} and snaps[-1]["tokens"] == {0: 9}
    fig = occupancy_figure(snaps, BS)
    traces = {t.name: t for t in fig.data}
    assert list(traces["blocks in use"].y) == [1, 1, 2, 3]
    assert list(traces["tokens stored ÷ block size"].y) == [3 / 4, 1, 5 / 4, 9 / 4]
    assert list(traces["pool size"].y) == [8] * 4 and list(traces["blocks in use"].x) == [0, 1, 2, 3]


def test_reservation_figure_shares_equal_used_over_reserved_of_each_cache(paged):
    contiguous = ContiguousCache(TINY, "cpu", torch.float32, max_batch=3, max_len=16)
    for seq_id, count in ((0, 9), (1, 6)):
        contiguous.add_sequence(seq_id, 16)
        step(contiguous, [seq_id], [count])
    fig = reservation_figure(contiguous, paged)
    # contiguous: 15 tokens in 3 rows × 16 slots (one row free); paged: 15 tokens in 5 blocks × 4 slots
    assert fig.layout.annotations[0].text.startswith(f"contiguous: {15 / 48:.0%}")
    assert fig.layout.annotations[1].text.startswith(f"paged: {15 / 20:.0%}")
    bars = {(t.name, t.xaxis): list(t.x) for t in fig.data}
    assert bars[("holding tokens", "x")] == [9, 6, 0] and bars[("reserved, empty", "x")] == [7, 10, 16]
    assert bars[("holding tokens", "x2")] == [9, 6, 0] and bars[("unfilled tail of the last block", "x2")] == [3, 2, 0]
    assert bars[("free: any request can take them", "x2")] == [0, 0, 5 * BS]
    names = [t.name for t in fig.data if t.showlegend is not False]
    assert len(names) == len(set(names))  # one legend entry per kind


def test_decode_bandwidth_figure_draws_each_batch_under_the_copy_line():
    cases = [DecodeCase(b, c, 16, 1, bytes_moved=b * c * 1000, paged_s=1e-3, sdpa_s=2e-3, copy_gb_s=20.0).row()
             for b in (1, 4) for c in (256, 1024)]
    report = {"device": "CPU (test)", "path": "torch", "dtype": "float32", "copy_gb_s": 20.0, "cases": cases}
    fig = decode_bandwidth_figure(report)
    paged = {t.name: list(t.y) for t in fig.data if t.name.startswith("paged")}
    assert paged == {"paged, batch 1": [256e3 / 1e-3 / 1e9, 1024e3 / 1e-3 / 1e9],
                     "paged, batch 4": [4 * 256e3 / 1e-3 / 1e9, 4 * 1024e3 / 1e-3 / 1e9]}
    assert fig.layout.shapes[0].y0 == 20.0


def test_a_cpu_report_draws_the_gather_path_beside_the_kernel_and_the_paging_cost_against_vllms_band():
    cases = [DecodeCase(b, 256, 16, 1, bytes_moved=10**6, paged_s=1.1e-3, sdpa_s=1e-3, copy_gb_s=20.0, gather_s=4e-3).row()
             for b in (1, 4)]
    report = {"device": "CPU (test)", "path": "C++ kernel", "dtype": "float32", "copy_gb_s": 20.0, "cases": cases}
    lines = {t.name: list(t.y) for t in decode_bandwidth_figure(report).data}
    assert lines["gather then attend, batch 4"] == [10**6 / 4e-3 / 1e9] and lines["paged, batch 1"] == [10**6 / 1.1e-3 / 1e9]
    fig = paging_cost_figure(report)
    bars = {t.name: [round(y, 6) for y in t.y] for t in fig.data}
    assert bars == {"C++ kernel, blocks read in place": [1.1, 1.1], "torch: gather the blocks, then attend": [4.0, 4.0]}
    band = fig.layout.shapes[0]
    assert (band.y0, band.y1) == (1.20, 1.26) and fig.layout.shapes[1].y0 == 1.0  # vLLM's band, SDPA's line


def test_pool_figure_of_a_prefix_cache_shows_evictable_blocks_with_their_lru_rank():
    cache = PrefixCachedPagedCache(TINY, "cpu", torch.float32, num_blocks=8, block_size=BS)
    cache.add_sequence(0, 9, [3] * 9)
    cache.begin_step([0], [9], [[3] * 9])
    cache.end_step()
    cache.add_sequence(1, 5, [4] * 5)
    cache.begin_step([1], [5], [[4] * 5])
    cache.end_step()
    cache.free_sequence(0)  # full blocks 1 then 0 become evictable (last block first); the partial one is free
    assert cache.allocator.lru_order() == [1, 0]
    fig = pool_figure(cache, columns=8)
    heat, labels = fig.data[0], list(fig.data[0].colorbar.ticktext)
    assert labels == ["free", "cached, no owner", "seq 1"]
    assert [labels[z] for z in heat.z[0]] == ["cached, no owner", "cached, no owner", "free", "seq 1", "seq 1",
                                             "free", "free", "free"]
    assert list(heat.text[0][:2]) == ["#0<br>LRU 1", "#1<br>LRU 0"]
    assert dict(heat.colorscale)[1 / 3] == CACHED_ONLY_COLOUR
    assert sorted(round(shape.x0 + 0.45) for shape in fig.layout.shapes) == [0, 1]  # dotted outlines
    assert "2 of 8 blocks in use, 2 cached without owner (LRU rank shown), 4 free" in fig.layout.title.text
