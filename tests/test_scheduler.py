"""The scheduler and the engine loop on a cheap stand-in model (tests/stand_in.py): a soak of 1,000 requests
through a small pool, the scheduler's invariants after every step, and bad input refused with nothing changed."""
from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from kvlab.cache import make_cache
from kvlab.engine import Engine, Request, StepClock
from kvlab.engine.request import Status
from stand_in import STAND_IN, stand_in_model

BS = 4


@pytest.fixture(scope="module")
def stand_in():
    return stand_in_model()


def new_engine(model, layout="paged", num_blocks=24, max_num_seqs=6, budget=32, policy="continuous", **options):
    cache = make_cache(layout, STAND_IN, "cpu", torch.float32, max_batch=max_num_seqs, max_len=96,
                       **({"block_size": BS, "num_blocks": num_blocks} if layout in ("paged", "prefix", "quantized") else {}),
                       **options)
    return Engine(model, None, cache, max_num_seqs=max_num_seqs, max_num_batched_tokens=budget, policy=policy,
                  clock=StepClock(), stop_at_eos=False)


def random_requests(count, seed=0, shared_prefixes=0, rate=2.0):
    rng = random.Random(seed)
    prefixes = [[rng.randrange(3, 64) for _ in range(rng.randint(4, 16))] for _ in range(shared_prefixes)]
    requests, t = [], 0.0
    for _ in range(count):
        head = list(rng.choice(prefixes)) if prefixes and rng.random() < 0.7 else []
        prompt = head + [rng.randrange(3, 64) for _ in range(rng.randint(1, 30))]
        t += rng.expovariate(rate)
        requests.append(Request(prompt, rng.randint(1, 12), arrival_s=t))
    return requests


def check_block_ownership(cache):
    """Every block is owned exactly as often as tables hold it; a free block is in no table and on no list twice."""
    alloc = cache.allocator
    holders = Counter(block for table in cache.block_tables.values() for block in table)
    for block in range(alloc.num_blocks):
        assert alloc.ref_counts[block] == holders[block], f"block {block}: {alloc.ref_counts[block]} refs, {holders[block]} tables"
    free = list(alloc.free_block_ids)
    assert len(free) == len(set(free)), "a block is on the free list twice"
    assert not set(free) & set(holders), "a block is free and in a table"
    evictable = set(getattr(alloc, "evictable", ()))
    assert not evictable & set(free) and not evictable & set(holders)
    assert len(free) + len(evictable) + len(holders) == alloc.num_blocks, "a block leaked"


def check_queues(engine):
    sched = engine.scheduler
    waiting, running = [s.seq_id for s in sched.waiting], [s.seq_id for s in sched.running]
    assert len(set(waiting)) == len(waiting) and len(set(running)) == len(running)
    assert not set(waiting) & set(running), "a sequence is in both queues"
    assert len(running) <= sched.max_num_seqs
    waiting_ids, running_ids = set(waiting), set(running)
    for seq in engine.sequences:
        in_queue = (seq.seq_id in waiting_ids) + (seq.seq_id in running_ids)
        assert in_queue == (seq.status is not Status.FINISHED), f"seq {seq.seq_id} ({seq.status}) in {in_queue} queues"
    assert set(engine.cache.lengths) == set(running), "the cache holds exactly the running sequences"


@pytest.mark.parametrize("layout", ["paged", "prefix"])
def test_soak_1000_requests_through_a_small_pool_all_complete_nothing_leaks(stand_in, layout):
    engine = new_engine(stand_in, layout, num_blocks=20)
    requests = random_requests(1000, seed=1, shared_prefixes=4 if layout == "prefix" else 0)
    for request in requests:
        engine.add_request(request)
    while engine.has_unfinished():
        record = engine.step()
        assert record.prefill_tokens + record.decode_tokens <= 32, "token budget exceeded"
        assert record.num_scheduled <= 6
        check_queues(engine)
        check_block_ownership(engine.cache)
    result = engine.result()
    assert [len(o.token_ids) for o in result.outputs] == [r.max_new_tokens for r in requests]
    assert all(o.finish_reason == "length" for o in result.outputs)
    assert engine.cache.allocator.num_available == 20 and not engine.cache.lengths
    assert result.num_preemptions == sum(len(s.preempted) for s in result.steps) > 50, "the pool should force preemption"
    assert all(o.arrival_s <= o.first_scheduled_s <= o.first_token_s <= o.finish_s for o in result.outputs)
    assert sum(s.tokens_out for s in result.steps) == result.output_tokens
    if layout == "prefix":
        assert engine.cache.stats.hit_tokens > 0, "shared prompt heads should hit the prefix cache"


@pytest.mark.parametrize("layout", ["paged", "prefix", "quantized", "contiguous", "none"])
def test_preempted_and_chunked_requests_give_the_tokens_they_get_alone(stand_in, layout):
    requests = random_requests(24, seed=2, shared_prefixes=2, rate=4.0)
    budget = 64 if layout == "none" else 8  # "none" recomputes whole sequences: it cannot chunk
    engine = new_engine(stand_in, layout, num_blocks=16, max_num_seqs=4, budget=budget)
    for request in requests:
        engine.add_request(request)
    result = engine.run()
    for request, output in zip(requests, result.outputs):
        alone = new_engine(stand_in, layout, num_blocks=64, max_num_seqs=1, budget=256)
        alone.add_request(Request(request.prompt, request.max_new_tokens))
        assert alone.run().outputs[0].token_ids == output.token_ids
    if layout in ("paged", "prefix", "quantized"):
        assert result.num_preemptions > 0
    if layout != "none":
        assert any(s.prefill and s.decode for s in result.steps), "chunks should mix with decode tokens"
        assert any(n < len(r.prompt) for r in requests for s in result.steps for q, n in s.prefill), "no prompt was chunked"


def test_a_long_prompt_is_prefilled_in_budget_sized_chunks(stand_in):
    engine = new_engine(stand_in, max_num_seqs=2, budget=8, num_blocks=64)
    engine.add_request(Request(list(range(3, 33)), 2))  # 30 tokens
    records = [engine.step() for _ in range(4)]
    assert [r.prefill for r in records] == [((0, 8),), ((0, 8),), ((0, 8),), ((0, 6),)]
    assert [r.tokens_out for r in records] == [0, 0, 0, 1]


def test_running_requests_decode_before_waiting_ones_are_admitted_fcfs(stand_in):
    engine = new_engine(stand_in, max_num_seqs=2, budget=64, num_blocks=64)
    for k in range(3):
        engine.add_request(Request([5 + k] * 6, 3))
    first = engine.step()
    assert first.admitted == (0, 1) and first.waiting == (2,)  # max_num_seqs = 2
    second = engine.step()
    assert second.decode == (0, 1) and not second.admitted
    while 2 not in engine.step().admitted:
        pass
    assert engine.sequences[2].first_scheduled_s > engine.sequences[1].first_scheduled_s


def test_preemption_takes_the_most_recently_admitted_and_it_resumes_first(stand_in):
    engine = new_engine(stand_in, max_num_seqs=3, budget=64, num_blocks=6)  # 24 token slots
    for k in range(3):
        engine.add_request(Request([7 + k] * 7, 8))  # 7 + 7 = 14 tokens each at the end: 4 blocks
    engine.add_request(Request([3] * 3, 2, arrival_s=0.5))
    records = []
    while engine.has_unfinished():
        records.append(engine.step())
    first_preemption = next(r for r in records if r.preempted)
    assert first_preemption.preempted[0] == 2, "the newest running request is the victim"
    preempted_since = []
    for record in records[first_preemption.index:]:
        if record.admitted:
            break
        preempted_since += record.preempted
    assert record.admitted[0] == preempted_since[-1], "the last preempted request goes back to the front of the queue"
    assert 3 not in record.admitted[:1] and engine.sequences[2].num_preemptions >= 1


def test_static_policy_admits_a_new_batch_only_when_the_last_one_finished(stand_in):
    engine = new_engine(stand_in, max_num_seqs=2, budget=64, num_blocks=64, policy="static")
    lengths = [2, 9, 3, 3]
    for k, n in enumerate(lengths):
        engine.add_request(Request([4 + k] * 5, n))
    result = engine.run()
    admitted = {seq: r.index for r in result.steps for seq in r.admitted}
    finished = {seq: r.index for r in result.steps for seq in r.finished}
    assert admitted[2] > finished[1] and admitted[3] > finished[1], "the second batch waited for the slowest of the first"
    assert any(r.occupancy < 1 for r in result.steps[: finished[1]]), "a finished slot stays empty in static batching"
    continuous = new_engine(stand_in, max_num_seqs=2, budget=64, num_blocks=64)
    for k, n in enumerate(lengths):
        continuous.add_request(Request([4 + k] * 5, n))
    assert continuous.run().token_ids == result.token_ids
    assert len(continuous.steps) < len(result.steps)


def test_arrivals_are_honoured_against_the_clock(stand_in):
    engine = new_engine(stand_in, max_num_seqs=4, budget=64, num_blocks=64)
    engine.add_request(Request([5] * 4, 2, arrival_s=0.0))
    engine.add_request(Request([6] * 4, 2, arrival_s=10.0))
    result = engine.run()
    late = result.outputs[1]
    assert late.first_scheduled_s == 10.0 and late.queue_s == 0.0
    assert late.ttft_s == 1.0 and late.tpot_s == 1.0  # StepClock: each step costs 1 s


@pytest.mark.parametrize("request_, needle", [
    (dict(prompt=[], max_new_tokens=4), "empty"),
    (dict(prompt="", max_new_tokens=4), "empty"),
    (dict(prompt=[5, 6], max_new_tokens=0), "max_new_tokens"),
    (dict(prompt=[5, 6], max_new_tokens=4, arrival_s=-1.0), "arrival_s"),
    (dict(prompt=[5, 6], max_new_tokens=4, arrival_s=float("nan")), "arrival_s"),
    (dict(prompt=[5, 6], max_new_tokens=4, arrival_s=float("inf")), "arrival_s"),
    (dict(prompt=[5, 6], max_new_tokens=4, arival_s=1.0), "arival_s"),
    (dict(prompt=[5, 99], max_new_tokens=4), "99"),
    (dict(prompt=[5] * 10, max_new_tokens=90), "may need 25 blocks"),  # never fits 24 blocks of 4
    (dict(prompt=[5] * 200, max_new_tokens=90), "context of 256"),
])
def test_a_bad_request_is_refused_by_name_and_running_requests_are_undisturbed(stand_in, request_, needle):
    engine = new_engine(stand_in)
    engine.add_request(Request([5, 6, 7], 6))
    engine.step()
    before = (dict(engine.cache.lengths), [s.seq_id for s in engine.scheduler.waiting], len(engine.sequences))
    with pytest.raises(ValueError, match=needle):
        engine.add_request(request_)
    assert (dict(engine.cache.lengths), [s.seq_id for s in engine.scheduler.waiting], len(engine.sequences)) == before
    assert engine.run().outputs[0].token_ids and len(engine.sequences) == 1


@pytest.mark.parametrize("kwargs, needle", [
    (dict(max_num_seqs=0), "max_num_seqs"), (dict(max_num_seqs=True), "max_num_seqs"),
    (dict(max_num_batched_tokens=0), "max_num_batched_tokens"), (dict(policy="orca"), "orca"),
])
def test_bad_engine_arguments_are_refused_by_name(stand_in, kwargs, needle):
    cache = make_cache("paged", STAND_IN, "cpu", torch.float32, max_batch=2, max_len=32)
    with pytest.raises(ValueError, match=needle):
        Engine(stand_in, None, cache, **kwargs)


def test_none_layout_refuses_a_request_that_could_never_be_fed_in_one_step(stand_in):
    engine = new_engine(stand_in, "none", budget=16)
    with pytest.raises(ValueError, match="max_num_batched_tokens=16"):
        engine.add_request(Request([5] * 10, 8))


def test_contiguous_admits_only_when_a_reserved_row_is_free_and_never_preempts(stand_in):
    cache = make_cache("contiguous", STAND_IN, "cpu", torch.float32, max_batch=2, max_len=40)
    engine = Engine(stand_in, None, cache, max_num_seqs=4, max_num_batched_tokens=64, clock=StepClock(), stop_at_eos=False)
    for k in range(4):
        engine.add_request(Request([5 + k] * 6, 5))
    while engine.has_unfinished():
        record = engine.step()
        assert len(record.running) <= 2 and not record.preempted


@pytest.mark.parametrize("options, needle", [
    (dict(num_blocks=0), "num_blocks must be a positive integer, got 0"),
    (dict(blok_size=16), "'blok_size'.*block_size, num_blocks, backend"),
    (dict(block_size=12), "block_size must be a power of two"),
])
def test_cache_options_are_checked_by_name(options, needle):
    with pytest.raises(ValueError, match=needle):
        make_cache("paged", STAND_IN, "cpu", torch.float32, max_batch=2, max_len=32, **options)


def test_requests_sharing_a_cached_prefix_are_admitted_together_into_an_exactly_sized_pool(stand_in):
    """A hit takes its blocks back from the evictable ones once: the blocks promised to the step are the fresh ones."""
    shared = [9, 8, 7, 6] * 4  # 4 full blocks of 4
    engine = new_engine(stand_in, "prefix", num_blocks=8, max_num_seqs=4, budget=64)
    engine.add_request(Request(shared + [5, 4, 3], 1))
    engine.run()
    assert engine.cache.allocator.num_evictable == 4  # the shared blocks stay cached
    for k in range(4):
        engine.add_request(Request(shared + [10 + k, 11, 12], 2))
    first = engine.step()
    assert first.admitted == (1, 2, 3, 4) and first.blocks_used == 8
