"""Fixed-size physical KV blocks: a free list, reference counts, all-or-nothing allocation.

The allocator knows block ids only; the tensors they index live in the paged cache's pools. The same
ids index every layer's pool, so one allocation covers a token in all layers.
"""
from __future__ import annotations

from collections import deque

from ..checks import positive_int

MAX_BLOCK_SIZE = 256


class PoolExhausted(RuntimeError):
    """Not enough free blocks: nothing was allocated."""

    def __init__(self, needed: int, free: int, total: int):
        super().__init__(f"KV block pool exhausted: need {needed} blocks, {free} of {total} are free "
                         f"(finish or preempt a sequence, or make the pool larger)")
        self.needed, self.free, self.total = needed, free, total


def check_block_size(block_size: int) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or not 1 <= block_size <= MAX_BLOCK_SIZE \
            or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two from 1 to {MAX_BLOCK_SIZE}, got {block_size!r}")
    return block_size


def blocks_for(num_tokens: int, block_size: int) -> int:
    """Blocks needed to hold num_tokens: ceil(num_tokens / block_size)."""
    return -(-num_tokens // block_size)


class BlockAllocator:
    def __init__(self, num_blocks: int, block_size: int):
        self.num_blocks = positive_int("num_blocks", num_blocks)
        self.block_size = check_block_size(block_size)
        self.free_block_ids: deque[int] = deque(range(num_blocks))
        self.ref_counts: list[int] = [0] * num_blocks

    @property
    def num_free(self) -> int:
        return len(self.free_block_ids)

    @property
    def num_available(self) -> int:
        """Blocks a fresh allocation can get (here the free ones; a caching allocator adds the evictable ones)."""
        return self.num_free

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_available

    def can_allocate(self, count: int) -> bool:
        return count <= self.num_available

    def allocate(self, count: int) -> list[int]:
        """`count` fresh blocks with reference count 1, or PoolExhausted and no change at all."""
        if count < 0:
            raise ValueError(f"cannot allocate {count} blocks")
        if not self.can_allocate(count):
            raise PoolExhausted(count, self.num_available, self.num_blocks)
        blocks = [self.free_block_ids.popleft() for _ in range(count)]
        for block in blocks:
            assert self.ref_counts[block] == 0, f"block {block} was on the free list while referenced"
            self.ref_counts[block] = 1
        return blocks

    def share(self, block: int) -> None:
        """One more owner for a block in use (a forked sequence, a shared prefix)."""
        self._check_in_use(block)
        self.ref_counts[block] += 1

    def release(self, block: int) -> None:
        """One owner fewer; the block returns to the free list when nobody references it."""
        self._check_in_use(block)
        self.ref_counts[block] -= 1
        if self.ref_counts[block] == 0:
            self._unreferenced(block)

    def lru_order(self) -> list[int]:
        """Released blocks kept for reuse, in the order they would be evicted: none here."""
        return []

    def _unreferenced(self, block: int) -> None:
        """The last owner let go of `block`."""
        self.free_block_ids.append(block)

    def _check_in_use(self, block: int) -> None:
        if not 0 <= block < self.num_blocks:
            raise ValueError(f"block {block} is outside the pool of {self.num_blocks} blocks")
        if self.ref_counts[block] == 0:
            raise ValueError(f"block {block} is free: it has no owner to add or remove")
