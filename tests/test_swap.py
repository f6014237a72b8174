"""Swap preemption on the stand-in model (tests/stand_in.py): requests swapped to the tier and back give the tokens
they get alone; after every step no block is in two places and neither tier leaks; every tier fault — full,
corrupt, vanished, unwritable — is logged and recovered by recomputing, never a lost request or a wrong token."""
from __future__ import annotations

import os

import pytest
import torch

from kvlab.cache import blocks_for, make_cache
from kvlab.cache.swap import read_in, reserve_in, stage_out, write_out
from kvlab.cache.tier import BlockTier
from kvlab.engine import Engine, Request, StepClock
from kvlab.engine.offload import OffloadCosts
from stand_in import STAND_IN, stand_in_model
from test_scheduler import BS, check_block_ownership, check_queues, random_requests


@pytest.fixture(scope="module")
def stand_in():
    return stand_in_model()


@pytest.fixture(scope="module")
def requests():
    return random_requests(40, seed=2, shared_prefixes=2, rate=4.0)


def tokens_alone(model, request):
    """The request's tokens, run by itself in a roomy pool."""
    engine = swap_engine(model, "paged", num_blocks=64, max_num_seqs=1, budget=256, preemption="recompute")
    engine.add_request(Request(request.prompt, request.max_new_tokens))
    return engine.run().outputs[0].token_ids


@pytest.fixture(scope="module")
def alone(stand_in, requests):
    return [tokens_alone(stand_in, request) for request in requests]


def swap_engine(model, layout="paged", num_blocks=16, max_num_seqs=4, budget=8, preemption="swap", tier=None,
                tier_blocks=64, costs=None):
    cache = make_cache(layout, STAND_IN, "cpu", torch.float32, max_batch=max_num_seqs, max_len=96, block_size=BS,
                       num_blocks=num_blocks)
    if tier is None and preemption != "recompute":
        tier = BlockTier(cache.block_bytes(), capacity_blocks=tier_blocks, kind="file")
    return Engine(model, None, cache, max_num_seqs=max_num_seqs, max_num_batched_tokens=budget, clock=StepClock(),
                  stop_at_eos=False, preemption=preemption, swap_tier=tier, offload_costs=costs)


def check_tier(engine):
    """The tier holds exactly the swapped-out sequences' blocks, each once, within its capacity."""
    tier, swapped = engine.tier, engine.scheduler.swapped
    slots = [slot for s in swapped.values() for slot in s.slots]
    assert len(slots) == len(set(slots)), "a tier slot holds two blocks"
    assert set(slots) == tier.used_slots, "a tier slot leaked or was lost"
    assert tier.num_used <= tier.capacity
    assert not set(swapped) & set(engine.cache.lengths), "a sequence both in the pool and in the tier"


def run_checked(engine, requests, between_steps=None):
    """Serve `requests`, checking queues, blocks and each tier the engine has after every step."""
    for request in requests:
        engine.add_request(request)
    while engine.has_unfinished():
        engine.step()
        check_queues(engine)
        check_block_ownership(engine.cache)
        if engine.tier is not None:
            check_tier(engine)
        if getattr(engine.cache, "offload", None) is not None:
            check_prefix_tier(engine.cache)
        if between_steps is not None:
            between_steps(engine)
    return engine.result()


@pytest.mark.parametrize("layout", ["paged", "prefix"])
def test_swapped_requests_give_the_tokens_they_get_alone_and_nothing_is_in_two_places(stand_in, requests, alone,
                                                                                      layout):
    engine = swap_engine(stand_in, layout)
    result = run_checked(engine, requests)
    assert result.token_ids == alone
    swapped_out = [seq for s in result.steps for seq in s.swapped_out]
    assert len(swapped_out) >= 5 and sorted(swapped_out) == sorted(seq for s in result.steps for seq in s.swapped_in)
    assert len(swapped_out) == result.num_preemptions, "preemption='swap' swaps every victim"
    assert engine.tier.num_used == 0 and engine.tier.stats.blocks_written == engine.tier.stats.blocks_read > 0
    assert all("swap — preemption='swap'" in r for s in result.steps for r in s.preemption_reasons)


@pytest.mark.parametrize("layout", ["paged", "prefix"])
def test_the_tier_is_written_and_read_at_most_once_a_step_however_many_sequences_move(stand_in, layout):
    burst = random_requests(16, seed=0, rate=1000.0)  # all at once: several swapped requests resume together
    alone = [tokens_alone(stand_in, request) for request in burst]
    engine = swap_engine(stand_in, layout, num_blocks=12, max_num_seqs=6, budget=12)
    copies, before = [], {"puts": 0, "gets": 0}

    def count_copies(engine):
        stats, step = engine.tier.stats, engine.steps[-1]
        copies.append((stats.puts - before["puts"], len(step.swapped_out), stats.gets - before["gets"],
                       len(step.swapped_in)))
        before.update(puts=stats.puts, gets=stats.gets)

    assert run_checked(engine, burst, count_copies).token_ids == alone
    assert all(puts == (out > 0) and gets == (into > 0) for puts, out, gets, into in copies), copies
    assert max(out for _, out, _, _ in copies) >= 2 or max(into for *_, into in copies) >= 2, \
        "no step moved two sequences: this test checks nothing"


def test_a_swapped_in_prefix_block_whose_content_is_still_cached_merges_into_the_cached_block(stand_in, requests,
                                                                                             alone):
    engine = swap_engine(stand_in, "prefix")
    result = run_checked(engine, requests)
    assert result.token_ids == alone
    assert any(e.kind == "merge" for e in engine.cache.events) or engine.cache.stats.hit_tokens > 0


def test_a_full_tier_is_logged_and_the_victim_is_recomputed(stand_in, requests, alone):
    engine = swap_engine(stand_in, tier_blocks=3)
    result = run_checked(engine, requests)
    assert result.token_ids == alone
    faults = [f for s in result.steps for f in s.tier_faults]
    assert faults and all("swap-out" in f and "full" in f for f in faults), faults[:3]
    recomputed = [r for s in result.steps for r in s.preemption_reasons if "recompute" in r]
    assert len(recomputed) == len(faults) and all("the tier refused" in r for r in recomputed)


def _corrupt_first_swapped_block(engine):
    if engine.scheduler.swapped and not getattr(engine, "_corrupted", False):
        slot = next(iter(engine.scheduler.swapped.values())).slots[0]
        with open(engine.tier.path, "r+b") as f:  # behind the tier's back, as a failing disk would
            f.seek(slot * engine.tier.block_bytes + 5)
            byte = f.read(1)
            f.seek(slot * engine.tier.block_bytes + 5)
            f.write(bytes([byte[0] ^ 0xFF]))
        engine._corrupted = True


def test_a_corrupt_tier_block_is_caught_by_its_checksum_and_the_request_recomputed(stand_in, requests, alone):
    engine = swap_engine(stand_in)
    result = run_checked(engine, requests, _corrupt_first_swapped_block)
    assert result.token_ids == alone
    faults = [f for s in result.steps for f in s.tier_faults]
    assert len(faults) == 1 and "swap-in" in faults[0] and "checksum" in faults[0] and "recomputing" in faults[0]


@pytest.mark.parametrize("fault", ["vanished", "unwritable"])
def test_a_vanished_or_unwritable_tier_file_is_reported_by_name_and_requests_recompute(stand_in, requests, alone,
                                                                                      fault):
    engine = swap_engine(stand_in)

    def break_the_file(engine):
        if engine.scheduler.swapped and not getattr(engine, "_broken", False):
            if fault == "vanished":
                os.remove(engine.tier.path)
            else:
                os.chmod(engine.tier.path, 0o444)
            engine._broken = True

    result = run_checked(engine, requests, break_the_file)
    assert result.token_ids == alone
    faults = [f for s in result.steps for f in s.tier_faults]
    assert faults and all(str(engine.tier.path) in f for f in faults)
    if fault == "vanished":
        assert any("swap-in" in f for f in faults), "the blocks already out should be lost and recomputed"
    assert any("swap-out" in f for f in faults), "later preemptions should find the file unusable"


def test_auto_swaps_when_the_measured_copy_is_cheaper_and_recomputes_when_it_is_not(stand_in, requests, alone):
    cheap_copy = OffloadCosts(tier_write_gb_s=100.0, tier_read_gb_s=100.0, prefill_s_per_token=1e-3)
    slow_copy = OffloadCosts(tier_write_gb_s=1e-6, tier_read_gb_s=1e-6, prefill_s_per_token=1e-3)
    for costs, mode in ((cheap_copy, "swap"), (slow_copy, "recompute")):
        result = run_checked(swap_engine(stand_in, preemption="auto", costs=costs), requests)
        assert result.token_ids == alone
        reasons = [r for s in result.steps for r in s.preemption_reasons]
        assert reasons and all(f": {mode} — " in r and "ms vs recomputing" in r for r in reasons), reasons[:2]


@pytest.mark.parametrize("kwargs, needle", [
    (dict(preemption="sometimes"), "'sometimes'"),
    (dict(layout="quantized"), "'quantized' layout cannot swap"),
])
def test_bad_preemption_settings_are_refused_by_name(stand_in, kwargs, needle):
    layout = kwargs.pop("layout", "paged")
    cache = make_cache(layout, STAND_IN, "cpu", torch.float32, max_batch=2, max_len=32, block_size=BS, num_blocks=8)
    with pytest.raises(ValueError, match=needle):
        Engine(stand_in, None, cache, clock=StepClock(), preemption=kwargs.get("preemption", "swap"))


def test_a_tier_of_other_block_bytes_is_refused(stand_in):
    cache = make_cache("paged", STAND_IN, "cpu", torch.float32, max_batch=2, max_len=32, block_size=BS, num_blocks=8)
    with BlockTier(cache.block_bytes() + 1, capacity_blocks=4, kind="memory") as tier:
        with pytest.raises(ValueError, match=f"{cache.block_bytes() + 1} bytes"):
            Engine(stand_in, None, cache, clock=StepClock(), preemption="swap", swap_tier=tier)


# --- the offloaded prefix cache: evicted prefix blocks go to the tier, later hits load them back -----------------
def prefix_engine(model, tier_blocks=None, num_blocks=24, kind="file"):
    cache = make_cache("prefix", STAND_IN, "cpu", torch.float32, max_batch=4, max_len=96, block_size=BS,
                       num_blocks=num_blocks)
    if tier_blocks is not None:
        tier = BlockTier(cache.block_bytes(), capacity_blocks=tier_blocks, kind=kind)
        cache = make_cache("prefix", STAND_IN, "cpu", torch.float32, max_batch=4, max_len=96, block_size=BS,
                           num_blocks=num_blocks, tier=tier)
    return Engine(model, None, cache, max_num_seqs=4, max_num_batched_tokens=16, clock=StepClock(), stop_at_eos=False)


@pytest.fixture(scope="module")
def chat_requests():
    return random_requests(60, seed=3, shared_prefixes=6, rate=1.0)


@pytest.fixture(scope="module")
def without_tier(stand_in, chat_requests):
    engine = prefix_engine(stand_in)
    return run_checked(engine, chat_requests), engine.cache.stats


def check_prefix_tier(cache):
    """A chain hash lives in the pool or in the tier, never both; the tier's slots are exactly its blocks'."""
    store = cache.offload
    assert not set(store.blocks) & set(cache.index.by_hash), "a prefix block both in the pool and in the tier"
    slots = [b.slot for b in store.blocks.values()]
    assert len(slots) == len(set(slots)) and set(slots) == store.tier.used_slots
    assert store.tier.num_used <= store.tier.capacity


def test_evicted_prefix_blocks_served_from_the_tier_give_the_same_tokens_and_more_hits(stand_in, chat_requests,
                                                                                        without_tier):
    cold, cold_stats = without_tier
    engine = prefix_engine(stand_in, tier_blocks=64)
    result = run_checked(engine, chat_requests)
    stats, store = engine.cache.stats, engine.cache.offload.stats
    assert result.token_ids == cold.token_ids
    assert stats.tier_hit_tokens > 0 and stats.hit_tokens > cold_stats.hit_tokens
    assert store.loaded_blocks * BS == stats.tier_hit_tokens and store.offloaded_blocks >= store.loaded_blocks
    assert any("loaded back from the tier" in e.text for e in engine.cache.events if e.kind == "hit")
    pool, tier = map(sum, zip(*engine.cache.hit_sources.values())) if engine.cache.hit_sources else (0, 0)
    assert (pool, tier) == (0, 0), "finished sequences leave no hit record behind"


def test_a_small_prefix_tier_drops_its_least_recently_used_blocks_and_still_gives_the_same_tokens(
        stand_in, chat_requests, without_tier):
    engine = prefix_engine(stand_in, tier_blocks=6)
    result = run_checked(engine, chat_requests)
    assert result.token_ids == without_tier[0].token_ids
    assert engine.cache.offload.stats.dropped_blocks > 0 and engine.cache.offload.tier.num_used <= 6


def test_a_corrupt_prefix_block_in_the_tier_is_never_served_the_prompt_is_computed(stand_in, chat_requests,
                                                                                   without_tier):
    engine = prefix_engine(stand_in, tier_blocks=64, kind="memory")
    tier = engine.cache.offload.tier
    honest_put = tier.put

    def put_and_corrupt(data):  # a failing device: every block written goes bad after its checksum was taken
        slots = honest_put(data)
        tier.storage[slots, 3] ^= 0xFF
        return slots

    tier.put = put_and_corrupt
    result = run_checked(engine, chat_requests)
    assert result.token_ids == without_tier[0].token_ids
    assert engine.cache.stats.tier_hit_tokens == 0 and engine.cache.offload.stats.faults > 0
    faults = [f for s in result.steps for f in s.tier_faults]
    assert faults and all("checksum" in f and "computed instead" in f for f in faults)
    assert any(e.kind == "tier-fault" for e in engine.cache.events)


def test_one_batched_read_with_a_corrupt_block_loses_only_its_own_sequence(stand_in):
    cache = make_cache("paged", STAND_IN, "cpu", torch.float32, max_batch=2, max_len=64, block_size=BS, num_blocks=16)
    tier = BlockTier(cache.block_bytes(), capacity_blocks=16, kind="memory")
    for pool in cache.k_pools + cache.v_pools:
        pool.copy_(torch.randn_like(pool))
    for seq_id, length in ((0, 3 * BS - 1), (1, 2 * BS)):
        cache.add_sequence(seq_id, 64)
        cache.block_tables[seq_id] = cache.allocator.allocate(blocks_for(length, BS))
        cache.lengths[seq_id] = length
    before = {s: cache.export_blocks(cache.block_tables[s]) for s in (0, 1)}
    swapped = write_out([stage_out(cache, 0), stage_out(cache, 1)], tier)
    assert tier.stats.puts == 1 and cache.blocks_free() == 16
    tier.storage[swapped[0].slots[1], 7] ^= 0xFF  # a block of sequence 0 goes bad in the tier
    for s in swapped:
        reserve_in(cache, s.seq_id, 64, s)
    failed = read_in(cache, swapped, tier)
    assert set(failed) == {0} and "checksum" in str(failed[0])
    assert 0 not in cache.lengths and torch.equal(cache.export_blocks(cache.block_tables[1]), before[1])
    assert tier.num_used == 0 and cache.blocks_free() == 16 - 2
