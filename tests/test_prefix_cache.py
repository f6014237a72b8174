"""The prefix cache: a stateful property test of its bookkeeping and K/V contents, and targeted unit tests.

No model here except in the last section: each test writes K/V itself, and the K/V of a token is a known function
of the tokens up to it (see KVOracle), as in a real model — equal prefixes give equal K/V, so a prefix hit must
hand over exactly what the new sequence would have computed, and any mix-up of blocks shows in the values.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import kvlab
from kvlab.cache import CachingBlockAllocator, PoolExhausted, PrefixCachedPagedCache, PrefixIndex, chain_hash
from kvlab.model.config import LlamaConfig

# one KV head of 4 numbers per token and layer: room for (token, position, layer, tag)
MICRO = LlamaConfig(name="micro", num_layers=2, hidden_size=4, ffn_size=8, num_heads=1, num_kv_heads=1, head_dim=4,
                    vocab_size=100, context_len=512, rope_base=10000.0, rms_eps=1e-5, tied_embeddings=True,
                    bos_token_id=1, eos_token_id=2)


class KVOracle:
    """The K/V a deterministic "model" writes for a token at a position, over all layers:
    K = (token id, position, layer, 1), V = (id of the whole token prefix ending at this token, position, layer, 2).
    Prefix ids are handed out in order of first sight, so equal prefixes get equal ids and any other prefix another."""

    def __init__(self):
        self.prefix_ids: dict[tuple[int, int], int] = {}  # (id of the prefix before, token) → id of the prefix

    def prefix_ids_of(self, tokens) -> list[int]:
        ids, previous = [], 0
        for token in tokens:
            previous = self.prefix_ids.setdefault((previous, token), len(self.prefix_ids) + 1)
            ids.append(previous)
        return ids

    def kv(self, tokens, layer: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V of tokens[start:] of a sequence whose tokens are `tokens`: two [n, 1, 4] float32."""
        positions = range(start, len(tokens))
        prefix = self.prefix_ids_of(tokens)
        k = torch.tensor([[tokens[p], p, layer, 1] for p in positions], dtype=torch.float32).reshape(-1, 1, 4)
        v = torch.tensor([[prefix[p], p, layer, 2] for p in positions], dtype=torch.float32).reshape(-1, 1, 4)
        return k, v


def make_cache(num_blocks: int = 20, block_size: int = 4, **options) -> PrefixCachedPagedCache:
    return PrefixCachedPagedCache(MICRO, "cpu", torch.float32, num_blocks=num_blocks, block_size=block_size, **options)


def begin_and_write(cache, oracle: KVOracle, tokens: dict[int, list[int]], seq_ids, new_ids):
    """begin_step, then write every layer's K/V of the new tokens; `tokens[s]` are the ids sequence s holds."""
    step = cache.begin_step(seq_ids, [len(ids) for ids in new_ids], new_ids)
    for layer in range(MICRO.num_layers):
        k = torch.zeros(step.batch, step.new_len, 1, 4)  # [B, T, kv_heads, head_dim], right-padded
        v = torch.zeros(step.batch, step.new_len, 1, 4)
        for row, (seq_id, ids) in enumerate(zip(seq_ids, new_ids)):
            k[row, :len(ids)], v[row, :len(ids)] = oracle.kv(tokens[seq_id] + list(ids), layer, start=len(tokens[seq_id]))
        cache.write(layer, k, v)
    return step


def run_step(cache, oracle, tokens, seq_ids, new_ids) -> None:
    begin_and_write(cache, oracle, tokens, seq_ids, new_ids)
    cache.end_step()
    for seq_id, ids in zip(seq_ids, new_ids):
        tokens[seq_id] = tokens[seq_id] + list(ids)


def prefill(cache, oracle, tokens, seq_id: int, prompt: list[int]) -> int:
    """Add a sequence (room for 8 more tokens) and compute the part of its prompt the cache does not hold;
    returns the cached count."""
    cached = cache.add_sequence(seq_id, len(prompt) + 8, prompt)
    tokens[seq_id] = list(prompt[:cached])
    run_step(cache, oracle, tokens, [seq_id], [prompt[cached:]])
    return cached


def gathered_kv(cache, seq_id: int, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The K, V the block table of `seq_id` points at, in logical order: two [length, 1, 4]."""
    table = torch.tensor(cache.block_tables[seq_id], dtype=torch.int64)
    length = cache.lengths[seq_id]
    k = cache.k_pools[layer][table].reshape(-1, 1, 4)[:length]
    v = cache.v_pools[layer][table].reshape(-1, 1, 4)[:length]
    return k, v


def assert_holds_its_own_kv(cache, oracle, seq_id: int, tokens: list[int]) -> None:
    assert cache.lengths[seq_id] == len(tokens)
    for layer in range(MICRO.num_layers):
        k, v = gathered_kv(cache, seq_id, layer)
        want_k, want_v = oracle.kv(tokens, layer)
        assert torch.equal(k, want_k), f"seq {seq_id}, layer {layer}: K differs from what its tokens give"
        assert torch.equal(v, want_v), f"seq {seq_id}, layer {layer}: V differs from what its tokens give"


def snapshot(cache: PrefixCachedPagedCache):
    """Everything a failed allocation must leave as it was: free list and LRU order, index, tables, stats, events, pools."""
    a, index = cache.allocator, cache.index
    return (list(a.free_block_ids), list(a.ref_counts), list(a.evictable),
            {b: (e.hash, e.parent, e.token_ids, e.hits) for b, e in index.by_block.items()}, sorted(index.by_hash),
            {p: sorted(kids) for p, kids in index.children.items()}, index.refused_collisions,
            {s: list(t) for s, t in cache.block_tables.items()}, dict(cache.lengths),
            {s: list(t) for s, t in cache.token_ids.items()}, {s: list(h) for s, h in cache.block_hashes.items()},
            repr(cache.stats), list(cache.events), [p.clone() for p in cache.k_pools + cache.v_pools])


def same_snapshot(a, b) -> bool:
    *a_state, a_pools = a
    *b_state, b_pools = b
    return a_state == b_state and all(torch.equal(x, y) for x, y in zip(a_pools, b_pools))


def subtree(children: dict, block: int) -> set[int]:
    below = {block}
    for child in children.get(block, ()):
        below |= subtree(children, child)
    return below


def lru_eviction(lru_order: list[int], children: dict, num_free: int, needed: int) -> set[int]:
    """The blocks that taking `needed` fresh blocks must evict: the least recently used first, each with its cached
    descendants, and only until the free ones and the evicted ones are enough."""
    evicted: set[int] = set()
    for victim in lru_order:
        if num_free + len(evicted) >= needed:
            break
        evicted |= subtree(children, victim)
    return evicted


def longest_cached_chain(index: PrefixIndex, prompt: list[int], block_size: int) -> int:
    """Blocks of `prompt` (at most len − 1 tokens' worth) found along any root-to-leaf path of the index."""
    matchable = (len(prompt) - 1) // block_size
    best = 0
    for chain in index.chains():
        n = 0
        while n < min(len(chain), matchable) and chain[n].token_ids == tuple(prompt[n * block_size:(n + 1) * block_size]):
            n += 1
        best = max(best, n)
    return best


def weak_hash(parent_hash, token_ids) -> int:
    """A 13-valued hash that sees only the parent's hash mod 4: blocks with other tokens, and equal tokens after
    another parent, collide all the time, so every lookup must compare both."""
    return (7 * ((parent_hash or 0) % 4) + sum(token_ids)) % 13


# --- the stateful test --------------------------------------------------------------------------------------------
ALPHABET = [3, 4, 5]
SHARED_PREFIXES = [[], [3, 4, 5, 3, 4, 5, 3, 4, 5, 3], [3, 4, 5, 3, 4, 4, 4, 4, 5], [5, 5, 5, 5, 5, 5, 5, 5], [3, 4, 5, 3]]
MAX_TOKENS = 40  # 10 blocks of 4, in a pool of 20
MAX_RUNNING = 5  # sequences at once: enough to share and run out, few enough that some steps fit


class PrefixCacheMachine(RuleBasedStateMachine):
    """Random add (prompts that share prefixes) / step (prefill, extend, decode, several sequences at once) / failed
    step / finish / fork / a big fresh request, on a 20-block pool of 4-token blocks, checking the bookkeeping and
    every K/V after each rule."""

    hash_fn = staticmethod(chain_hash)

    def __init__(self):
        super().__init__()
        self.cache = make_cache(num_blocks=20, block_size=4, hash_fn=self.hash_fn)
        self.oracle = KVOracle()
        self.tokens: dict[int, list[int]] = {}  # running seq_id → the token ids whose K/V it holds
        self.next_id = 0
        self.next_fresh_token = 10

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def _step_or_refuse(self, seq_ids, new_ids) -> bool:
        """One step with all the checks around it; False if the pool could not take it (and nothing changed)."""
        cache, allocator = self.cache, self.cache.allocator
        before = snapshot(cache)
        free_before, lru_before = allocator.num_free, allocator.lru_order()
        children_before = {p: set(kids) for p, kids in cache.index.children.items()}
        index_before, used_before = set(cache.index.by_block), {b for b, r in enumerate(allocator.ref_counts) if r}
        try:
            step = begin_and_write(cache, self.oracle, self.tokens, seq_ids, new_ids)
        except PoolExhausted:
            assert same_snapshot(snapshot(cache), before), "a refused step changed the cache"
            return False
        # every token is written into a block only its sequence holds and the index does not serve
        for row, seq_id in enumerate(seq_ids):
            for position in step.positions[row, :len(new_ids[row])].tolist():
                block = cache.block_tables[seq_id][position // cache.block_size]
                assert allocator.ref_counts[block] == 1, f"seq {seq_id} writes position {position} into shared block {block}"
                assert block not in cache.index, f"seq {seq_id} writes into cached block {block}"
        fresh = len({b for b, r in enumerate(allocator.ref_counts) if r} - used_before)
        evicted = index_before - set(cache.index.by_block)
        assert evicted == lru_eviction(lru_before, children_before, free_before, fresh)
        cache.end_step()
        for seq_id, ids in zip(seq_ids, new_ids):
            self.tokens[seq_id] = self.tokens[seq_id] + list(ids)
        return True

    @precondition(lambda self: len(self.tokens) < MAX_RUNNING)
    @rule(shared=st.sampled_from(SHARED_PREFIXES), suffix=st.lists(st.sampled_from(ALPHABET), max_size=7))
    def add(self, shared, suffix):
        prompt = shared + suffix or [4]
        cache, index, seq_id = self.cache, self.cache.index, self._new_id()
        expected_blocks = longest_cached_chain(index, prompt, cache.block_size)
        lru_before, refused_before = cache.allocator.lru_order(), index.refused_collisions
        # a hash lookup that stops early finds the next block's hash taken (by other content) at most once
        chain, parent_hash = [], None
        for j in range((len(prompt) - 1) // cache.block_size):
            parent_hash = self.hash_fn(parent_hash, prompt[j * cache.block_size:(j + 1) * cache.block_size])
            chain.append(parent_hash)
        stops_on_taken_hash = expected_blocks < len(chain) and chain[expected_blocks] in index.by_hash

        stats_before = (cache.stats.lookups, cache.stats.prompt_tokens, cache.stats.hit_tokens)
        cached = cache.add_sequence(seq_id, MAX_TOKENS, prompt)
        assert cached == expected_blocks * cache.block_size and cached <= len(prompt) - 1
        assert (cache.stats.lookups, cache.stats.prompt_tokens, cache.stats.hit_tokens) == \
            (stats_before[0] + 1, stats_before[1] + len(prompt), stats_before[2] + cached)
        assert index.refused_collisions - refused_before == int(stops_on_taken_hash)
        reused = set(cache.block_tables[seq_id])
        assert cache.allocator.lru_order() == [b for b in lru_before if b not in reused]  # taken back, order kept
        self.tokens[seq_id] = prompt[:cached]
        assert_holds_its_own_kv(cache, self.oracle, seq_id, self.tokens[seq_id])  # the hit's K/V are the right ones
        if not self._step_or_refuse([seq_id], [prompt[cached:]]):
            self._finish(seq_id)

    @precondition(lambda self: len(self.tokens) < MAX_RUNNING and self.cache.allocator.num_used <= 12)
    @rule(length=st.integers(17, 36))
    def big_fresh_request(self, length):
        """A prompt no one has seen, 5 to 9 blocks of the 20, while at least 8 are free or evictable: evicts cached
        blocks, and runs out of pool now and then."""
        prompt = list(range(self.next_fresh_token, self.next_fresh_token + length))  # ids no other prompt has
        self.next_fresh_token += length
        seq_id = self._new_id()
        assert self.cache.add_sequence(seq_id, MAX_TOKENS, prompt) == 0
        self.tokens[seq_id] = []
        if not self._step_or_refuse([seq_id], [prompt]):
            self._finish(seq_id)

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def step(self, data):
        """Extend or decode one to three running sequences in one batch (a fork and its parent often together)."""
        seq_ids = data.draw(st.lists(st.sampled_from(sorted(self.tokens)), min_size=1, max_size=3, unique=True))
        new_ids = []
        for seq_id in seq_ids:
            room = max(1, MAX_TOKENS - len(self.tokens[seq_id]))
            new_ids.append(data.draw(st.lists(st.sampled_from(ALPHABET), min_size=1, max_size=min(5, room))))
        self._step_or_refuse(seq_ids, new_ids)

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def failed_step(self, data):
        """A step that allocates and writes, then fails before end_step (the model raised): nothing counts as cached."""
        seq_ids = data.draw(st.lists(st.sampled_from(sorted(self.tokens)), min_size=1, max_size=2, unique=True))
        new_ids = [data.draw(st.lists(st.sampled_from(ALPHABET), min_size=1, max_size=6)) for _ in seq_ids]
        lengths = dict(self.cache.lengths)
        try:
            begin_and_write(self.cache, self.oracle, self.tokens, seq_ids, new_ids)
        except PoolExhausted:
            return
        self.cache.abort_step()
        assert self.cache.lengths == lengths and self.cache.current_step is None

    @precondition(lambda self: 0 < len(self.tokens) < MAX_RUNNING)
    @rule(data=st.data())
    def fork(self, data):
        parent = data.draw(st.sampled_from(sorted(self.tokens)))
        child = self._new_id()
        used_before = self.cache.allocator.num_used
        self.cache.fork(parent, child)
        assert self.cache.allocator.num_used == used_before  # a fork shares; it takes no block
        assert self.cache.block_tables[child] == self.cache.block_tables[parent]
        self.tokens[child] = list(self.tokens[parent])

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def finish(self, data):
        self._finish(data.draw(st.sampled_from(sorted(self.tokens))))

    def _finish(self, seq_id: int) -> None:
        cache = self.cache
        table, lru_before = list(cache.block_tables[seq_id]), cache.allocator.lru_order()
        cache.free_sequence(seq_id)
        del self.tokens[seq_id]
        # its cached blocks nobody else holds become the most recently used, its tail before its head
        released = [b for b in reversed(table) if b in cache.index and cache.allocator.ref_counts[b] == 0]
        assert cache.allocator.lru_order() == lru_before + released

    # --- invariants, after every rule ----------------------------------------------------------------------
    @invariant()
    def every_block_is_used_evictable_or_free_exactly_once(self):
        a = self.cache.allocator
        used = {b for b, refs in enumerate(a.ref_counts) if refs > 0}
        free, evictable = list(a.free_block_ids), list(a.evictable)
        assert len(set(free)) == len(free) and len(set(evictable)) == len(evictable)
        assert not used & set(free) and not used & set(evictable) and not set(free) & set(evictable)
        assert len(used) + len(evictable) + len(free) == a.num_blocks
        assert a.num_used == len(used) and a.num_available == len(free) + len(evictable)

    @invariant()
    def reference_counts_equal_block_table_entries(self):
        owners = [0] * self.cache.allocator.num_blocks
        for table in self.cache.block_tables.values():
            assert len(set(table)) == len(table)
            for block in table:
                owners[block] += 1
        assert owners == self.cache.allocator.ref_counts

    @invariant()
    def the_index_holds_exactly_the_used_or_evictable_blocks_it_can_serve(self):
        a, index = self.cache.allocator, self.cache.index
        assert set(a.evictable) <= set(index.by_block)  # every evictable block can be served
        assert not set(index.by_block) & set(a.free_block_ids)  # a free block is never served
        assert {e.hash: b for b, e in index.by_block.items()} == {h: e.block for h, e in index.by_hash.items()}
        for block, entry in index.by_block.items():
            assert entry.block == block and len(entry.token_ids) == self.cache.block_size
            assert entry.parent is None or entry.parent in index.by_block  # every cached block's parent is cached
            assert block in index.children[entry.parent]
        assert set(index.children) == set(index.by_block) | {None}
        assert {b for kids in index.children.values() for b in kids} == set(index.by_block)

    @invariant()
    def every_cached_block_holds_the_kv_of_its_token_chain(self):
        bs = self.cache.block_size
        for chain in self.cache.index.chains():
            tokens = [t for entry in chain for t in entry.token_ids]
            blocks = torch.tensor([entry.block for entry in chain], dtype=torch.int64)
            for layer in range(MICRO.num_layers):
                want_k, want_v = self.oracle.kv(tokens, layer)
                assert torch.equal(self.cache.k_pools[layer][blocks].reshape(-1, 1, 4), want_k)
                assert torch.equal(self.cache.v_pools[layer][blocks].reshape(-1, 1, 4), want_v)
            parent_hash = None
            for j, entry in enumerate(chain):
                parent_hash = self.hash_fn(parent_hash, tokens[j * bs:(j + 1) * bs])
                assert entry.hash == parent_hash  # the hash chain of its tokens

    @invariant()
    def every_running_sequence_reads_exactly_the_kv_of_its_own_tokens(self):
        assert set(self.cache.lengths) == set(self.tokens)
        for seq_id, tokens in self.tokens.items():
            assert self.cache.token_ids[seq_id] == tokens
            assert_holds_its_own_kv(self.cache, self.oracle, seq_id, tokens)

    @invariant()
    def block_tables_have_ceil_length_over_block_size_entries(self):
        bs = self.cache.block_size
        for seq_id, table in self.cache.block_tables.items():
            assert len(table) == math.ceil(self.cache.lengths[seq_id] / bs)
            assert len(self.cache.block_hashes[seq_id]) == self.cache.lengths[seq_id] // bs

    @invariant()
    def stats_are_consistent(self):
        stats = self.cache.stats
        assert 0 <= stats.hit_tokens <= stats.prompt_tokens and 0.0 <= stats.hit_rate <= 1.0
        assert self.cache.saved_bytes() >= self.cache.shared_blocks() * self.cache.block_bytes()


class WeakHashPrefixCacheMachine(PrefixCacheMachine):
    """The same machine with a hash that collides constantly: a lookup must never serve a colliding block."""

    hash_fn = staticmethod(weak_hash)


TestPrefixCacheMachine = PrefixCacheMachine.TestCase
TestPrefixCacheMachine.settings = settings(max_examples=80, stateful_step_count=35, deadline=None)
TestWeakHashPrefixCacheMachine = WeakHashPrefixCacheMachine.TestCase
TestWeakHashPrefixCacheMachine.settings = settings(max_examples=60, stateful_step_count=35, deadline=None)


# --- targeted unit tests ------------------------------------------------------------------------------------------
def fresh_state(num_blocks: int = 16, block_size: int = 4, **options):
    return make_cache(num_blocks, block_size, **options), KVOracle(), {}


def test_a_shared_prompt_shorter_than_one_block_never_hits():
    cache, oracle, tokens = fresh_state(block_size=16)
    prompt = list(range(20, 35))  # 15 tokens: no full block
    assert prefill(cache, oracle, tokens, 0, prompt) == 0
    cache.free_sequence(0)
    assert prefill(cache, oracle, tokens, 1, prompt) == 0
    assert len(cache.index) == 0 and cache.events[-1].kind == "miss"
    assert "no full block before its last token (15 tokens, block size 16)" in cache.events[-1].text


def test_the_last_prompt_token_is_always_computed_so_16_shared_tokens_hit_only_from_17_tokens_on():
    cache, oracle, tokens = fresh_state(block_size=16)
    shared = list(range(20, 36))  # exactly one block of 16
    assert prefill(cache, oracle, tokens, 0, shared) == 0
    assert len(cache.index) == 1  # the full block is cached ...
    assert prefill(cache, oracle, tokens, 1, shared) == 0  # ... but a 16-token prompt must compute its 16th token
    assert prefill(cache, oracle, tokens, 2, shared + [7]) == 16  # 17 tokens: the first 16 are served
    assert prefill(cache, oracle, tokens, 3, shared + list(range(40, 56)) + [7]) == 16  # 33: only the shared block
    for seq_id in (1, 2, 3):
        assert_holds_its_own_kv(cache, oracle, seq_id, tokens[seq_id])


def test_a_hit_hands_over_the_blocks_and_kv_the_first_sequence_computed():
    cache, oracle, tokens = fresh_state()
    prefill(cache, oracle, tokens, 0, [3, 4, 5, 6, 7, 8, 9, 10, 11])
    first_two = cache.block_tables[0][:2]
    cache.free_sequence(0)
    assert prefill(cache, oracle, tokens, 1, [3, 4, 5, 6, 7, 8, 9, 10, 50, 51]) == 8
    assert cache.block_tables[1][:2] == first_two and cache.num_cached(1) == 10
    assert_holds_its_own_kv(cache, oracle, 1, tokens[1])
    assert cache.index.by_block[first_two[0]].hits == 1 and cache.events[1].kind == "cached"
    hit = [e for e in cache.events if e.kind == "hit"]
    assert hit[0].blocks == tuple(first_two) and "8 of 10 prompt tokens cached (2 blocks reused)" in hit[0].text


def test_a_finished_sequence_releases_its_tail_before_its_head():
    cache, oracle, tokens = fresh_state()
    prefill(cache, oracle, tokens, 0, list(range(20, 33)))  # 13 tokens: 3 full blocks and 1 partial
    full, partial = cache.block_tables[0][:3], cache.block_tables[0][3]
    cache.free_sequence(0)
    assert cache.allocator.lru_order() == full[::-1]  # the tail is evicted first, the shared head last
    assert partial in cache.allocator.free_block_ids and partial not in cache.index


def test_the_least_recently_released_blocks_are_evicted_first():
    cache, oracle, tokens = fresh_state(num_blocks=8)
    prefill(cache, oracle, tokens, 0, list(range(20, 29)))  # 2 full blocks + 1 partial
    prefill(cache, oracle, tokens, 1, list(range(40, 49)))
    a, b = cache.block_tables[0][:2], cache.block_tables[1][:2]
    cache.free_sequence(0)
    cache.free_sequence(1)
    assert cache.allocator.lru_order() == [a[1], a[0], b[1], b[0]] and cache.allocator.num_free == 4
    prefill(cache, oracle, tokens, 2, list(range(60, 80)))  # 5 blocks: the 4 free ones, then evict A's tail
    assert cache.allocator.lru_order() == [a[0], b[1], b[0]] and cache.block_tables[2][-1] == a[1]
    assert cache.events[-2].kind == "evict" and cache.events[-2].blocks == (a[1],) and cache.stats.evicted_blocks == 1
    assert longest_cached_chain(cache.index, list(range(20, 29)), 4) == 1  # A's head is still there
    prefill(cache, oracle, tokens, 3, list(range(80, 88)))  # 2 more: A's head, then B's tail
    assert cache.allocator.lru_order() == [b[0]] and cache.stats.evicted_blocks == 3
    assert longest_cached_chain(cache.index, list(range(20, 29)), 4) == 0
    assert longest_cached_chain(cache.index, list(range(40, 49)), 4) == 1


def test_a_hit_refreshes_the_recency_of_a_released_block():
    cache, oracle, tokens = fresh_state(num_blocks=8)
    prefill(cache, oracle, tokens, 0, list(range(20, 29)))
    prefill(cache, oracle, tokens, 1, list(range(40, 49)))
    a, b = cache.block_tables[0][:2], cache.block_tables[1][:2]
    cache.free_sequence(0)
    cache.free_sequence(1)
    assert prefill(cache, oracle, tokens, 2, list(range(20, 28)) + [99]) == 8  # takes A's blocks back
    assert cache.allocator.lru_order() == [b[1], b[0]]
    cache.free_sequence(2)
    assert cache.allocator.lru_order() == [b[1], b[0], a[1], a[0]]  # A is now the most recently used
    prefill(cache, oracle, tokens, 3, list(range(60, 80)))  # needs one eviction: B's tail goes, not A's
    assert cache.events[-2].kind == "evict" and cache.events[-2].blocks == (b[1],)
    assert longest_cached_chain(cache.index, list(range(20, 29)), 4) == 2


def test_evicting_a_block_forgets_its_cached_descendants():
    index, forgotten = PrefixIndex(), []
    allocator = CachingBlockAllocator(4, 4, index, on_evict=forgotten.append)
    root, middle, leaf = allocator.allocate(3)
    parent_hash = None
    for block, parent in ((root, None), (middle, root), (leaf, middle)):
        parent_hash = chain_hash(parent_hash, [block] * 4)
        assert index.register(block, parent_hash, parent, [block] * 4)
    for block in (root, middle, leaf):  # the root least recently released
        allocator.release(block)
    assert allocator.lru_order() == [root, middle, leaf] and allocator.num_free == 1
    assert len(allocator.allocate(2)) == 2  # one free block + evicting the root, which takes its subtree along
    assert forgotten == [[leaf, middle, root]]  # deepest first, the victim last
    assert len(index) == 0 and index.children == {None: set()} and allocator.num_evictable == 0
    assert allocator.num_free == 2 and allocator.num_used == 2


def test_a_full_pool_refuses_a_step_and_changes_nothing_not_even_the_lru_order():
    cache, oracle, tokens = fresh_state(num_blocks=6)
    prefill(cache, oracle, tokens, 0, list(range(20, 29)))  # 3 blocks held
    prefill(cache, oracle, tokens, 1, list(range(40, 48)))  # 2 more
    cache.free_sequence(1)  # its 2 full blocks become evictable
    cache.add_sequence(2, 16, list(range(60, 72)))
    tokens[2] = []
    before = snapshot(cache)
    with pytest.raises(PoolExhausted, match="need 4 blocks, 3 of 6 are free"):  # 1 free + 2 evictable
        cache.begin_step([0, 2], [4, 12], [[7, 7, 7, 7], list(range(60, 72))])  # seq 0 needs 1 more, seq 2 needs 3
    assert same_snapshot(snapshot(cache), before) and cache.current_step is None
    run_step(cache, oracle, tokens, [2], [list(range(60, 72))])  # 3 blocks fit: evicts both of B's
    assert cache.stats.evicted_blocks == 2 and cache.allocator.num_evictable == 0


def test_fork_shares_every_block_and_the_first_write_copies_only_the_partial_one():
    cache, oracle, tokens = fresh_state()
    prefill(cache, oracle, tokens, 0, [3, 4, 5, 6, 7, 8])  # 1 full block + 2 tokens in the second
    full, partial = cache.block_tables[0]
    used = cache.allocator.num_used
    cache.fork(0, 1)
    tokens[1] = list(tokens[0])
    assert cache.block_tables[1] == [full, partial] and cache.allocator.num_used == used
    assert cache.allocator.ref_counts[full] == cache.allocator.ref_counts[partial] == 2
    assert cache.events[-1].kind == "fork" and cache.events[-1].blocks == (full, partial)
    run_step(cache, oracle, tokens, [1], [[9]])  # the child writes into the shared partial block: copy first
    copy = cache.block_tables[1][1]
    assert copy != partial and cache.block_tables[0] == [full, partial] and cache.stats.cow_copies == 1
    assert cache.events[-1].kind == "cow" and cache.events[-1].blocks == (partial, copy)
    run_step(cache, oracle, tokens, [0], [[10]])  # the parent holds its block alone now: no copy
    assert cache.stats.cow_copies == 1 and cache.block_tables[0] == [full, partial]
    for seq_id in (0, 1):
        assert_holds_its_own_kv(cache, oracle, seq_id, tokens[seq_id])


def test_a_parent_and_child_writing_in_the_same_step_need_one_copy():
    cache, oracle, tokens = fresh_state()
    prefill(cache, oracle, tokens, 0, [3, 4, 5, 6, 7, 8])
    cache.fork(0, 1)
    cache.fork(0, 2)
    tokens[1] = tokens[2] = list(tokens[0])
    partial = cache.block_tables[0][1]
    run_step(cache, oracle, tokens, [0, 1, 2], [[9], [10, 11], [12]])  # three holders: two copies, the last keeps it
    assert cache.stats.cow_copies == 2 and cache.block_tables[2][1] == partial
    assert len({cache.block_tables[s][1] for s in (0, 1, 2)}) == 3
    for seq_id in (0, 1, 2):
        assert_holds_its_own_kv(cache, oracle, seq_id, tokens[seq_id])


def test_a_fork_at_a_block_boundary_never_copies():
    cache, oracle, tokens = fresh_state()
    prefill(cache, oracle, tokens, 0, [3, 4, 5, 6, 7, 8, 9, 10])  # 2 full blocks
    cache.fork(0, 1)
    tokens[1] = list(tokens[0])
    run_step(cache, oracle, tokens, [0, 1], [[11], [12]])
    assert cache.stats.cow_copies == 0 and cache.block_tables[0][:2] == cache.block_tables[1][:2]
    assert cache.block_tables[0][2] != cache.block_tables[1][2]


def test_a_failed_step_gives_back_its_blocks_so_a_later_fork_and_write_cannot_corrupt_a_sibling():
    cache, oracle, tokens = fresh_state()
    prefill(cache, oracle, tokens, 0, [3, 4, 5, 3, 4, 5])  # a full block and a partial one
    cache.fork(0, 1)
    tokens[1] = list(tokens[0])
    begin_and_write(cache, oracle, tokens, [0], [[7, 7, 7]])  # copies the partial block, takes a fresh one ...
    cache.abort_step()  # ... and fails
    assert len(cache.block_tables[0]) == 2 and cache.num_cached(0) == 6
    cache.fork(0, 2)
    tokens[2] = list(tokens[0])
    run_step(cache, oracle, tokens, [0], [[9]])
    run_step(cache, oracle, tokens, [2], [[8]])
    for seq_id in (0, 1, 2):
        assert_holds_its_own_kv(cache, oracle, seq_id, tokens[seq_id])
    assert cache.allocator.num_used == sum(1 for r in cache.allocator.ref_counts if r)


def test_the_same_prefix_twice_in_one_batch_merges_into_one_cached_chain():
    cache, oracle, tokens = fresh_state()
    a, b = [1] * 8 + [5] * 4 + [0], [1] * 8 + [6] * 4 + [0]
    for seq_id, prompt in ((0, a), (1, b)):
        assert cache.add_sequence(seq_id, 20, prompt) == 0
        tokens[seq_id] = []
    run_step(cache, oracle, tokens, [0, 1], [a, b])  # both compute the shared 8 tokens in the same step
    assert cache.block_tables[1][:2] == cache.block_tables[0][:2]  # seq 1 now uses seq 0's cached blocks
    assert len(cache.index) == 4 and cache.allocator.num_used == 6  # 2 shared + 2 own full + 2 partial
    assert [e.kind for e in cache.events].count("merge") == 2
    for seq_id in (0, 1):
        assert_holds_its_own_kv(cache, oracle, seq_id, tokens[seq_id])
    cache.free_sequence(1)
    assert prefill(cache, oracle, tokens, 2, b[:-1] + [9]) == 12  # b's own block was cached after the merge


def test_looking_up_the_cached_prefix_blocks_takes_and_counts_nothing():
    cache, oracle, tokens = fresh_state(hash_fn=everything_collides)
    prefill(cache, oracle, tokens, 0, [3, 4, 5, 6, 7])
    cache.free_sequence(0)
    before = snapshot(cache)
    assert cache.cached_prefix_blocks([3, 4, 5, 6, 1]) == list(cache.allocator.evictable)
    assert cache.cached_prefix_blocks([9, 9, 9, 9, 1]) == []  # a refused collision, not counted
    assert same_snapshot(before, snapshot(cache)) and cache.index.refused_collisions == 0


def test_a_sequence_twice_in_one_step_is_refused():
    cache, _, _ = fresh_state()
    cache.add_sequence(0, 8, [1, 2])
    with pytest.raises(ValueError, match=r"sequences \[0\] appear more than once"):
        cache.begin_step([0, 0], [1, 1], [[1], [2]])


def test_a_failed_paged_step_gives_back_its_blocks_so_a_later_fork_copies_the_right_block():
    from kvlab.cache import PagedCache

    cache = PagedCache(MICRO, "cpu", torch.float32, num_blocks=8, block_size=4)
    oracle, tokens = KVOracle(), {0: []}
    cache.add_sequence(0, 16)
    run_step(cache, oracle, tokens, [0], [[3, 4, 5, 3, 4, 5]])
    begin_and_write(cache, oracle, tokens, [0], [[7, 7, 7]])  # takes block 2 ...
    cache.abort_step()  # ... and fails
    assert cache.block_tables[0] == [0, 1] and cache.allocator.num_used == 2
    cache.fork(0, 1)
    tokens[1] = list(tokens[0])
    run_step(cache, oracle, tokens, [0], [[9]])
    run_step(cache, oracle, tokens, [1], [[8]])
    for seq_id in (0, 1):
        assert_holds_its_own_kv(cache, oracle, seq_id, tokens[seq_id])


def test_hit_rate_is_prompt_tokens_served_over_prompt_tokens_looked_up():
    cache, oracle, tokens = fresh_state()
    assert cache.stats.hit_rate == 0.0  # nothing looked up yet: no division by zero
    prefill(cache, oracle, tokens, 0, list(range(20, 29)))  # 9 tokens, 0 cached
    prefill(cache, oracle, tokens, 1, list(range(20, 29)))  # 9 tokens, 8 cached
    prefill(cache, oracle, tokens, 2, [50, 51, 52, 53, 54])  # 5 tokens, 0 cached
    cache.add_sequence(3, 8)  # no prompt ids: not a lookup
    stats = cache.stats
    assert (stats.lookups, stats.prompt_tokens, stats.hit_tokens) == (3, 23, 8)
    assert stats.hit_rate == pytest.approx(8 / 23)


def test_shared_blocks_and_saved_bytes_count_every_extra_owner():
    cache, oracle, tokens = fresh_state()
    prefill(cache, oracle, tokens, 0, list(range(20, 29)))
    assert cache.shared_blocks() == 0 and cache.saved_bytes() == 0
    prefill(cache, oracle, tokens, 1, list(range(20, 29)))  # shares A's 2 full blocks
    assert cache.shared_blocks() == 2 and cache.saved_bytes() == 2 * cache.block_bytes()
    cache.fork(0, 2)  # 3 owners of the 2 full blocks, 2 of A's partial one
    assert cache.shared_blocks() == 3 and cache.saved_bytes() == (2 + 2 + 1) * cache.block_bytes()
    per_token = 2 * MICRO.num_layers * 1 * 4 * 4
    assert cache.used_bytes() == (8 + 1 + 1) * per_token  # 8 shared tokens once, each partial block's 1 token


def test_a_step_without_new_token_ids_is_refused_with_a_clear_error_and_changes_nothing():
    cache, oracle, tokens = fresh_state()
    prefill(cache, oracle, tokens, 0, [3, 4, 5])
    before = snapshot(cache)
    with pytest.raises(ValueError, match=r"pass begin_step\(\.\.\., new_token_ids=\.\.\.\)"):
        cache.begin_step([0], [2])
    assert same_snapshot(snapshot(cache), before) and cache.current_step is None


def test_bad_sequence_ids_raise_errors_naming_them():
    cache, oracle, tokens = fresh_state()
    prefill(cache, oracle, tokens, 7, [3, 4, 5])
    with pytest.raises(ValueError, match="sequence 7 is already in the cache"):
        cache.add_sequence(7, 8, [3])
    with pytest.raises(KeyError, match="sequence 9 is not in the cache"):
        cache.begin_step([9], [1], [[3]])
    with pytest.raises(KeyError, match="sequence 9 is not in the cache"):
        cache.fork(9, 10)
    with pytest.raises(ValueError, match="sequence 7 is already in the cache"):
        cache.fork(7, 7)
    with pytest.raises(KeyError, match="sequence 9 is not in the cache"):
        cache.free_sequence(9)
    assert list(cache.lengths) == [7] and cache.token_ids[7] == [3, 4, 5]


# --- hash collisions are refused, never served ----------------------------------------------------------------------
def everything_collides(parent_hash, token_ids) -> int:
    return 0


def test_a_hash_match_with_other_tokens_is_refused_and_the_identical_prompt_still_hits():
    cache, oracle, tokens = fresh_state(hash_fn=everything_collides)
    prefill(cache, oracle, tokens, 0, [1, 2, 3, 4, 5, 6, 7, 8, 9])
    assert len(cache.index) == 1  # the second block's hash (0) was taken by the first: not registered
    assert prefill(cache, oracle, tokens, 1, [11, 12, 13, 14, 15, 16, 17, 18, 19]) == 0
    assert cache.index.refused_collisions == 1
    assert prefill(cache, oracle, tokens, 2, [1, 2, 3, 4, 5, 6, 7, 8, 9]) == 4  # block 0 served; block 1 refused
    assert cache.index.refused_collisions == 2
    for seq_id in (1, 2):
        assert_holds_its_own_kv(cache, oracle, seq_id, tokens[seq_id])


def test_a_hash_match_after_another_parent_is_refused():
    # blocks 0 and 1 hold the same tokens; with every hash equal, block 1's lookup finds block 0: same tokens,
    # but block 0 follows nothing and block 1 follows block 0, so its K/V (positions 0-3) are not block 1's
    cache, oracle, tokens = fresh_state(hash_fn=everything_collides)
    prompt = [1, 2, 3, 4, 1, 2, 3, 4, 9]
    prefill(cache, oracle, tokens, 0, prompt)
    assert prefill(cache, oracle, tokens, 1, prompt) == 4 and cache.index.refused_collisions == 1
    assert_holds_its_own_kv(cache, oracle, 1, tokens[1])
    index = PrefixIndex(everything_collides)
    index.register(5, 0, None, (1, 2, 3, 4))
    assert index.lookup(0, 5, (1, 2, 3, 4)) == (0, None) and index.refused_collisions == 1
    assert index.lookup(None, None, (1, 2, 3, 4))[1].block == 5


def test_chain_hash_names_a_block_by_its_tokens_and_everything_before_it():
    root = chain_hash(None, [1, 2, 3, 4])
    assert root == chain_hash(None, (1, 2, 3, 4)) and 0 <= root < 2 ** 64  # deterministic, 64-bit
    assert chain_hash(root, [5, 6]) == chain_hash(chain_hash(None, [1, 2, 3, 4]), [5, 6])
    assert len({root, chain_hash(None, [1, 2, 3, 5]), chain_hash(root, [1, 2, 3, 4]), chain_hash(0, [1, 2, 3, 4])}) == 4


# --- the real model: a warm prefix cache changes the speed, never the tokens -----------------------------------------
SYSTEM = ("You are a patient teacher of computer science. You explain ideas with short, concrete examples, you define "
          "every term the first time you use it, and you answer in at most three sentences. When a question is "
          "ambiguous, you say which reading you answer. You never invent facts; if you do not know, you say so.")
QUESTIONS = ["What is a cache?", "Why is memory bandwidth a limit for inference?", "What does a hash function do?"]
NEW = 8


@pytest.fixture(scope="module")
def chat_prompts(tokenizer) -> list[list[int]]:
    return [tokenizer.encode(tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM},
                                                            {"role": "user", "content": q}])) for q in QUESTIONS]


@pytest.fixture(scope="module")
def cold(model, tokenizer, chat_prompts):
    return kvlab.generate(model, tokenizer, chat_prompts, max_new_tokens=NEW, cache="contiguous")


def test_the_chat_prompts_share_at_least_four_blocks_of_system_prompt_and_differ_in_length(chat_prompts):
    shared = 0
    while all(p[shared] == chat_prompts[0][shared] for p in chat_prompts):
        shared += 1
    assert shared >= 64 and len({len(p) for p in chat_prompts}) == 3


def test_a_warm_prefix_cache_gives_the_tokens_of_a_cold_run(model, tokenizer, chat_prompts, cold):
    cache = PrefixCachedPagedCache(model.config, model.device, model.dtype, num_blocks=64, block_size=16)
    first = kvlab.generate(model, tokenizer, chat_prompts[:1], max_new_tokens=NEW, cache=cache)
    assert first.token_ids == cold.token_ids[:1] and first.stats.cached_prompt_tokens == 0
    others = kvlab.generate(model, tokenizer, chat_prompts[1:], max_new_tokens=NEW, cache=cache)
    assert others.token_ids == cold.token_ids[1:]
    assert others.stats.cached_prompt_tokens == 2 * 64  # the system prompt's 4 full blocks, for each of the two
    again = kvlab.generate(model, tokenizer, chat_prompts[:1], max_new_tokens=NEW, cache=cache)
    assert again.token_ids == cold.token_ids[:1]
    assert again.stats.cached_prompt_tokens == (len(chat_prompts[0]) - 1) // 16 * 16  # all but the last token's block
    assert not cache.lengths and cache.allocator.num_used == 0  # every call freed its sequences


def test_the_prefix_layout_by_name_equals_contiguous_on_a_ragged_batch(model, tokenizer, chat_prompts, cold):
    by_name = kvlab.generate(model, tokenizer, chat_prompts, max_new_tokens=NEW, cache="prefix")
    assert by_name.token_ids == cold.token_ids and by_name.stats.cache == "prefix"
    assert by_name.stats.cached_prompt_tokens == 0  # a cache made for one call: the batch's prompts are added together
