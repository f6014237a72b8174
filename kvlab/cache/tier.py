"""A block tier below the paged KV pool: it stores fixed-size blocks of bytes and gives them back.

The tier knows nothing of the model: the allocator decides which blocks; the tier only stores and returns
bytes. A preempted request's K/V blocks go here (swap), and so do evicted prefix-cache blocks.

* Batching — a `put` of n blocks is one indexed copy into storage and a `get` one indexed copy out, never a
  Python loop of per-block copies.
* Checksums — a CRC-32 per block, taken on `put` and verified on `get`; a mismatch raises TierCorrupt.
* Kinds — "file": a preallocated, memory-mapped file (the NVMe tier of a machine with no GPU); "memory": a
  plain CPU tensor (tests, comparison); "pinned": page-locked CPU memory (needs CUDA), for fast swaps.
* Page cache — a memory-mapped file's writes may stay in the OS page cache rather than reach the device;
  `flush=True` ends every `put` with an msync, so the benchmark can measure both.
"""
from __future__ import annotations

import collections
import itertools
import mmap
import os
import shutil
import stat
import tempfile
import time
import weakref
import zlib
from dataclasses import dataclass

import psutil
import torch

from ..checks import positive_int

TIER_KINDS = ("file", "memory", "pinned")
_tier_ids = itertools.count()


class TierError(RuntimeError):
    """Base of every run-time tier fault."""


class TierFull(TierError):
    def __init__(self, needed: int, free: int, capacity: int):
        super().__init__(f"tier full: {needed} blocks needed, {free} free of {capacity}; nothing was written")
        self.needed, self.free, self.capacity = needed, free, capacity


class TierCorrupt(TierError):
    def __init__(self, slots: list[int], where: str):
        super().__init__(f"checksum mismatch in {where}, slot(s) {', '.join(map(str, slots))}")
        self.slots = slots


class TierUnavailable(TierError):
    def __init__(self, path: str, why: str):
        super().__init__(f"tier file {path} {why}")
        self.path = path


@dataclass
class TierStats:
    blocks_written: int = 0
    blocks_read: int = 0
    bytes_written: int = 0
    bytes_read: int = 0
    puts: int = 0
    gets: int = 0
    write_s: float = 0.0
    read_s: float = 0.0

    def count_put(self, blocks: int, block_bytes: int, seconds: float) -> None:
        self.puts, self.blocks_written = self.puts + 1, self.blocks_written + blocks
        self.bytes_written, self.write_s = self.bytes_written + blocks * block_bytes, self.write_s + seconds

    def count_get(self, blocks: int, block_bytes: int, seconds: float) -> None:
        self.gets, self.blocks_read = self.gets + 1, self.blocks_read + blocks
        self.bytes_read, self.read_s = self.bytes_read + blocks * block_bytes, self.read_s + seconds


def _capacity_in_blocks(block_bytes: int, capacity_blocks: int | None, capacity_bytes: int | None) -> int:
    if (capacity_blocks is None) == (capacity_bytes is None):
        raise ValueError(f"give exactly one of capacity_blocks ({capacity_blocks!r}) and capacity_bytes "
                         f"({capacity_bytes!r})")
    if capacity_bytes is not None:
        if isinstance(capacity_bytes, bool) or not isinstance(capacity_bytes, int) or capacity_bytes < block_bytes:
            raise ValueError(f"capacity_bytes={capacity_bytes!r} holds no block of {block_bytes} bytes")
        return capacity_bytes // block_bytes
    return positive_int("capacity_blocks", capacity_blocks)


def _release(resources: dict) -> None:
    """Unmap and delete the tier's file (and the folder it made). Holds no reference to the tier itself."""
    mm = resources.pop("mmap", None)
    if mm is not None:
        try:
            mm.close()
        except BufferError:  # someone still holds a view of the storage; the map goes when they drop it
            pass
    for remove, name in ((os.remove, "file"), (os.rmdir, "made_dir")):
        if resources.get(name):
            try:
                remove(resources.pop(name))
            except OSError:
                pass


class BlockTier:
    """Fixed-size blocks of bytes in numbered slots: put → slot ids, get(slot ids) → the same bytes, free."""

    def __init__(self, block_bytes: int, capacity_blocks: int | None = None, capacity_bytes: int | None = None,
                 kind: str = "file", path: str | os.PathLike | None = None, flush: bool = False):
        block_bytes = positive_int("block_bytes", block_bytes)
        capacity = _capacity_in_blocks(block_bytes, capacity_blocks, capacity_bytes)
        if kind not in TIER_KINDS:
            raise ValueError(f"unknown tier kind {kind!r}; choose one of {', '.join(TIER_KINDS)}")
        if kind == "pinned" and not torch.cuda.is_available():
            raise ValueError("the 'pinned' tier needs CUDA (page-locked memory); use 'memory' or 'file'")
        total_bytes = capacity * block_bytes
        if kind == "file":
            folder = tempfile.gettempdir() if path is None else os.fspath(path)
            if not (os.path.isdir(folder) and os.access(folder, os.W_OK)):
                raise ValueError(f"tier path {folder!r} is not an existing writable folder")
            available, where = shutil.disk_usage(folder).free, f"free on the disk of {folder}"
        else:
            available, where = psutil.virtual_memory().available, "of host memory available"
        if total_bytes > available:
            raise ValueError(f"tier of {total_bytes} bytes ({capacity} blocks) exceeds the {available} bytes {where}")

        self.block_bytes, self.capacity, self.capacity_bytes = block_bytes, capacity, total_bytes
        self.kind, self.flush, self.path = kind, flush, None
        self.stats = TierStats()
        self.free_slots: collections.deque[int] = collections.deque(range(capacity))
        self.used_slots: set[int] = set()
        self._checksums = [0] * capacity  # crc32 of each used slot's bytes, as put
        self._resources: dict = {}
        self._finalizer = weakref.finalize(self, _release, self._resources)
        if kind == "file":
            self.storage = self._map_file(folder if path is not None else None)  # [capacity, block_bytes] uint8
        else:
            self.storage = torch.zeros(capacity, block_bytes, dtype=torch.uint8, pin_memory=kind == "pinned")

    def _map_file(self, folder: str | None) -> torch.Tensor:
        if folder is None:
            folder = self._resources["made_dir"] = tempfile.mkdtemp(prefix="kvlab-tier-")
        self.path = os.path.join(folder, f"kv-tier-{os.getpid()}-{next(_tier_ids)}.bin")
        fd = None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            self._resources["file"] = self.path
            os.posix_fallocate(fd, 0, self.capacity_bytes)  # a full disk shows here, not as a SIGBUS later
            self._identity = (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
            mm = self._resources["mmap"] = mmap.mmap(fd, self.capacity_bytes)
        except OSError as err:
            _release(self._resources)
            raise ValueError(f"cannot preallocate {self.capacity_bytes} bytes for {self.path}: {err}") from err
        finally:
            if fd is not None:
                os.close(fd)  # the map keeps its own reference to the file
        return torch.frombuffer(mm, dtype=torch.uint8).view(self.capacity, self.block_bytes)

    # --- state -------------------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self.free_slots)

    @property
    def num_used(self) -> int:
        return len(self.used_slots)

    @property
    def name(self) -> str:
        return f"{self.kind} tier" + (f" {self.path}" if self.path else "")

    def describe(self) -> str:
        used_mib, total_mib = self.num_used * self.block_bytes / 2**20, self.capacity_bytes / 2**20
        return (f"{self.name}: {self.num_used} of {self.capacity} blocks used "
                f"({used_mib:.1f} MiB of {total_mib:.1f} MiB)")

    def _check_available(self, writing: bool) -> None:
        if not self._finalizer.alive:
            raise TierError(f"{self.name} is closed")
        if self.kind != "file":
            return
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise TierUnavailable(self.path, "has vanished") from None
        if (st.st_dev, st.st_ino) != self._identity:
            raise TierUnavailable(self.path, "was replaced by another file")
        # root passes os.access for any file, so the owner's write bit is checked as well
        if writing and not (os.access(self.path, os.W_OK) and st.st_mode & stat.S_IWUSR):
            raise TierUnavailable(self.path, "is no longer writable")

    def _check_in_use(self, slots: list[int], action: str) -> None:
        bad = [s for s in slots if s not in self.used_slots]
        if bad:
            raise ValueError(f"cannot {action} slot(s) {bad} of the {self.name}: not in use")

    # --- put / get / free --------------------------------------------------------------------------
    def put(self, data: torch.Tensor) -> list[int]:
        """Store `data` [n, block_bytes] uint8 (any device) in n free slots, all or nothing; their ids."""
        if data.dtype != torch.uint8 or data.dim() != 2 or data.shape[1] != self.block_bytes:
            raise ValueError(f"put takes [n, {self.block_bytes}] uint8, got {list(data.shape)} {data.dtype}")
        self._check_available(writing=True)
        n = data.shape[0]
        if n > self.num_free:
            raise TierFull(n, self.num_free, self.capacity)
        start = time.perf_counter()
        blocks = data.cpu().contiguous()  # [n, block_bytes]
        slots = list(itertools.islice(self.free_slots, n))
        self.storage.index_copy_(0, torch.tensor(slots, dtype=torch.long), blocks)  # all n blocks in one copy
        for slot, block in zip(slots, blocks.numpy()):
            self._checksums[slot] = zlib.crc32(block)
        if self.flush and n:
            self._resources["mmap"].flush()  # msync: to the device, not only the page cache
        for _ in range(n):
            self.free_slots.popleft()
        self.used_slots.update(slots)
        assert self.num_free + self.num_used == self.capacity
        self.stats.count_put(n, self.block_bytes, time.perf_counter() - start)
        return slots

    def get(self, slots: list[int]) -> torch.Tensor:
        """A new [n, block_bytes] uint8 CPU tensor of the slots' bytes, checksums verified."""
        self._check_available(writing=False)
        self._check_in_use(slots, "read")
        start = time.perf_counter()
        out = self.storage.index_select(0, torch.tensor(slots, dtype=torch.long))  # [n, block_bytes], one copy
        bad = [s for s, block in zip(slots, out.numpy()) if zlib.crc32(block) != self._checksums[s]]
        if bad:
            raise TierCorrupt(bad, self.name)
        self.stats.count_get(len(slots), self.block_bytes, time.perf_counter() - start)
        return out

    def free(self, slots: list[int]) -> None:
        """Return the slots to the free list; all must be in use, each named once."""
        self._check_in_use(slots, "free")
        if len(set(slots)) != len(slots):
            raise ValueError(f"cannot free slot(s) {sorted(slots)} of the {self.name}: a slot is named twice")
        self.used_slots.difference_update(slots)
        self.free_slots.extend(slots)
        assert self.num_free + self.num_used == self.capacity

    # --- lifetime ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Unmap and delete the file (and the folder the tier made). Safe to call twice."""
        self.storage = torch.empty(0, self.block_bytes, dtype=torch.uint8)  # drop the view of the map first
        self._finalizer()

    def __enter__(self) -> BlockTier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
