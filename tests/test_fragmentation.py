"""The fragmentation lab: traces, the contiguous region allocator, the replay through real allocators, and the
PagedAttention paper's finding reproduced on the fixed chat trace."""
from __future__ import annotations

from statistics import median

import plotly.graph_objects as go
import pytest

from kvlab.bench.fragmentation import (BLOCK_SIZES, LAYOUTS, block_size_sweep, block_table_cost, compare_layouts,
                                       replay)
from kvlab.cache import BlockAllocator, PoolExhausted, blocks_for
from kvlab.cache.region_allocator import RegionAllocator
from kvlab.viz.fragmentation_figures import memory_over_time_figure, waste_breakdown_figure
from kvlab.viz.fragmentation_widget import fragmentation_lab, fragmentation_lab_figure
from kvlab.workload import Request, Trace, chat_trace, synthetic_trace, validate_trace


@pytest.fixture(scope="module")
def chat():
    return chat_trace()


@pytest.fixture(scope="module")
def chat_results(chat):
    return compare_layouts(chat, pool_tokens=65536, block_size=16)


def small_trace(seed: int = 0) -> Trace:
    """60 requests, long-tailed, into a pool that cannot hold them all at once."""
    return synthetic_trace("lognormal", prompt_mean=60, output_mean=120, num_requests=60, seed=seed, max_len=512,
                           arrival_rate=1.0)


# --- traces --------------------------------------------------------------------------------------------------
def test_same_seed_gives_the_same_trace_and_another_seed_a_different_one():
    assert chat_trace(seed=3) == chat_trace(seed=3)
    assert chat_trace(seed=3).requests != chat_trace(seed=4).requests
    for distribution in ("lognormal", "uniform", "fixed"):
        a = synthetic_trace(distribution, 50, 80, num_requests=40, seed=1, max_len=256)
        assert a == synthetic_trace(distribution, 50, 80, num_requests=40, seed=1, max_len=256)
    uniform = [synthetic_trace("uniform", 50, 80, 40, seed=s).requests for s in (1, 2)]
    assert uniform[0] != uniform[1]


def test_chat_trace_is_long_tailed_like_sharegpt_and_fits_max_len(chat):
    prompts, outputs = [r.prompt_len for r in chat], [r.output_len for r in chat]
    assert 50 <= median(prompts) <= 200 and 100 <= median(outputs) <= 350
    assert max(prompts) > 5 * median(prompts) and max(outputs) > 5 * median(outputs)  # a long tail
    assert all(r.total_len <= chat.max_len == 2048 for r in chat)
    assert [r.arrival_step for r in chat] == sorted(r.arrival_step for r in chat)
    fixed = synthetic_trace("fixed", 30, 70, num_requests=10, max_len=256)
    assert {(r.prompt_len, r.output_len) for r in fixed} == {(30, 70)}


def test_bad_requests_and_traces_are_rejected_naming_the_value():
    with pytest.raises(ValueError, match="prompt_len must be an integer ≥ 1, got 0"):
        Request(0, 0, 5)
    with pytest.raises(ValueError, match="arrival_step .* got -1"):
        Request(-1, 5, 5)
    with pytest.raises(ValueError, match="request 3 has output_len 0"):
        validate_trace([(0, 5, 5), (1, 5, 5), (2, 5, 5), (3, 5, 0)])
    with pytest.raises(ValueError, match="request 1 arrives at step 2, before request 0"):
        validate_trace([Request(4, 5, 5), {"arrival_step": 2, "prompt_len": 5, "output_len": 5}])
    with pytest.raises(ValueError, match="request 0 has prompt_len 100 \\+ output_len 60 = 160 tokens, over max_len"):
        Trace((Request(0, 100, 60),), "too long", max_len=128)
    with pytest.raises(ValueError, match="unknown distribution 'zipf'"):
        synthetic_trace("zipf")
    with pytest.raises(ValueError, match="arrival_rate .* got 0"):
        synthetic_trace(arrival_rate=0)


# --- the contiguous region allocator -------------------------------------------------------------------------
def test_region_allocator_takes_the_first_hole_that_fits():
    regions = RegionAllocator(100)
    a, b, c = regions.allocate(10), regions.allocate(20), regions.allocate(30)
    assert (a, b, c) == (0, 10, 30) and regions.num_free == 40
    regions.free(b)  # holes: [10, 30) and [60, 100)
    assert regions.allocate(5) == 10  # first fit, not best fit: the earlier hole
    assert regions.allocate(25) == 60  # 15 left in the first hole: too short
    assert regions.free_holes == [(15, 15), (85, 15)] and regions.largest_free_hole == 15


def test_region_allocator_coalesces_freed_neighbours_into_one_hole():
    regions = RegionAllocator(90)
    starts = [regions.allocate(30) for _ in range(3)]
    regions.free(starts[0])
    regions.free(starts[2])
    assert regions.free_holes == [(0, 30), (60, 30)]
    regions.free(starts[1])  # merges with both sides
    assert regions.free_holes == [(0, 90)] and regions.num_free == 90 and regions.regions == {}
    with pytest.raises(ValueError, match="no live region starts at slot 30"):
        regions.free(30)


def test_external_fragmentation_refuses_a_request_the_total_free_could_hold_and_changes_nothing():
    regions = RegionAllocator(100)
    a, _, c, _ = [regions.allocate(25) for _ in range(4)]
    regions.free(a)
    regions.free(c)
    assert regions.num_free == 50 and regions.largest_free_hole == 25
    before = (list(regions.free_holes), dict(regions.regions), regions.num_free)
    with pytest.raises(PoolExhausted, match="50 of 100 slots are free, the largest hole holds 25") as error:
        regions.allocate(30)
    assert error.value.needed == 30 and error.value.free == 50
    assert not regions.can_allocate(30)
    assert (regions.free_holes, regions.regions, regions.num_free) == before


# --- the replay --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
def test_replay_invariants_hold_at_every_step(layout):
    trace, pool, bs = small_trace(), 4096, 16
    seen = []

    def check(step, allocator):
        expected = allocator.num_used * (bs if isinstance(allocator, BlockAllocator) else 1)
        seen.append((step, expected, allocator))

    result = replay(trace, layout, pool_tokens=pool, block_size=bs, on_step=check)
    allocator = seen[0][2]
    assert isinstance(allocator, BlockAllocator if layout == "paged" else RegionAllocator)
    assert [s for s, _, _ in seen] == list(range(result.steps))
    for t, (_, reserved, _) in enumerate(seen):
        assert result.reserved[t] == reserved  # from the real allocator, at that step
        assert 0 <= result.used[t] <= result.reserved[t] <= pool
        assert result.used[t] + result.reserved_unused[t] + result.internal[t] == result.reserved[t]
        assert 0 <= result.external[t] <= pool - result.reserved[t]
    assert allocator.num_free == (pool // bs if layout == "paged" else pool)  # everything returned
    for request, finished in zip(trace, result.finished_step):
        assert finished >= request.arrival_step + request.output_len  # prefill step + output_len decode steps
    assert result.running[-1] >= 1 and result.waiting[-1] == 0
    assert max(result.waiting) > 0  # the pool was a bottleneck: the test exercised the queue


def test_paged_replay_preempts_the_newest_and_still_finishes_every_request():
    result = replay(small_trace(), "paged", pool_tokens=2048, block_size=16)
    assert result.preemptions > 0
    assert min(result.finished_step) >= 0


def test_paged_waste_is_only_the_unfilled_tail_of_the_last_blocks():
    result = replay(small_trace(), "paged", pool_tokens=4096, block_size=16)
    assert set(result.reserved_unused) == {0} and set(result.external) == {0}
    for t in range(result.steps):
        assert result.internal[t] < 16 * max(result.running[t], 1)  # under one block per running request


def test_contiguous_exact_reserves_exactly_and_its_region_is_full_when_the_request_finishes():
    one = Trace((Request(0, 7, 5),), "one request", max_len=64)
    result = replay(one, "contiguous-exact", pool_tokens=64)
    assert result.reserved == [12] * 6 and result.used == [7, 8, 9, 10, 11, 12]
    assert result.reserved_unused == [5, 4, 3, 2, 1, 0] and set(result.internal) == {0}
    exact = replay(small_trace(), "contiguous-exact", pool_tokens=4096)
    assert set(exact.internal) == {0}
    maximum = replay(one, "contiguous-max", pool_tokens=64)
    assert maximum.reserved == [64] * 6 and maximum.internal == [64 - 12] * 6


def test_only_contiguous_exact_regions_suffer_external_fragmentation(chat_results):
    assert max(chat_results["contiguous-exact"].external) > 0
    assert set(chat_results["paged"].external) == {0}
    assert set(chat_results["contiguous-max"].external) == {0}  # equal regions, pool a multiple of max_len


def test_chat_trace_reproduces_the_pagedattention_finding(chat_results):
    """Kwon et al. 2023: contiguous systems keep ~20–40% of KV memory in token states; paged wastes < 4% at bs 16."""
    most, exact, paged = (chat_results[k] for k in LAYOUTS)
    assert most.usage < 0.45  # averaged over the whole run, the lone long requests of the drain included
    assert 0.20 <= most.usage_loaded <= 0.40  # while requests wait for memory: the paper's band
    assert most.usage < exact.usage < paged.usage
    assert paged.share_of_reserved("internal") < 0.04 and paged.usage > 0.96
    assert paged.mean_concurrency > 1.5 * most.mean_concurrency and paged.peak_concurrency > 4 * most.peak_concurrency
    assert paged.steps < most.steps


def test_a_pool_too_small_for_one_request_and_a_bad_block_size_are_refused(chat):
    with pytest.raises(ValueError, match="pool of 1,000 token slots cannot hold even one contiguous-max reservation "
                                         "of max_len 2,048"):
        replay(chat, "contiguous-max", pool_tokens=1000)
    longest = max(r.total_len for r in chat)
    with pytest.raises(ValueError, match=f"= {longest:,} tokens"):
        replay(chat, "contiguous-exact", pool_tokens=longest - 1)
    with pytest.raises(ValueError, match=f"{(longest - 1) // 16} blocks of 16 cannot hold request"):
        replay(chat, "paged", pool_tokens=longest - 1, block_size=16)
    for bad in (0, 3, 512):
        with pytest.raises(ValueError, match="power of two from 1 to 256"):
            replay(chat, "paged", block_size=bad)
    with pytest.raises(ValueError, match="unknown layout 'ring'"):
        replay(chat, "ring")


def test_block_table_cost_grows_as_block_size_shrinks():
    trace = small_trace()
    costs = [block_table_cost(bs, trace) for bs in BLOCK_SIZES]
    for small, large in zip(costs, costs[1:]):
        assert small.entries_per_seq > large.entries_per_seq and small.gathers_per_step > large.gathers_per_step
    assert costs[0].entries_per_seq == pytest.approx(sum(r.total_len for r in trace) / len(trace))
    reads = [blocks_for(r.prompt_len + k, 16) for r in trace for k in range(1, r.output_len + 1)]  # brute force
    assert block_table_cost(16, trace).gathers_per_step == pytest.approx(sum(reads) / len(reads))


def test_block_size_sweep_trades_internal_waste_against_table_length():
    points = block_size_sweep(small_trace(), pool_tokens=8192, block_sizes=(1, 4, 16, 64, 256))
    waste = [p.internal_of_reserved for p in points]
    assert waste[0] == 0 and waste == sorted(waste) and waste[-1] > waste[0]
    entries = [p.cost.entries_per_seq for p in points]
    assert entries == sorted(entries, reverse=True)


# --- figures and the widget ---------------------------------------------------------------------------------------
def test_figures_draw_the_replayed_numbers():
    results = compare_layouts(small_trace(), pool_tokens=4096)
    memory = memory_over_time_figure(results)
    reserved = {t.name: list(t.y) for t in memory.data if t.name.endswith("reserved")}
    assert reserved["paged, 16-token blocks: reserved"] == results["paged"].reserved
    bars = waste_breakdown_figure(results)
    totals = [sum(t.x[i] for t in bars.data) for i in range(len(LAYOUTS))]
    assert totals == pytest.approx([100.0] * len(LAYOUTS))


def test_the_widget_shows_a_red_message_for_a_pool_too_small_and_recovers():
    panel = fragmentation_lab(num_requests=20)
    assert panel.message.value == "" and "kvlab-message" in panel.message._dom_classes
    before = list(panel.figures[0].data[0].y)
    panel.controls["pool_tokens"].value = 1024
    assert "1,024" in panel.message.value and "2,048" in panel.message.value and "#c0392b" in panel.message.value
    assert list(panel.figures[0].data[0].y) == before  # the last good figures stay
    panel.controls["pool_tokens"].value = 8192
    assert panel.message.value == ""
    assert "<table>" in panel.children[4].value
    panel.controls["preset"].value = False
    assert not panel.controls["distribution"].disabled and panel.message.value == ""


def test_headless_lab_figure_is_a_plain_figure_of_all_layouts():
    fig = fragmentation_lab_figure(num_requests=20, pool_tokens=8192)
    assert type(fig) is go.Figure
    names = " ".join(t.name or "" for t in fig.data)
    assert all(layout in names for layout in ("contiguous-max", "contiguous-exact", "paged"))
