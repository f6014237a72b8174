"""Contiguous regions of KV token slots: first fit over a coalescing free list.

What a contiguous cache with variable reservations does underneath (Orca-style, or any system that reserves
one unbroken span per sequence): a request takes a run of consecutive slots and returns it when it finishes.
Holes between live regions are the trouble — when no single hole is long enough, the request waits though
the free slots add up to more than it needs. That is external fragmentation, which fixed-size blocks
(BlockAllocator) cannot have: any free block serves any request.
"""
from __future__ import annotations

from bisect import bisect_left

from ..checks import positive_int

from .block_allocator import PoolExhausted


class NoFreeRegion(PoolExhausted):
    """PoolExhausted, in token slots: no single free hole is long enough (the free slots in all may be)."""

    def __init__(self, needed: int, free: int, total: int, largest_hole: int):
        super().__init__(needed, free, total)
        self.largest_hole = largest_hole

    def __str__(self) -> str:
        why = " — external fragmentation: enough free in all, in holes too short" if self.free >= self.needed else ""
        return (f"no free region of {self.needed} token slots: {self.free} of {self.total} slots are free, "
                f"the largest hole holds {self.largest_hole}{why}")


class RegionAllocator:
    def __init__(self, capacity_tokens: int):
        self.capacity_tokens = positive_int("capacity_tokens", capacity_tokens)
        self.free_holes: list[tuple[int, int]] = [(0, capacity_tokens)]  # (start, length), sorted, never touching
        self.regions: dict[int, int] = {}  # start -> length of each live region
        self._num_free = capacity_tokens

    @property
    def num_free(self) -> int:
        return self._num_free

    @property
    def num_used(self) -> int:
        return self.capacity_tokens - self._num_free

    @property
    def largest_free_hole(self) -> int:
        return max((length for _, length in self.free_holes), default=0)

    def can_allocate(self, num_tokens: int) -> bool:
        return any(length >= num_tokens for _, length in self.free_holes)

    def allocate(self, num_tokens: int) -> int:
        """The start of a fresh region of `num_tokens` slots, in the first hole that holds it; or
        PoolExhausted (NoFreeRegion) and no change at all."""
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 1:
            raise ValueError(f"cannot allocate a region of {num_tokens!r} token slots")
        for i, (start, length) in enumerate(self.free_holes):
            if length >= num_tokens:
                if length == num_tokens:
                    del self.free_holes[i]
                else:
                    self.free_holes[i] = (start + num_tokens, length - num_tokens)
                self.regions[start] = num_tokens
                self._num_free -= num_tokens
                self._check()
                return start
        raise NoFreeRegion(num_tokens, self._num_free, self.capacity_tokens, self.largest_free_hole)

    def free(self, start: int) -> None:
        """Return a live region; it merges with the holes on either side."""
        if start not in self.regions:
            raise ValueError(f"no live region starts at slot {start}")
        length = self.regions.pop(start)
        self._num_free += length
        i = bisect_left(self.free_holes, (start, 0))
        before = self.free_holes[i - 1] if i > 0 else None
        after = self.free_holes[i] if i < len(self.free_holes) else None
        if after is not None and start + length == after[0]:
            length += after[1]
            del self.free_holes[i]
        if before is not None and before[0] + before[1] == start:
            start, length = before[0], before[1] + length
            i -= 1
            del self.free_holes[i]
        self.free_holes.insert(i, (start, length))
        self._check()

    def _check(self) -> None:
        end = -1
        for start, length in self.free_holes:
            assert length > 0 and start > end, f"free holes overlap, touch or are empty: {self.free_holes}"
            end = start + length
        assert end <= self.capacity_tokens, f"a free hole runs past the pool of {self.capacity_tokens} slots"
        assert self._num_free == sum(length for _, length in self.free_holes), "free count disagrees with the holes"
        assert self._num_free + sum(self.regions.values()) == self.capacity_tokens, "slots lost or counted twice"
