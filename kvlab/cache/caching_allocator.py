"""A block allocator that keeps released blocks' contents until their space is needed (least recently used first).

Each physical block is in exactly one of three states:
* used — reference count ≥ 1 (held by sequences);
* evictable — reference count 0 but its K/V still cached (the PrefixIndex knows it): a new sequence with
  the same prefix can take it back; kept in `evictable`, least recently released first;
* free — reference count 0 and no content worth keeping (`free_block_ids`).
A fresh allocation takes free blocks first and evicts the least recently used evictable block only when the
free list runs dry; evicting a block forgets it (and the cached blocks below it) in the index.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

from .block_allocator import BlockAllocator
from .prefix_index import PrefixIndex


class CachingBlockAllocator(BlockAllocator):
    def __init__(self, num_blocks: int, block_size: int, index: PrefixIndex,
                 on_evict: Callable[[list[int]], None] | None = None,
                 before_evict: Callable[[list[int]], None] | None = None):
        super().__init__(num_blocks, block_size)
        self.index = index
        self.evictable: OrderedDict[int, None] = OrderedDict()  # least recently released first
        self.on_evict = on_evict  # called with the blocks one eviction forgot (the victim last)
        self.before_evict = before_evict  # the same blocks, while the index still knows them (an offload tier)

    @property
    def num_evictable(self) -> int:
        return len(self.evictable)

    @property
    def num_available(self) -> int:
        """Blocks a fresh allocation can get: free ones plus evictable ones."""
        return self.num_free + self.num_evictable

    def allocate(self, count: int) -> list[int]:
        """`count` blocks with reference count 1 — evicting cached ones, oldest first, only if the free list is
        short — or PoolExhausted and no change at all."""
        if 0 <= count <= self.num_available:  # otherwise BlockAllocator.allocate refuses, and nothing is evicted
            while self.num_free < count:
                self._evict_oldest()
        return super().allocate(count)

    def reuse(self, block: int) -> None:
        """A prefix hit: one more owner for a cached block, taking it back from `evictable` if nobody held it."""
        assert block in self.index, f"block {block} is not cached"
        if self.ref_counts[block] == 0:
            del self.evictable[block]
            self.ref_counts[block] = 1
        else:
            self.share(block)

    def _unreferenced(self, block: int) -> None:
        """A cached block becomes evictable (the most recent); any other one free."""
        if block in self.index:
            self.evictable[block] = None
        else:
            super()._unreferenced(block)

    def lru_order(self) -> list[int]:
        """Evictable blocks in the order they would be evicted."""
        return list(self.evictable)

    def _evict_oldest(self) -> None:
        victim = next(iter(self.evictable))
        if self.before_evict is not None:
            self.before_evict(self.index.subtree(victim))
        forgotten = self.index.forget(victim)  # the victim and its cached descendants (all unused: see index)
        for block in forgotten:
            assert self.ref_counts[block] == 0, f"evicting block {block}, which is in use"
            del self.evictable[block]
            self.free_block_ids.append(block)
        if self.on_evict is not None:
            self.on_evict(forgotten)
