"""The block allocator and the paged cache's bookkeeping: a stateful property test and targeted unit tests."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kvlab.cache import BlockAllocator, ContiguousCache, PagedCache, PoolExhausted, make_cache
from kvlab.model.config import LlamaConfig

TINY = LlamaConfig(name="tiny", num_layers=2, hidden_size=64, ffn_size=128, num_heads=4, num_kv_heads=2, head_dim=16,
                   vocab_size=100, context_len=512, rope_base=10000.0, rms_eps=1e-5, tied_embeddings=True,
                   bos_token_id=1, eos_token_id=2)


def step(cache, seq_ids, counts, kv=None):
    """One cache step without the model: allocate, optionally write K/V, commit."""
    s = cache.begin_step(seq_ids, counts)
    if kv is not None:
        cache.write(0, *kv)
    cache.end_step()
    return s


def snapshot(cache: PagedCache):
    a = cache.allocator
    return (list(a.free_block_ids), list(a.ref_counts), {s: list(t) for s, t in cache.block_tables.items()}, dict(cache.lengths))


class PagedBookkeeping(RuleBasedStateMachine):
    """Random add / append / finish / fork sequences against the invariants of a paged pool."""

    def __init__(self):
        super().__init__()
        self.cache = PagedCache(TINY, "cpu", torch.float32, num_blocks=24, block_size=4)
        self.next_id = 0

    @rule(prompt=st.integers(1, 20))
    def add(self, prompt):
        seq = self.next_id
        self.next_id += 1
        self.cache.add_sequence(seq, 64)
        before = snapshot(self.cache)
        try:
            step(self.cache, [seq], [prompt])
        except PoolExhausted:
            assert snapshot(self.cache) == before  # nothing taken, nothing freed
            self.cache.free_sequence(seq)

    @precondition(lambda self: self.cache.lengths)
    @rule(data=st.data(), tokens=st.integers(1, 6))
    def append(self, data, tokens):
        seq = data.draw(st.sampled_from(sorted(self.cache.lengths)))
        before = snapshot(self.cache)
        try:
            step(self.cache, [seq], [tokens])
        except PoolExhausted:
            assert snapshot(self.cache) == before

    @precondition(lambda self: self.cache.lengths)
    @rule(data=st.data())
    def finish(self, data):
        seq = data.draw(st.sampled_from(sorted(self.cache.lengths)))
        self.cache.free_sequence(seq)

    @precondition(lambda self: self.cache.lengths)
    @rule(data=st.data())
    def fork(self, data):
        parent = data.draw(st.sampled_from(sorted(self.cache.lengths)))
        child = self.next_id
        self.next_id += 1
        before = snapshot(self.cache)
        try:
            self.cache.fork(parent, child)
        except PoolExhausted:
            assert snapshot(self.cache) == before

    @invariant()
    def free_plus_used_is_the_pool(self):
        a = self.cache.allocator
        assert len(set(a.free_block_ids)) == len(a.free_block_ids)  # no block free twice
        assert a.num_free + sum(1 for r in a.ref_counts if r > 0) == a.num_blocks

    @invariant()
    def reference_counts_are_exact(self):
        owners = [0] * self.cache.allocator.num_blocks
        for table in self.cache.block_tables.values():
            assert len(set(table)) == len(table)  # a sequence never holds a block twice
            for block in table:
                owners[block] += 1
        assert owners == self.cache.allocator.ref_counts
        assert all(self.cache.allocator.ref_counts[b] == 0 for b in self.cache.allocator.free_block_ids)

    @invariant()
    def table_length_is_ceil_of_length_over_block_size(self):
        for seq, table in self.cache.block_tables.items():
            assert len(table) == math.ceil(self.cache.lengths[seq] / self.cache.block_size)

    @invariant()
    def only_full_blocks_are_shared(self):
        # a block a sequence still writes into (its partial last block) must be its own
        for seq, table in self.cache.block_tables.items():
            if table and self.cache.lengths[seq] % self.cache.block_size:
                assert self.cache.allocator.ref_counts[table[-1]] == 1


TestPagedBookkeeping = PagedBookkeeping.TestCase
TestPagedBookkeeping.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


def test_pool_exhaustion_raises_named_error_and_changes_nothing():
    cache = PagedCache(TINY, "cpu", torch.float32, num_blocks=4, block_size=4)
    cache.add_sequence(0, 16)
    cache.add_sequence(1, 16)
    step(cache, [0], [9])  # 3 blocks
    before = snapshot(cache)
    with pytest.raises(PoolExhausted, match="need 2 blocks, 1 of 4 are free"):
        cache.begin_step([0, 1], [1, 5])  # seq 0 needs none (10 tokens fit 3 blocks), seq 1 needs 2
    assert snapshot(cache) == before and cache.current_step is None
    step(cache, [1], [4])  # one block is still there for a request that fits
    assert cache.allocator.num_free == 0


def test_a_new_block_only_when_a_sequence_crosses_a_block_boundary():
    cache = PagedCache(TINY, "cpu", torch.float32, num_blocks=8, block_size=4)
    cache.add_sequence(0, 32)
    sizes = []
    for _ in range(9):
        step(cache, [0], [1])
        sizes.append(len(cache.block_tables[0]))
    assert sizes == [1, 1, 1, 1, 2, 2, 2, 2, 3]


def test_finishing_returns_every_block():
    cache = PagedCache(TINY, "cpu", torch.float32, num_blocks=8, block_size=2)
    for seq, n in enumerate([3, 5, 1]):
        cache.add_sequence(seq, 16)
        step(cache, [seq], [n])
    assert cache.allocator.num_used == 2 + 3 + 1
    for seq in range(3):
        cache.free_sequence(seq)
    assert cache.allocator.num_free == 8 and not cache.block_tables


@pytest.mark.parametrize("block_size", [0, 3, 512, -4, 2.0, True])
def test_block_size_must_be_a_power_of_two_up_to_256(block_size):
    with pytest.raises(ValueError, match="block_size"):
        PagedCache(TINY, "cpu", torch.float32, num_blocks=4, block_size=block_size)


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="cuda-graphs"):
        PagedCache(TINY, "cpu", torch.float32, num_blocks=4, block_size=4, backend="cuda-graphs")


def test_a_sequence_that_can_never_fit_the_pool_is_refused_up_front():
    cache = PagedCache(TINY, "cpu", torch.float32, num_blocks=4, block_size=4)
    with pytest.raises(ValueError, match="17 tokens"):
        cache.add_sequence(0, 17)
    assert not cache.lengths and cache.allocator.num_free == 4


def test_allocator_refuses_to_release_a_free_or_foreign_block():
    allocator = BlockAllocator(4, 16)
    with pytest.raises(ValueError, match="block 2 is free"):
        allocator.release(2)
    with pytest.raises(ValueError, match="block 9 is outside"):
        allocator.share(9)


def _random_kv(batch, new_len, generator):
    k = torch.randn(batch, new_len, TINY.num_kv_heads, TINY.head_dim, generator=generator)
    v = torch.randn(batch, new_len, TINY.num_kv_heads, TINY.head_dim, generator=generator)
    q = torch.randn(batch, new_len, TINY.num_heads, TINY.head_dim, generator=generator)
    return q, k, v


@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_paged_attention_equals_contiguous_on_a_ragged_batch(block_size):
    g = torch.Generator().manual_seed(0)
    paged = PagedCache(TINY, "cpu", torch.float32, num_blocks=64, block_size=block_size)
    contiguous = ContiguousCache(TINY, "cpu", torch.float32, max_batch=2, max_len=32)
    for cache in (paged, contiguous):
        cache.add_sequence(10, 32)
        cache.add_sequence(11, 32)
    for counts in ([7, 1], [1, 1], [1, 5], [1, 1]):
        q, k, v = _random_kv(2, max(counts), g)
        outs = []
        for cache in (paged, contiguous):
            cache.begin_step([10, 11], counts)
            cache.write(0, k, v)
            outs.append(cache.attend(0, q))
            valid = cache.current_step.valid
            cache.end_step()
        torch.testing.assert_close(outs[0][valid], outs[1][valid])


def test_fork_copies_the_partial_block_and_shares_the_full_ones():
    g = torch.Generator().manual_seed(1)
    cache = PagedCache(TINY, "cpu", torch.float32, num_blocks=8, block_size=4)
    cache.add_sequence(0, 32)
    _, k, v = _random_kv(1, 6, g)
    step(cache, [0], [6], kv=(k, v))
    cache.fork(0, 1)
    parent, child = cache.block_tables[0], cache.block_tables[1]
    assert child[0] == parent[0] and cache.allocator.ref_counts[parent[0]] == 2
    assert child[1] != parent[1]
    torch.testing.assert_close(cache.k_pools[0][child[1], :2], cache.k_pools[0][parent[1], :2])
    _, k2, v2 = _random_kv(1, 1, g)
    step(cache, [1], [1], kv=(k2, v2))  # the child writes token 6 into its own copy
    torch.testing.assert_close(cache.k_pools[0][child[1], 2], k2[0, 0])
    assert not torch.equal(cache.k_pools[0][parent[1], 2], k2[0, 0])


def test_make_cache_builds_a_paged_pool_big_enough_for_the_batch():
    cache = make_cache("paged", TINY, "cpu", torch.float32, max_batch=3, max_len=33, block_size=16)
    assert isinstance(cache, PagedCache) and cache.allocator.num_blocks == 3 * 3


def test_reserved_bytes_count_whole_blocks():
    cache = PagedCache(TINY, "cpu", torch.float32, num_blocks=8, block_size=4)
    cache.add_sequence(0, 32)
    step(cache, [0], [5])
    per_token = 2 * TINY.num_layers * TINY.num_kv_heads * TINY.head_dim * 4
    assert cache.reserved_bytes() == 2 * 4 * per_token and cache.used_bytes() == 5 * per_token
