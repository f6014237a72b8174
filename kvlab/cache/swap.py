"""Swapping a sequence's K/V between the block pool and the tier below it (kvlab.cache.tier).

    swapped = swap_out(cache, seq_id, tier)         # its filled blocks → the tier, one batch; the pool frees them
    ...                                             # other sequences use the freed blocks
    swap_in(cache, seq_id, max_tokens, swapped, tier)  # fresh blocks ← the tier, one batch, checksums checked

Either call changes nothing when the tier fails (TierError): swap_out leaves the sequence in the pool (the
caller recomputes it instead), swap_in leaves the pool as it was and frees the tier slots (the caller
recomputes). The pool decides which blocks; the tier only stores bytes.

Only the filled blocks move: ceil(length / block_size) blocks of block_bytes() each (K and V of every layer).
A prefix-caching pool remembers the sequence's token ids, so that its blocks can be hashed again on the way
back: a block whose content is still cached in the pool merges into that block instead of keeping a copy.
"""
from __future__ import annotations

from dataclasses import dataclass

from .block_allocator import blocks_for


@dataclass(frozen=True)
class SwappedOut:
    seq_id: int
    length: int  # tokens whose K/V went to the tier
    slots: tuple[int, ...]  # tier slots, in logical block order
    nbytes: int  # bytes copied out (and to be copied back)
    token_ids: tuple[int, ...] | None = None  # the prefix layout's ids of those tokens


def swap_out(cache, seq_id: int, tier) -> SwappedOut:
    """Copy `seq_id`'s filled blocks to `tier` in one batch, then free the sequence in the pool."""
    check_can_swap(cache)
    length = cache.lengths[seq_id]
    blocks = cache.block_tables[seq_id][:blocks_for(length, cache.block_size)]
    data = cache.export_blocks(blocks)  # [n, block_bytes] uint8
    slots = tier.put(data) if blocks else []  # TierError: nothing changed
    swapped = SwappedOut(seq_id, length, tuple(slots), data.numel(), cache.swap_token_ids(seq_id))
    cache.free_sequence(seq_id)
    return swapped


def swap_in(cache, seq_id: int, max_tokens: int, swapped: SwappedOut, tier) -> None:
    """Track `seq_id` again with its K/V copied back from `tier` into fresh blocks (PoolExhausted or TierError:
    the pool is as it was; on TierError the tier slots are freed too, since their contents are lost)."""
    check_can_swap(cache)
    assert swapped.seq_id == seq_id, f"swapped state of sequence {swapped.seq_id}, not {seq_id}"
    fresh = cache.allocator.allocate(len(swapped.slots))  # PoolExhausted: nothing changed
    try:
        data = tier.get(list(swapped.slots)) if swapped.slots else None  # [n, block_bytes], checksums checked
    except Exception:
        for block in fresh:
            cache.allocator.release(block)
        tier.free(list(swapped.slots))
        raise
    tier.free(list(swapped.slots))
    if data is not None:
        cache.import_blocks(fresh, data)
    cache.add_sequence(seq_id, max_tokens)
    cache.block_tables[seq_id] = list(fresh)
    cache.lengths[seq_id] = swapped.length
    cache.restore_swapped(seq_id, swapped)


def check_can_swap(cache) -> None:
    if not getattr(cache, "can_swap", False):
        raise ValueError(f"the {cache.name!r} layout cannot swap sequences to a tier; use cache='paged' or "
                         f"cache='prefix', or preemption='recompute'")
