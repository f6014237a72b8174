"""A stateful search (hypothesis) over the engine with both tiers below a small prefix-caching pool: requests added
at any time, steps, swap preemption and resumption, prefix blocks evicted to the tier and hit from it, finishing —
and tier blocks corrupted at random. After every rule: no block in two places, reference counts exact, neither
tier over capacity or leaking; every finished request has the tokens it gets alone (tests/stand_in.py model)."""
from __future__ import annotations

import random

import torch
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kvlab.cache import make_cache
from kvlab.cache.tier import BlockTier
from kvlab.engine import Engine, Request, StepClock
from stand_in import STAND_IN, stand_in_model
from test_scheduler import BS, check_block_ownership, check_queues
from test_swap import check_prefix_tier, check_tier

MODEL = stand_in_model()
HEADS = [[5, 9, 14, 3, 22, 8, 31, 7], [40, 41, 12, 6, 18, 27, 33, 9, 10, 11]]  # shared prompt starts
_alone: dict[tuple, list[int]] = {}


def alone(prompt: list[int], max_new_tokens: int) -> list[int]:
    """The tokens a request gets by itself in a roomy pool (memoised: the machine asks often)."""
    key = (tuple(prompt), max_new_tokens)
    if key not in _alone:
        cache = make_cache("paged", STAND_IN, "cpu", torch.float32, max_batch=1, max_len=96, block_size=BS,
                           num_blocks=32)
        engine = Engine(MODEL, None, cache, max_num_seqs=1, max_num_batched_tokens=256, clock=StepClock(),
                        stop_at_eos=False)
        engine.add_request(Request(prompt, max_new_tokens))
        _alone[key] = engine.run().outputs[0].token_ids
    return _alone[key]


class EngineWithTiers(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        probe = make_cache("paged", STAND_IN, "cpu", torch.float32, 1, 16, block_size=BS, num_blocks=1)
        self.prefix_tier = BlockTier(probe.block_bytes(), capacity_blocks=6, kind="memory")
        self.swap_tier = BlockTier(probe.block_bytes(), capacity_blocks=12, kind="memory")
        cache = make_cache("prefix", STAND_IN, "cpu", torch.float32, max_batch=3, max_len=96, block_size=BS,
                           num_blocks=8, tier=self.prefix_tier)
        self.engine = Engine(MODEL, None, cache, max_num_seqs=3, max_num_batched_tokens=12, clock=StepClock(),
                             stop_at_eos=False, preemption="swap", swap_tier=self.swap_tier)
        self.requests: list[Request] = []
        self.corrupted = 0

    def teardown(self):
        self.prefix_tier.close()
        self.swap_tier.close()

    @rule(head=st.sampled_from([0, 1, None]), tail=st.lists(st.integers(3, 63), min_size=1, max_size=10),
          new=st.integers(1, 10))
    def add_request(self, head, tail, new):
        prompt = (list(HEADS[head]) if head is not None else []) + tail
        now = self.engine.clock.now()
        self.engine.add_request(Request(prompt, new, arrival_s=now))
        self.requests.append(Request(prompt, new, arrival_s=now))

    @rule(heads=st.lists(st.sampled_from([0, 1]), min_size=2, max_size=4), new=st.integers(4, 10))
    def add_a_burst_sharing_prefixes(self, heads, new):
        """Several requests at once, each a shared head and its own last token: the pool must preempt."""
        for k, head in enumerate(heads):
            self.add_request(head, [3 + (len(self.requests) + k) % 60], new)

    @precondition(lambda self: self.engine.has_unfinished())
    @rule(steps=st.integers(1, 6))
    def step(self, steps):
        for _ in range(steps):
            if self.engine.has_unfinished():
                self.engine.step()

    @precondition(lambda self: self.swap_tier.num_used or self.prefix_tier.num_used)
    @rule(seed=st.integers(0, 2**16))
    def corrupt_a_tier_block(self, seed):
        """A failing device: one used block of one tier gets a flipped byte (its checksum must catch it)."""
        tier = self.swap_tier if self.swap_tier.num_used else self.prefix_tier  # a waiting request's K/V first
        slot = random.Random(seed).choice(sorted(tier.used_slots))
        tier.storage[slot, seed % tier.block_bytes] ^= 0xFF
        self.corrupted += 1

    @precondition(lambda self: self.engine.has_unfinished())
    @rule()
    def drain(self):
        while self.engine.has_unfinished():
            self.engine.step()

    @invariant()
    def nothing_in_two_places_and_no_tier_leaks(self):
        check_queues(self.engine)
        check_block_ownership(self.engine.cache)
        check_tier(self.engine)
        check_prefix_tier(self.engine.cache)

    @invariant()
    def every_finished_request_has_its_own_tokens(self):
        for request, seq in zip(self.requests, self.engine.sequences):
            if seq.finish_reason is not None:
                assert seq.output_ids == alone(request.prompt, request.max_new_tokens), f"seq {seq.seq_id}"


EngineWithTiers.TestCase.settings = settings(max_examples=12, stateful_step_count=20, deadline=None,
                                             suppress_health_check=[HealthCheck.too_slow])
test_engine_with_both_tiers_keeps_every_invariant = EngineWithTiers.TestCase
