"""The "prefix" layout: a paged cache whose full blocks are shared by content (automatic prefix caching).

A new sequence's prompt is cut into blocks and looked up along the hash chain of kvlab.cache.prefix_index;
the longest run of cached blocks joins its block table by reference, its tokens count as cached, and the
engine prefills only the rest. Every block that fills up is registered in the index; when its last owner
finishes it stays cached (evictable) until the space is needed, least recently used first.

Sharing never lets one sequence write into another's K/V:
* full blocks are never written again, so sharing them is safe;
* at most the last block of a prompt minus one token is matched — the last prompt token is always computed,
  since its logits give the first new token;
* `fork` (parallel sampling, beam-like search) shares every block, the partly filled last one too, and a
  sequence about to write into a block someone else holds gets its own copy first (copy-on-write).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .base import Step
from .block_allocator import blocks_for
from .caching_allocator import CachingBlockAllocator
from .paged import PagedCache
from .prefix_index import HashFn, PrefixIndex, chain_hash
from .prefix_tier import PrefixTier, TierBlock
from .tier import TierError

EVENT_LOG_LENGTH = 200


@dataclass
class PrefixStats:
    lookups: int = 0  # sequences added with their prompt ids
    prompt_tokens: int = 0  # over those sequences
    hit_tokens: int = 0  # prompt tokens found cached (not prefilled), in the pool or in the tier below it
    tier_hit_tokens: int = 0  # of those, the ones loaded back from the tier
    cow_copies: int = 0
    evicted_blocks: int = 0

    @property
    def hit_rate(self) -> float:
        """Share of prompt tokens served from the cache."""
        return self.hit_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


@dataclass(frozen=True)
class PrefixEvent:
    kind: str  # "hit", "miss", "cached", "merge", "fork", "cow", "evict", "offload", "tier-fault"
    seq_id: int | None
    blocks: tuple[int, ...]
    text: str


class PrefixCachedPagedCache(PagedCache):
    name = "prefix"

    def __init__(self, config, device, dtype, num_blocks: int, block_size: int = 16, backend: str | None = None,
                 hash_fn: HashFn = chain_hash, tier=None):
        super().__init__(config, device, dtype, num_blocks=num_blocks, block_size=block_size, backend=backend)
        if tier is not None and tier.block_bytes != self.block_bytes():
            raise ValueError(f"the tier stores blocks of {tier.block_bytes} bytes, this pool's are {self.block_bytes()}")
        self.index = PrefixIndex(hash_fn)
        self.offload = PrefixTier(tier) if tier is not None else None  # evicted blocks go there, hits come back
        self.allocator = CachingBlockAllocator(num_blocks, block_size, self.index, on_evict=self._record_eviction,
                                               before_evict=self._offload if tier is not None else None)
        self.hit_sources: dict[int, tuple[int, int]] = {}  # seq_id → (tokens from the pool, tokens from the tier)
        self.token_ids: dict[int, list[int]] = {}  # seq_id -> ids of its cached tokens
        self.block_hashes: dict[int, list[int]] = {}  # seq_id -> chain hash of each of its full blocks
        self.stats = PrefixStats()
        self.events: deque[PrefixEvent] = deque(maxlen=EVENT_LOG_LENGTH)

    # --- sequences -----------------------------------------------------------------------------------
    def add_sequence(self, seq_id: int, max_tokens: int, prompt_ids: list[int] | None = None) -> int:
        """Track a new sequence and reuse the longest cached prefix of `prompt_ids` (whole blocks, at most
        len − 1 tokens); returns the number of tokens found cached."""
        super().add_sequence(seq_id, max_tokens)
        self.token_ids[seq_id], self.block_hashes[seq_id] = [], []
        if prompt_ids is None:
            return 0
        matched = self._longest_cached_prefix(prompt_ids)
        for entry in matched:
            self.allocator.reuse(entry.block)
            entry.hits += 1
        self.block_tables[seq_id] = [entry.block for entry in matched]
        self.block_hashes[seq_id] = [entry.hash for entry in matched]
        loaded = self._load_from_tier(seq_id, prompt_ids)
        bs, count = self.block_size, (len(matched) + loaded) * self.block_size
        self.token_ids[seq_id] = list(prompt_ids[:count])
        self.lengths[seq_id] = count
        self.hit_sources[seq_id] = (len(matched) * bs, loaded * bs)
        self.stats.lookups += 1
        self.stats.prompt_tokens += len(prompt_ids)
        self.stats.hit_tokens += count
        self.stats.tier_hit_tokens += loaded * bs
        matchable = (len(prompt_ids) - 1) // bs
        if matched or loaded:
            from_tier = f", {loaded} loaded back from the tier" if loaded else ""
            self._log("hit", seq_id, self.block_tables[seq_id],
                      f"seq {seq_id}: {count} of {len(prompt_ids)} prompt tokens cached ({len(matched)} blocks reused"
                      f"{from_tier})")
        else:
            why = (f"the prompt has no full block before its last token ({len(prompt_ids)} tokens, block size {bs})"
                   if matchable == 0 else "its first block is not cached")
            self._log("miss", seq_id, (), f"seq {seq_id}: no cached prefix — {why}")
        return count

    def cached_prefix_blocks(self, prompt_ids: list[int]) -> list[int]:
        """The blocks add_sequence would reuse for `prompt_ids`, without taking them or counting anything."""
        return [entry.block for entry in self._longest_cached_prefix(prompt_ids, count_refusals=False)]

    def blocks_to_grow(self, seq_id: int, num_new: int) -> int:
        """Fresh blocks, plus a copy-on-write copy when the next token lands in a partly filled shared block."""
        table, length = self.block_tables[seq_id], self.lengths[seq_id]
        shared_tail = length % self.block_size != 0 and self.allocator.ref_counts[table[-1]] > 1
        return super().blocks_to_grow(seq_id, num_new) + int(shared_tail)

    def blocks_to_add(self, prompt_ids: list[int], num_new: int) -> tuple[int, int]:
        """A hit takes its blocks back out of the evictable ones (counted in blocks_free) unless someone holds them;
        blocks loaded back from the tier take fresh blocks."""
        matched = self._longest_cached_prefix(prompt_ids, count_refusals=False)
        reused = [entry.block for entry in matched]
        taken_back = sum(1 for block in reused if self.allocator.ref_counts[block] == 0)
        cached = (len(reused) + len(self._tier_continuation(prompt_ids, matched))) * self.block_size
        return cached, blocks_for(cached + num_new, self.block_size) - len(reused) + taken_back

    def _longest_cached_prefix(self, prompt_ids: list[int], count_refusals: bool = True):
        bs, matched = self.block_size, []
        parent_hash, parent_block = None, None
        for j in range((len(prompt_ids) - 1) // bs):  # keep ≥ 1 token to compute: its logits are the output
            block_hash, entry = self.index.lookup(parent_hash, parent_block, prompt_ids[j * bs:(j + 1) * bs],
                                                  count_refusals)
            if entry is None:
                break
            matched.append(entry)
            parent_hash, parent_block = block_hash, entry.block
        return matched

    # --- the tier below the pool (kvlab.cache.prefix_tier) ---------------------------------------------------
    def _tier_continuation(self, prompt_ids: list[int], matched) -> list[TierBlock]:
        """The blocks after the pool's `matched` ones that the tier holds, in chain order."""
        if self.offload is None:
            return []
        bs, found = self.block_size, []
        parent_hash = matched[-1].hash if matched else None
        for j in range(len(matched), (len(prompt_ids) - 1) // bs):
            ids = prompt_ids[j * bs:(j + 1) * bs]
            block = self.offload.lookup(self.index.hash_fn(parent_hash, ids), parent_hash, ids)
            if block is None:
                break
            found.append(block)
            parent_hash = block.hash
        return found

    def _load_from_tier(self, seq_id: int, prompt_ids: list[int]) -> int:
        """Load the tier's continuation of the sequence's pool hit into fresh blocks, cached again; returns how many
        blocks (0 after a tier fault: those tokens are computed instead)."""
        table, hashes = self.block_tables[seq_id], self.block_hashes[seq_id]
        wanted = self._tier_continuation(prompt_ids, [self.index.by_block[b] for b in table])
        if not wanted:
            return 0
        self.offload.pinned = {b.hash for b in wanted}  # the evictions this allocation makes must not drop them
        try:
            fresh = self.allocator.allocate(len(wanted))
        finally:
            self.offload.pinned = set()
        try:
            data = self.offload.load(wanted)
        except TierError:
            for block in fresh:
                self.allocator.release(block)
            self._log("tier-fault", seq_id, (), f"seq {seq_id}: {self.offload.last_fault}; computing those tokens")
            return 0
        self.import_blocks(fresh, data)
        for block, entry in zip(fresh, wanted):
            parent = table[-1] if table else None
            self.index.register(block, entry.hash, parent, entry.token_ids)
            table.append(block)
            hashes.append(entry.hash)
        return len(wanted)

    def _offload(self, blocks: list[int]) -> None:
        """Blocks about to be evicted (deepest first): their K/V to the tier, named by their chain hashes."""
        entries = [self.index.by_block[b] for b in blocks]
        named = [(e.hash, self.index.by_block[e.parent].hash if e.parent is not None else None, e.token_ids)
                 for e in entries]
        self.offload.store(named, self.export_blocks(blocks))
        self._log("offload", None, tuple(blocks), f"blocks {_ids(blocks)} evicted to the tier "
                                                  f"({len(self.offload)} blocks there)")

    def _release(self, seq_id: int) -> None:
        # last block first: a sequence's tail is evicted before its head, which other prompts are likelier to share
        for block in reversed(self.block_tables.pop(seq_id)):
            self.allocator.release(block)
        del self.token_ids[seq_id], self.block_hashes[seq_id]
        self.hit_sources.pop(seq_id, None)

    def fork(self, parent: int, child: int) -> None:
        """`child` starts as `parent`, sharing every block — the partly filled last one too, until one of them
        writes into it (copy-on-write). Takes no block, so it cannot run out of memory."""
        if child in self.lengths:
            raise ValueError(f"sequence {child} is already in the cache")
        if parent not in self.lengths:
            raise KeyError(f"sequence {parent} is not in the cache")
        table = self.block_tables[parent]
        for block in table:
            self.allocator.share(block)
        self.block_tables[child] = list(table)
        self.lengths[child] = self.lengths[parent]
        self.token_ids[child] = list(self.token_ids[parent])
        self.block_hashes[child] = list(self.block_hashes[parent])
        self._log("fork", child, tuple(table), f"seq {child} forked from seq {parent}: shares all {len(table)} blocks")

    def swap_token_ids(self, seq_id: int) -> tuple[int, ...]:
        return tuple(self.token_ids[seq_id])

    def restore_swapped(self, seq_id: int, swapped) -> None:
        """Blocks back from the tier are fresh copies: hash them again; one whose content is still cached in the
        pool merges into that block (the copy is freed), the others are cached anew."""
        self.token_ids[seq_id], self.block_hashes[seq_id] = list(swapped.token_ids), []
        self._register_full_blocks(seq_id)

    # --- one step ------------------------------------------------------------------------------------
    def _grow_tables(self, step: Step) -> None:
        if step.new_token_ids is None:
            raise ValueError("the prefix cache hashes blocks by their tokens: pass begin_step(..., new_token_ids=...)")
        copy_on_write = self._sequences_writing_into_shared_blocks(step)
        missing = self._missing_blocks(step)
        fresh = iter(self.allocator.allocate(len(copy_on_write) + sum(missing)))  # all or nothing (PoolExhausted)
        for seq_id in copy_on_write:
            table, copy = self.block_tables[seq_id], next(fresh)
            shared = table[-1]
            self._copy_block(shared, copy)
            table[-1] = copy
            self.allocator.release(shared)
            self.stats.cow_copies += 1
            self._log("cow", seq_id, (shared, copy),
                      f"seq {seq_id} writes into shared block {shared}: copied to block {copy} first")
        for seq_id, count in zip(step.seq_ids, missing):
            self.block_tables[seq_id] += [next(fresh) for _ in range(count)]

    def _sequences_writing_into_shared_blocks(self, step: Step) -> list[int]:
        """Sequences whose next token lands in a partly filled block that others hold too. The last writer
        of such a block in this step keeps it (nobody else will read its old contents)."""
        holders_left: dict[int, int] = {}
        writers = []
        for seq_id in step.seq_ids:
            if self.lengths[seq_id] % self.block_size == 0:
                continue  # its next token starts a fresh block
            block = self.block_tables[seq_id][-1]
            left = holders_left.setdefault(block, self.allocator.ref_counts[block])
            if left > 1:
                writers.append(seq_id)
                holders_left[block] = left - 1
        return writers

    def _commit(self, step: Step) -> None:
        super()._commit(step)
        drafts = step.tentative or [0] * step.batch
        for seq_id, ids, tentative in zip(step.seq_ids, step.new_token_ids, drafts):
            self.token_ids[seq_id] += ids
            self._register_full_blocks(seq_id, len(self.token_ids[seq_id]) - tentative)

    def rollback(self, seq_id: int, length: int) -> int:
        """Drafts past `length` leave (their blocks were never hashed); the blocks the kept tokens fill are hashed
        now. A hashed block cannot be cut into: its content is what its hash names."""
        self._check_rollback(seq_id, length)
        hashed = len(self.block_hashes[seq_id]) * self.block_size
        if length < hashed:
            raise ValueError(f"sequence {seq_id}: its first {hashed} tokens are in hashed blocks; cannot roll back to "
                             f"{length}")
        released = super().rollback(seq_id, length)
        del self.token_ids[seq_id][length:]
        self._register_full_blocks(seq_id)
        return released

    def _register_full_blocks(self, seq_id: int, confirmed: int | None = None) -> None:
        """Hash every block of the sequence that is now full of confirmed tokens (the first `confirmed`; all by
        default), and cache it unless its content is cached already."""
        bs, table, hashes, ids = self.block_size, self.block_tables[seq_id], self.block_hashes[seq_id], self.token_ids[seq_id]
        confirmed = len(ids) if confirmed is None else confirmed
        registered = []
        for j in range(len(hashes), confirmed // bs):
            parent_hash, parent = (hashes[j - 1], table[j - 1]) if j else (None, None)
            block_ids = ids[j * bs:(j + 1) * bs]
            block_hash = self.index.hash_fn(parent_hash, block_ids)
            hashes.append(block_hash)
            if self.index.register(table[j], block_hash, parent, block_ids):
                registered.append(table[j])
                if self.offload is not None:
                    self.offload.discard(block_hash)
                continue
            _, twin = self.index.lookup(parent_hash, parent, block_ids, count_refusals=False)
            if twin is not None:  # the same tokens after the same blocks, computed by another sequence of the batch
                self._merge_into_cached(seq_id, j, twin.block)
        if registered:
            self._log("cached", seq_id, tuple(registered), f"seq {seq_id}: blocks {_ids(registered)} full and cached")

    def _merge_into_cached(self, seq_id: int, j: int, cached: int) -> None:
        """Logical block j of the sequence holds what cached block `cached` holds: use that one, free the copy
        (the sequence just filled it, so it holds it alone), and its later blocks can be cached after it."""
        table = self.block_tables[seq_id]
        duplicate = table[j]
        assert self.allocator.ref_counts[duplicate] == 1, f"block {duplicate} was filled while shared"
        self.allocator.reuse(cached)
        table[j] = cached
        self.allocator.release(duplicate)
        self._log("merge", seq_id, (duplicate, cached),
                  f"seq {seq_id}: block {duplicate} holds the same tokens as cached block {cached}: uses {cached}, "
                  f"frees {duplicate}")

    # --- events and public state ------------------------------------------------------------------------
    def _record_eviction(self, blocks: list[int]) -> None:
        self.stats.evicted_blocks += len(blocks)
        below = f" (and {_ids(blocks[:-1])} cached below it)" if len(blocks) > 1 else ""
        self._log("evict", None, tuple(blocks), f"evicted least recently used block {blocks[-1]}{below}")

    def _log(self, kind: str, seq_id: int | None, blocks, text: str) -> None:
        self.events.append(PrefixEvent(kind, seq_id, tuple(blocks), text))

    def shared_blocks(self) -> int:
        """Blocks held by more than one sequence right now."""
        return sum(1 for refs in self.allocator.ref_counts if refs > 1)

    def saved_bytes(self) -> int:
        """Memory that sharing saves right now: every extra owner of a block would otherwise need its own copy."""
        return sum(refs - 1 for refs in self.allocator.ref_counts if refs > 1) * self.block_bytes()

    def used_bytes(self) -> int:
        """Distinct cached tokens held by sequences (a shared block counts once)."""
        fills: dict[int, int] = {}
        for seq_id, table in self.block_tables.items():
            for j, block in enumerate(table):
                fills[block] = max(fills.get(block, 0), min(self.block_size, self.lengths[seq_id] - j * self.block_size))
        return sum(fills.values()) * self.bytes_per_token()


def _ids(blocks) -> str:
    return ", ".join(map(str, blocks))
