"""Full KV blocks found by their content: a chain of hashes over token ids (the radix tree of cached prefixes).

Block j of a sequence is named by hash(hash of block j−1, token ids of block j), so equal prefixes give equal
chains and one hash stands for everything before it. A lookup that finds a hash still compares the block's
token ids and its parent block: a collision is counted and refused, never served as someone else's K/V.

The index knows physical block ids and token ids, no tensors. Every cached block's parent is cached too (a
sequence that holds a block holds the block before it), so the entries form a tree rooted at the first
blocks of prompts: forgetting a block forgets its subtree.
"""
from __future__ import annotations

import hashlib
from array import array
from dataclasses import dataclass
from typing import Callable, Sequence

HashFn = Callable[[int | None, Sequence[int]], int]


def chain_hash(parent_hash: int | None, token_ids: Sequence[int]) -> int:
    """A 64-bit hash of (the parent block's hash, this block's token ids); None: the first block of a sequence.
    Deterministic across processes (blake2b, not Python's salted hash)."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(b"root" if parent_hash is None else parent_hash.to_bytes(8, "little"))
    digest.update(array("q", token_ids).tobytes())
    return int.from_bytes(digest.digest(), "little")


@dataclass
class CachedBlock:
    block: int  # physical block id
    hash: int
    parent: int | None  # physical block of the previous block in the chain; None for a first block
    token_ids: tuple[int, ...]
    hits: int = 0  # times a new sequence reused this block instead of computing it


class PrefixIndex:
    def __init__(self, hash_fn: HashFn = chain_hash):
        self.hash_fn = hash_fn
        self.by_hash: dict[int, CachedBlock] = {}
        self.by_block: dict[int, CachedBlock] = {}
        self.children: dict[int | None, set[int]] = {None: set()}  # parent block → cached child blocks
        self.refused_collisions = 0  # hash found, token ids or parent different

    def __contains__(self, block: int) -> bool:
        return block in self.by_block

    def __len__(self) -> int:
        return len(self.by_block)

    def lookup(self, parent_hash: int | None, parent_block: int | None, token_ids: Sequence[int],
               count_refusals: bool = True) -> tuple[int, CachedBlock | None]:
        """(this block's chain hash, the cached block holding exactly these tokens after `parent_block`, or None)."""
        block_hash = self.hash_fn(parent_hash, token_ids)
        entry = self.by_hash.get(block_hash)
        if entry is None:
            return block_hash, None
        if entry.token_ids != tuple(token_ids) or entry.parent != parent_block:
            if count_refusals:
                self.refused_collisions += 1
            return block_hash, None
        return block_hash, entry

    def register(self, block: int, block_hash: int, parent: int | None, token_ids: Sequence[int]) -> bool:
        """Remember that `block` holds `token_ids` after `parent`. False (nothing changes) when the hash is
        taken — the same content cached in another block, or a collision — or the parent is not cached."""
        assert block not in self.by_block, f"block {block} is cached already"
        if block_hash in self.by_hash or (parent is not None and parent not in self.by_block):
            return False
        entry = CachedBlock(block, block_hash, parent, tuple(token_ids))
        self.by_hash[block_hash] = self.by_block[block] = entry
        self.children[parent].add(block)
        self.children[block] = set()
        return True

    def forget(self, block: int) -> list[int]:
        """Drop `block` and every cached block below it; returns them, deepest first."""
        gone = []
        for child in list(self.children[block]):
            gone += self.forget(child)
        entry = self.by_block.pop(block)
        del self.by_hash[entry.hash], self.children[block]
        self.children[entry.parent].discard(block)
        return gone + [block]

    def subtree(self, block: int) -> list[int]:
        """`block` and every cached block below it, deepest first (what forget(block) would drop)."""
        below = []
        for child in self.children[block]:
            below += self.subtree(child)
        return below + [block]

    def chains(self) -> list[list[CachedBlock]]:
        """Every root-to-leaf path of cached blocks (the prefixes the cache can serve), in block order."""
        paths = []

        def walk(block: int, path: list[CachedBlock]) -> None:
            path = path + [self.by_block[block]]
            kids = sorted(self.children[block])
            if not kids:
                paths.append(path)
            for child in kids:
                walk(child, path)

        for root in sorted(self.children[None]):
            walk(root, [])
        return paths
