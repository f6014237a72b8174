"""Prefix blocks evicted from the pool, kept in a tier below it by their chain hash (an offloaded prefix cache).

When the pool evicts a cached block (least recently used), its K/V goes to the tier instead of being dropped,
still named by its chain hash (kvlab.cache.prefix_index). A later prompt whose chain continues past the blocks
the pool holds finds the next blocks here and loads them back — one batched copy — instead of recomputing them,
as vLLM's offloading connector, LMCache and SGLang's hierarchical cache do. When the tier is full, its own least
recently used blocks make room. A tier fault (full, corrupt, gone) drops the blocks concerned and is recorded:
the prompt's tokens are recomputed, never served from bad bytes.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from .tier import TierError


@dataclass(frozen=True)
class TierBlock:
    hash: int  # chain hash: this block's tokens after everything before them
    parent_hash: int | None
    token_ids: tuple[int, ...]
    slot: int  # where the tier keeps its K/V


@dataclass
class PrefixTierStats:
    offloaded_blocks: int = 0  # evicted from the pool into the tier
    loaded_blocks: int = 0  # hits: copied back into the pool
    dropped_blocks: int = 0  # pushed out of a full tier (least recently used) or lost to a fault
    faults: int = 0


class PrefixTier:
    def __init__(self, tier):
        self.tier = tier
        self.blocks: OrderedDict[int, TierBlock] = OrderedDict()  # by chain hash, least recently used first
        self.pinned: set[int] = set()  # hashes being loaded: never dropped to make room meanwhile
        self.stats = PrefixTierStats()
        self.last_fault: str | None = None

    def __len__(self) -> int:
        return len(self.blocks)

    def store(self, blocks: list[tuple[int, int | None, tuple[int, ...]]], data: torch.Tensor) -> None:
        """Keep evicted blocks — (hash, parent hash, token ids) per row of `data` [n, block_bytes] — making room
        by dropping the tier's least recently used ones; a tier fault skips them (they are dropped, as without a
        tier)."""
        keep = [i for i, (h, _, _) in enumerate(blocks) if h not in self.blocks][: self.tier.capacity]
        droppable = [h for h in self.blocks if h not in self.pinned]
        while self.tier.num_free < len(keep) and droppable:
            self._drop(droppable.pop(0))
        keep = keep[: self.tier.num_free]
        if not keep:
            return
        try:
            slots = self.tier.put(data[keep])
        except TierError as fault:
            self._fault(f"offloading {len(keep)} evicted prefix blocks: {fault}")
            return
        for i, slot in zip(keep, slots):
            block_hash, parent_hash, token_ids = blocks[i]
            self.blocks[block_hash] = TierBlock(block_hash, parent_hash, tuple(token_ids), slot)
        self.stats.offloaded_blocks += len(keep)

    def lookup(self, block_hash: int, parent_hash: int | None, token_ids) -> TierBlock | None:
        block = self.blocks.get(block_hash)
        if block is None or block.parent_hash != parent_hash or block.token_ids != tuple(token_ids):
            return None
        return block

    def load(self, blocks: list[TierBlock]) -> torch.Tensor:
        """Their K/V, [n, block_bytes], in one batched copy; they leave the tier (the pool holds them now).
        TierError: they are dropped (their bytes cannot be trusted) and the error goes on."""
        slots = [b.slot for b in blocks]
        try:
            data = self.tier.get(slots)
        except TierError as fault:
            self._fault(f"loading {len(blocks)} prefix blocks: {fault}")
            for block in blocks:
                self._drop(block.hash)
            raise
        self.tier.free(slots)
        for block in blocks:
            del self.blocks[block.hash]
        self.stats.loaded_blocks += len(blocks)
        return data

    def discard(self, block_hash: int) -> None:
        """The pool holds this content again (computed anew): the tier's copy goes, so a hash lives in one place."""
        if block_hash in self.blocks:
            self._drop(block_hash)

    def _drop(self, block_hash: int) -> None:
        block = self.blocks.pop(block_hash)
        self.tier.free([block.slot])
        self.stats.dropped_blocks += 1

    def _fault(self, text: str) -> None:
        self.last_fault = text
        self.stats.faults += 1
