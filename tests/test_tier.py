"""The block tier stores blocks of bytes and gives back exactly those bytes, or says loudly why it cannot."""
from __future__ import annotations

import os
import tempfile

import pytest
import torch

from kvlab.cache.tier import TIER_KINDS, BlockTier, TierCorrupt, TierError, TierFull, TierStats, TierUnavailable

KINDS = ("file", "memory")


def random_blocks(n: int, block_bytes: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, block_bytes), dtype=torch.uint8, generator=generator)  # [n, block_bytes]


@pytest.fixture(params=KINDS)
def make_tier(request, tmp_path):
    tiers = []

    def make(block_bytes=37, capacity_blocks=8, **options):
        path = tmp_path if request.param == "file" else None
        tier = BlockTier(block_bytes, capacity_blocks, kind=request.param, path=path, **options)
        tiers.append(tier)
        return tier

    yield make
    for tier in tiers:
        tier.close()


def file_tier(tmp_path, block_bytes=37, capacity_blocks=8, **options) -> BlockTier:
    return BlockTier(block_bytes, capacity_blocks, kind="file", path=tmp_path, **options)


def flip_byte(tier: BlockTier, slot: int, offset: int) -> None:
    """Corrupt one stored byte behind the tier's back: through a separate file handle, or poking the tensor."""
    if tier.kind == "file":
        with open(tier.path, "r+b") as f:
            f.seek(slot * tier.block_bytes + offset)
            byte = f.read(1)[0]
            f.seek(slot * tier.block_bytes + offset)
            f.write(bytes([byte ^ 0x01]))
    else:
        tier.storage[slot, offset] ^= 0x01


# --- round trips -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("block_bytes", [37, 4096 + 3])
def test_put_then_get_returns_the_same_bytes_in_distinct_slots(make_tier, block_bytes):
    tier = make_tier(block_bytes=block_bytes, capacity_blocks=10)
    first, second = random_blocks(3, block_bytes, seed=1), random_blocks(4, block_bytes, seed=2)
    slots_first, slots_second = tier.put(first), tier.put(second)
    assert len(set(slots_first + slots_second)) == 7 and all(0 <= s < 10 for s in slots_first + slots_second)
    assert (tier.num_used, tier.num_free) == (7, 3)
    assert torch.equal(tier.get(slots_second), second) and torch.equal(tier.get(slots_first), first)
    assert torch.equal(tier.get(slots_second[::-1]), second.flip(0))  # any order, one copy
    tier.free(slots_first)
    assert (tier.num_used, tier.num_free) == (4, 6)
    assert torch.equal(tier.get(slots_second), second)  # freeing others does not disturb the rest


def test_get_returns_a_copy_not_a_view_of_storage(make_tier):
    tier = make_tier()
    data = random_blocks(2, 37)
    slots = tier.put(data)
    out = tier.get(slots)
    out.zero_()
    assert torch.equal(tier.get(slots), data)


def test_freed_slots_are_reused(make_tier):
    tier = make_tier(capacity_blocks=2)
    tier.free(tier.put(random_blocks(2, 37)))
    again = random_blocks(2, 37, seed=5)
    assert torch.equal(tier.get(tier.put(again)), again)


def test_flush_round_trip_on_a_file_tier(tmp_path):
    with file_tier(tmp_path, flush=True) as tier:
        data = random_blocks(5, 37)
        assert torch.equal(tier.get(tier.put(data)), data)


def test_put_rejects_wrong_dtype_or_shape(make_tier):
    tier = make_tier()
    for bad in (torch.zeros(2, 37, dtype=torch.float32), torch.zeros(2, 36, dtype=torch.uint8),
                torch.zeros(37, dtype=torch.uint8)):
        with pytest.raises(ValueError, match="uint8"):
            tier.put(bad)
    assert tier.num_free == tier.capacity


# --- all or nothing ------------------------------------------------------------------------------------
def test_put_over_capacity_raises_tier_full_and_changes_nothing(make_tier):
    tier = make_tier(capacity_blocks=4)
    kept = random_blocks(3, 37)
    slots = tier.put(kept)
    with pytest.raises(TierFull, match="2 blocks needed, 1 free") as caught:
        tier.put(random_blocks(2, 37, seed=9))
    assert (caught.value.needed, caught.value.free, caught.value.capacity) == (2, 1, 4)
    assert (tier.num_free, tier.num_used) == (1, 3)
    assert torch.equal(tier.get(slots), kept)
    assert len(tier.put(random_blocks(1, 37))) == 1  # the free slot is still there


# --- checksums -----------------------------------------------------------------------------------------
def test_one_flipped_byte_raises_tier_corrupt_naming_exactly_that_slot(make_tier):
    tier = make_tier(capacity_blocks=6)
    data = random_blocks(4, 37)
    slots = tier.put(data)
    flip_byte(tier, slots[2], offset=17)
    with pytest.raises(TierCorrupt, match=f"slot\\(s\\) {slots[2]}$") as caught:
        tier.get(slots)
    assert caught.value.slots == [slots[2]]
    assert tier.num_used == 4  # the bad slot stays taken: the caller decides
    good = [s for s in slots if s != slots[2]]
    assert torch.equal(tier.get(good), data[[0, 1, 3]])


def test_tier_corrupt_lists_every_bad_slot(make_tier):
    tier = make_tier()
    slots = tier.put(random_blocks(4, 37))
    flip_byte(tier, slots[0], offset=0)
    flip_byte(tier, slots[3], offset=36)
    with pytest.raises(TierCorrupt) as caught:
        tier.get(slots)
    assert caught.value.slots == [slots[0], slots[3]]


# --- the backing file goes away ------------------------------------------------------------------------
def test_vanished_file_makes_put_and_get_raise_tier_unavailable_naming_the_path(tmp_path):
    with file_tier(tmp_path) as tier:
        slots = tier.put(random_blocks(2, 37))
        os.remove(tier.path)
        with pytest.raises(TierUnavailable, match="vanished") as caught:
            tier.put(random_blocks(1, 37))
        assert tier.path in str(caught.value) and caught.value.path == tier.path
        with pytest.raises(TierUnavailable, match=tier.path):
            tier.get(slots)
        assert (tier.num_used, tier.num_free) == (2, 6)  # the refused put took no slot


def test_replaced_file_raises_tier_unavailable(tmp_path):
    with file_tier(tmp_path) as tier:
        slots = tier.put(random_blocks(2, 37))
        impostor = tmp_path / "impostor.bin"
        impostor.write_bytes(bytes(tier.capacity_bytes))
        os.replace(impostor, tier.path)
        with pytest.raises(TierUnavailable, match="replaced"):
            tier.get(slots)
        with pytest.raises(TierUnavailable, match="replaced"):
            tier.put(random_blocks(1, 37))


def test_read_only_file_refuses_put_even_as_root(tmp_path):
    with file_tier(tmp_path) as tier:
        data = random_blocks(1, 37)
        slots = tier.put(data)
        os.chmod(tier.path, 0o444)
        with pytest.raises(TierUnavailable, match="no longer writable"):
            tier.put(random_blocks(1, 37))
        assert tier.num_used == 1
        assert torch.equal(tier.get(slots), data)  # reading still works


# --- construction --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, named", [
    (dict(block_bytes=16, capacity_blocks=0), "0"),
    (dict(block_bytes=16, capacity_blocks=-3), "-3"),
    (dict(block_bytes=16, capacity_blocks=4, capacity_bytes=64), "exactly one"),
    (dict(block_bytes=16), "exactly one"),
    (dict(block_bytes=16, capacity_bytes=15), "capacity_bytes=15"),
    (dict(block_bytes=0, capacity_blocks=4), "block_bytes.*0"),
    (dict(block_bytes=16, capacity_blocks=4, kind="nvme"), "'nvme'.*file, memory, pinned"),
    (dict(block_bytes=4096, capacity_bytes=10**18), str(10**18 // 4096 * 4096)),
])
def test_bad_construction_raises_value_error_naming_the_value_and_leaves_no_file(tmp_path, kwargs, named):
    kwargs.setdefault("path", tmp_path)
    with pytest.raises(ValueError, match=named):
        BlockTier(**kwargs)
    assert list(tmp_path.iterdir()) == []


def test_bad_path_raises_value_error_naming_it(tmp_path):
    a_file, missing = tmp_path / "not-a-folder", tmp_path / "missing"
    a_file.write_bytes(b"x")
    for path in (a_file, missing):
        with pytest.raises(ValueError, match=str(path)):
            BlockTier(16, 4, path=path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-folder"]


def test_memory_tier_over_host_memory_raises_value_error():
    with pytest.raises(ValueError, match="host memory"):
        BlockTier(4096, capacity_bytes=10**18, kind="memory")


def test_refused_default_path_tier_leaves_no_temp_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(ValueError, match="free on the disk"):
        BlockTier(4096, capacity_bytes=10**18)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal only happens without CUDA")
def test_pinned_without_cuda_raises_value_error():
    with pytest.raises(ValueError, match="pinned.*CUDA"):
        BlockTier(16, 4, kind="pinned")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pinned_tier_round_trips_a_gpu_tensor():
    with BlockTier(4099, 8, kind="pinned") as tier:
        assert tier.storage.is_pinned()
        data = random_blocks(3, 4099).cuda()
        assert torch.equal(tier.get(tier.put(data)), data.cpu())


def test_capacity_bytes_rounds_down_to_whole_blocks(tmp_path):
    with file_tier(tmp_path, block_bytes=100, capacity_blocks=None, capacity_bytes=1050) as tier:
        assert (tier.capacity, tier.capacity_bytes, os.path.getsize(tier.path)) == (10, 1000, 1000)
    assert TIER_KINDS == ("file", "memory", "pinned")


# --- lifetime ------------------------------------------------------------------------------------------
def test_close_deletes_the_file_and_is_idempotent(tmp_path):
    tier = file_tier(tmp_path)
    tier.put(random_blocks(2, 37))
    assert os.path.exists(tier.path)
    tier.close()
    tier.close()
    assert list(tmp_path.iterdir()) == []


def test_default_path_tier_removes_its_own_temp_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with BlockTier(37, 4) as tier:
        folder = os.path.dirname(tier.path)
        assert os.path.basename(folder).startswith("kvlab-tier-") and os.path.getsize(tier.path) == 4 * 37
    assert not os.path.exists(folder)


def test_forgotten_tier_leaves_no_file_behind(tmp_path):
    tier = file_tier(tmp_path)
    tier.put(random_blocks(2, 37))
    del tier  # the weakref finalizer unmaps and deletes
    assert list(tmp_path.iterdir()) == []


# --- misuse of slots -----------------------------------------------------------------------------------
def test_get_or_free_of_a_slot_not_in_use_raises_value_error(make_tier):
    tier = make_tier(capacity_blocks=4)
    slots = tier.put(random_blocks(2, 37))
    unused = next(s for s in range(4) if s not in slots)
    with pytest.raises(ValueError, match=f"\\[{unused}\\]"):
        tier.get([slots[0], unused])
    tier.free(slots[:1])
    with pytest.raises(ValueError, match=f"\\[{slots[0]}\\]"):
        tier.free(slots)  # slots[0] is already free: nothing is freed
    assert (tier.num_used, tier.num_free) == (1, 3)
    with pytest.raises(ValueError, match="twice"):
        tier.free([slots[1], slots[1]])


# --- stats ---------------------------------------------------------------------------------------------
def test_stats_count_blocks_bytes_and_calls(make_tier):
    tier = make_tier(block_bytes=37, capacity_blocks=8)
    slots = tier.put(random_blocks(3, 37)) + tier.put(random_blocks(2, 37))
    tier.get(slots[:4])
    s = tier.stats
    assert isinstance(s, TierStats)
    assert (s.puts, s.blocks_written, s.bytes_written) == (2, 5, 5 * 37)
    assert (s.gets, s.blocks_read, s.bytes_read) == (1, 4, 4 * 37)
    assert s.write_s > 0 and s.read_s > 0
    assert "5 of 8 blocks used" in tier.describe() and tier.kind in tier.describe()


def test_full_disk_at_preallocation_raises_value_error_and_leaves_no_file(tmp_path, monkeypatch):
    def no_space(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(ValueError, match="cannot preallocate 296 bytes.*No space left") as caught:
        file_tier(tmp_path)
    assert list(tmp_path.iterdir()) == []  # at once, while the traceback still holds the half-made tier
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(ValueError, match="No space left") as caught:
        BlockTier(37, 8)  # the temp folder it made goes too
    assert list(tmp_path.iterdir()) == [] and caught.value


def test_a_closed_tier_refuses_put_and_get(make_tier):
    tier = make_tier()
    slots = tier.put(random_blocks(1, 37))
    tier.close()
    with pytest.raises(TierError, match="closed"):
        tier.put(random_blocks(1, 37))
    with pytest.raises(TierError, match="closed"):
        tier.get(slots)
