"""Swapping sequences' K/V between the block pool and the tier below it (kvlab.cache.tier).

One sequence at a time (the benchmark, the tests):

    swapped = swap_out(cache, seq_id, tier)            # its filled blocks → the tier; the pool frees them
    swap_in(cache, seq_id, max_tokens, swapped, tier)  # fresh blocks ← the tier, checksums checked

Several in one step (the scheduler: one tier copy per step, however many sequences move):

    staged = [stage_out(cache, s) for s in victims]   # K/V gathered out of the pool, the pool frees the blocks
    swapped = write_out(staged, tier)                  # one put for all of them (TierError: none written)
    for s, sw in resuming: reserve_in(cache, s, max_tokens, sw)   # fresh blocks, contents still in the tier
    failed = read_in(cache, resuming, tier)            # one get for all; {seq_id: TierError} for the lost ones

swap_out changes nothing when the tier fails (the sequence stays in the pool); a sequence read_in or swap_in
could not bring back is freed in the pool and its tier slots too (their contents are lost): the caller
recomputes it. The pool decides which blocks; the tier only stores bytes.

Only the filled blocks move: ceil(length / block_size) blocks of block_bytes() each (K and V of every layer).
A prefix-caching pool remembers the sequence's token ids, so that its blocks can be hashed again on the way
back: a block whose content is still cached in the pool merges into that block instead of keeping a copy.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .block_allocator import blocks_for
from .tier import TierCorrupt, TierError


@dataclass(frozen=True)
class SwappedOut:
    seq_id: int
    length: int  # tokens whose K/V went to the tier
    slots: tuple[int, ...]  # tier slots, in logical block order
    nbytes: int  # bytes copied out (and to be copied back)
    token_ids: tuple[int, ...] | None = None  # the prefix layout's ids of those tokens


@dataclass(frozen=True)
class Staged:
    """A sequence's K/V gathered out of the pool, on its way to the tier."""
    seq_id: int
    length: int
    data: torch.Tensor  # [blocks, block_bytes] uint8
    token_ids: tuple[int, ...] | None


# --- out ----------------------------------------------------------------------------------------------------

def _gather(cache, seq_id: int) -> Staged:
    check_can_swap(cache)
    length = cache.lengths[seq_id]
    blocks = cache.block_tables[seq_id][:blocks_for(length, cache.block_size)]
    return Staged(seq_id, length, cache.export_blocks(blocks), cache.swap_token_ids(seq_id))


def stage_out(cache, seq_id: int) -> Staged:
    """Gather `seq_id`'s filled blocks out of the pool (a copy) and free the sequence there."""
    staged = _gather(cache, seq_id)
    cache.free_sequence(seq_id)
    return staged


def write_out(staged: list[Staged], tier) -> list[SwappedOut]:
    """Write every staged sequence to `tier` in one put (TierError: nothing was written)."""
    data = torch.cat([s.data for s in staged]) if staged else None  # [sum of blocks, block_bytes]
    slots = tier.put(data) if data is not None and data.shape[0] else []
    swapped, start = [], 0
    for s in staged:
        n = s.data.shape[0]
        swapped.append(SwappedOut(s.seq_id, s.length, tuple(slots[start:start + n]), s.data.numel(), s.token_ids))
        start += n
    return swapped


def swap_out(cache, seq_id: int, tier) -> SwappedOut:
    """Copy `seq_id`'s filled blocks to `tier`, then free the sequence in the pool (TierError: it stays there)."""
    [swapped] = write_out([_gather(cache, seq_id)], tier)
    cache.free_sequence(seq_id)
    return swapped


# --- in -----------------------------------------------------------------------------------------------------

def reserve_in(cache, seq_id: int, max_tokens: int, swapped: SwappedOut) -> None:
    """Track `seq_id` again in fresh blocks for its swapped tokens; their K/V is copied in by read_in
    (PoolExhausted: nothing changed)."""
    check_can_swap(cache)
    assert swapped.seq_id == seq_id, f"swapped state of sequence {swapped.seq_id}, not {seq_id}"
    fresh = cache.allocator.allocate(len(swapped.slots))
    cache.add_sequence(seq_id, max_tokens)
    cache.block_tables[seq_id] = list(fresh)
    cache.lengths[seq_id] = swapped.length


def read_in(cache, reserved: list[SwappedOut], tier) -> dict[int, TierError]:
    """Copy the reserved sequences' K/V back in one get (checksums checked) and free their tier slots. A sequence
    with a corrupt block, or every one when the tier is gone, is freed in the pool: {seq_id: its fault}."""
    failed: dict[int, TierError] = {}
    pending = [s for s in reserved if s.slots]
    while pending:
        try:
            data = tier.get([slot for s in pending for slot in s.slots])  # [sum of blocks, block_bytes]
        except TierCorrupt as fault:
            bad = set(fault.slots)
            failed |= {s.seq_id: fault for s in pending if bad & set(s.slots)}
            pending = [s for s in pending if s.seq_id not in failed]
            continue
        except TierError as fault:
            failed |= {s.seq_id: fault for s in pending}
            break
        start = 0
        for s in pending:
            cache.import_blocks(cache.block_tables[s.seq_id], data[start:start + len(s.slots)])
            start += len(s.slots)
        break
    for s in reserved:
        tier.free(list(s.slots))
        if s.seq_id in failed:
            cache.free_sequence(s.seq_id)
        else:
            cache.restore_swapped(s.seq_id, s)
    return failed


def swap_in(cache, seq_id: int, max_tokens: int, swapped: SwappedOut, tier) -> None:
    """reserve_in + read_in for one sequence; raises its TierError (the pool is as it was, the slots freed)."""
    reserve_in(cache, seq_id, max_tokens, swapped)
    failed = read_in(cache, [swapped], tier)
    if failed:
        raise failed[seq_id]


def check_can_swap(cache) -> None:
    if not getattr(cache, "can_swap", False):
        raise ValueError(f"the {cache.name!r} layout cannot swap sequences to a tier; use cache='paged' or "
                         f"cache='prefix', or preemption='recompute'")
