"""The Triton kernels equal their plain-torch references, and refuse bad inputs with a message naming the value.

On a CPU the kernels run under Triton's interpreter (slow per tile: shapes stay small); with CUDA the same
tests also run compiled on the GPU.
"""
from __future__ import annotations

import os
import re

import pytest
import torch

from kvlab.cache.attention import attend_reference
from kvlab.kernels import (choose_num_splits, decode_bytes, paged_decode_attention, paged_decode_reference,
                           paged_prefill_attention, paged_prefill_reference, store_bytes, store_kv,
                           store_kv_reference)
from kvlab.kernels.paged_decode import MAX_SPLITS, MIN_TOKENS_PER_SPLIT, TARGET_WAVES

CPU_NEEDS_INTERPRETER = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
DEVICES = [
    pytest.param("cpu", id="cpu", marks=pytest.mark.skipif(
        CPU_NEEDS_INTERPRETER, reason="a CUDA machine runs CPU tensors only with TRITON_INTERPRET=1 set before import")),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")),
]
TOLERANCE = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}  # atol = rtol


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    tol = TOLERANCE[expected.dtype]
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual.float(), expected.float(), atol=tol, rtol=tol)


def make_paged(context_lens: list[int], block_size: int, num_kv_heads: int, head_dim: int, dtype=torch.float32,
               device="cpu", spare_blocks: int = 3, unused_entry: int = -1, seed: int = 0):
    """A pool holding the sequences' K/V in shuffled blocks (non-contiguous, non-monotonic tables), a few
    spare blocks, and `unused_entry` in the table entries past each sequence's last block."""
    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-n // block_size) for n in context_lens]
    num_blocks = sum(blocks_per_seq) + spare_blocks
    physical = torch.randperm(num_blocks, generator=gen).tolist()
    table = torch.full((len(context_lens), max(blocks_per_seq) + 1), unused_entry, dtype=torch.int32)
    for b, count in enumerate(blocks_per_seq):
        table[b, :count] = torch.tensor(physical[:count], dtype=torch.int32)
        physical = physical[count:]
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_pool = torch.randn(shape, generator=gen).to(dtype)
    v_pool = torch.randn(shape, generator=gen).to(dtype)
    lens = torch.tensor(context_lens, dtype=torch.int32)
    return k_pool.to(device), v_pool.to(device), table.to(device), lens.to(device)


def random_query(shape, dtype, device, seed: int = 1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype).to(device)


# --- store_kv --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("block_size", [1, 16, 64])
def test_store_kv_matches_reference_and_leaves_skipped_slots_untouched(device, dtype, block_size):
    num_kv_heads, head_dim, num_tokens = 3, 32, 12
    num_blocks = max(2, 32 // block_size)  # at least 32 slots for 12 tokens
    gen = torch.Generator().manual_seed(block_size)
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_pool = torch.randn(shape, generator=gen).to(dtype).to(device)
    v_pool = torch.randn(shape, generator=gen).to(dtype).to(device)
    key = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen).to(dtype).to(device)
    value = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen).to(dtype).to(device)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    slots[[1, 4, 5]] = -1  # padding tokens
    slots = slots.to(device)
    k_before, v_before = k_pool.clone(), v_pool.clone()
    k_expected, v_expected = k_pool.clone(), v_pool.clone()

    store_kv(key, value, k_pool, v_pool, slots)
    store_kv_reference(key, value, k_expected, v_expected, slots)

    assert torch.equal(k_pool, k_expected) and torch.equal(v_pool, v_expected)
    written = torch.zeros(num_blocks * block_size, dtype=torch.bool)
    written[slots[slots >= 0].cpu()] = True
    flat = lambda pool: pool.reshape(-1, num_kv_heads, head_dim).cpu()  # noqa: E731
    assert torch.equal(flat(k_pool)[~written], flat(k_before)[~written])
    assert torch.equal(flat(v_pool)[~written], flat(v_before)[~written])
    assert torch.equal(flat(k_pool)[slots[slots >= 0].cpu()], key[slots >= 0].cpu())


@pytest.mark.parametrize("device", DEVICES)
def test_store_kv_takes_int32_slots_and_strided_key_value(device):
    num_kv_heads, head_dim = 2, 16
    k_pool = torch.zeros(3, 4, num_kv_heads, head_dim, device=device)
    v_pool = torch.zeros_like(k_pool)
    qkv = torch.randn(5, 6, head_dim, device=device)  # a fused projection: K and V are strided views
    key, value = qkv[:, 2:4], qkv[:, 4:6]
    slots = torch.tensor([11, 0, -1, 5, 6], dtype=torch.int32, device=device)
    k_expected, v_expected = k_pool.clone(), v_pool.clone()
    store_kv(key, value, k_pool, v_pool, slots)
    store_kv_reference(key, value, k_expected, v_expected, slots)
    assert torch.equal(k_pool, k_expected) and torch.equal(v_pool, v_expected)


def test_store_kv_with_only_skipped_or_no_tokens_changes_nothing():
    k_pool, v_pool = torch.randn(2, 4, 1, 16), torch.randn(2, 4, 1, 16)
    k_before, v_before = k_pool.clone(), v_pool.clone()
    store_kv(torch.ones(2, 1, 16), torch.ones(2, 1, 16), k_pool, v_pool, torch.tensor([-1, -1]))
    store_kv(torch.ones(0, 1, 16), torch.ones(0, 1, 16), k_pool, v_pool, torch.tensor([], dtype=torch.int64))
    assert torch.equal(k_pool, k_before) and torch.equal(v_pool, v_before)


STORE_ERRORS = {
    "slot past the pool": (dict(slots=[0, 3, 8]), "slot_mapping[2] = 8 is outside the pool of 2 blocks × 4 = 8 slots"),
    "key dtype": (dict(key_dtype=torch.float16), "key dtype torch.float16 differs from the pool dtype torch.float32"),
    "key heads": (dict(key_heads=3), "key must be [num_tokens, 2, 16]"),
    "slot count": (dict(slots=[0, 1]), "slot_mapping has 2 entries but key has 3 tokens"),
    "slot dtype": (dict(slot_dtype=torch.float32), "slot_mapping must be a 1-D int64 tensor"),
    "device": (dict(slot_device="meta"), "slot_mapping is on meta but k_pool is on cpu"),
}


@pytest.mark.parametrize("case", list(STORE_ERRORS), ids=list(STORE_ERRORS))
def test_store_kv_rejects_bad_input_naming_it_and_leaves_the_pool_unchanged(case):
    spec, message = STORE_ERRORS[case]
    k_pool, v_pool = torch.randn(2, 4, 2, 16), torch.randn(2, 4, 2, 16)
    k_before, v_before = k_pool.clone(), v_pool.clone()
    key = torch.randn(3, spec.get("key_heads", 2), 16).to(spec.get("key_dtype", torch.float32))
    slots = torch.tensor(spec.get("slots", [0, 1, 2]), dtype=spec.get("slot_dtype", torch.int64),
                         device=spec.get("slot_device", "cpu"))
    with pytest.raises(ValueError, match=re.escape(message)):
        store_kv(key, key.clone(), k_pool, v_pool, slots)
    assert torch.equal(k_pool, k_before) and torch.equal(v_pool, v_before)


def test_store_bytes_counts_kv_read_and_written():
    assert store_bytes(num_tokens=10, num_kv_heads=3, head_dim=64, elem_size=2) == 2 * 2 * 10 * 3 * 64 * 2 + 8 * 10


# --- paged decode ------------------------------------------------------------------------------------------
RAGGED = [1, 17, 64, 100, 33]  # batch 5: one token, not multiples of the block, exactly a multiple


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("block_size", [1, 16, 64])
@pytest.mark.parametrize("group", [1, 3, 4, 8])
def test_paged_decode_matches_reference_for_block_sizes_and_gqa_groups(device, block_size, group):
    num_kv_heads, head_dim = 2, 32
    k_pool, v_pool, table, lens = make_paged(RAGGED, block_size, num_kv_heads, head_dim, device=device)
    query = random_query((len(RAGGED), num_kv_heads * group, head_dim), torch.float32, device)
    out = paged_decode_attention(query, k_pool, v_pool, table, lens)
    assert_close(out, paged_decode_reference(query, k_pool, v_pool, table, lens))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_paged_decode_matches_reference_in_each_dtype(device, dtype):
    k_pool, v_pool, table, lens = make_paged(RAGGED, 16, 3, 64, dtype=dtype, device=device)  # SmolLM2's heads
    query = random_query((len(RAGGED), 9, 64), dtype, device)
    out = paged_decode_attention(query, k_pool, v_pool, table, lens)
    assert_close(out, paged_decode_reference(query, k_pool, v_pool, table, lens))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("head_dim", [16, 128, 256])
def test_paged_decode_matches_reference_for_head_dims(device, head_dim):
    k_pool, v_pool, table, lens = make_paged([5, 40], 16, 2, head_dim, device=device)
    query = random_query((2, 4, head_dim), torch.float32, device)
    out = paged_decode_attention(query, k_pool, v_pool, table, lens)
    assert_close(out, paged_decode_reference(query, k_pool, v_pool, table, lens))


@pytest.mark.parametrize("device", DEVICES)
def test_paged_decode_mqa_one_kv_head_serves_all_query_heads(device):
    k_pool, v_pool, table, lens = make_paged([23, 70], 16, 1, 64, device=device)
    query = random_query((2, 8, 64), torch.float32, device)
    out = paged_decode_attention(query, k_pool, v_pool, table, lens)
    assert_close(out, paged_decode_reference(query, k_pool, v_pool, table, lens))


@pytest.mark.parametrize("device", DEVICES)
def test_paged_decode_of_a_single_cached_token_returns_its_value(device):
    k_pool, v_pool, table, lens = make_paged([1], 16, 2, 32, device=device)
    query = random_query((1, 4, 32), torch.float32, device)
    out = paged_decode_attention(query, k_pool, v_pool, table, lens)
    value = v_pool[table[0, 0].long(), 0]  # [Hkv, D]: softmax over one key is 1
    assert_close(out[0], value.repeat_interleave(2, dim=0))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_splits", [2, 3, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_split_k_gives_the_same_answer_as_no_split(device, num_splits, dtype):
    # 300 tokens: several tiles per split; 1 and 45 tokens: splits past the end are empty and weigh nothing
    k_pool, v_pool, table, lens = make_paged([1, 300, 45], 4, 2, 32, dtype=dtype, device=device)
    query = random_query((3, 8, 32), dtype, device)
    whole = paged_decode_attention(query, k_pool, v_pool, table, lens, num_splits=1)
    split = paged_decode_attention(query, k_pool, v_pool, table, lens, num_splits=num_splits)
    assert_close(split, whole)
    assert_close(split, paged_decode_reference(query, k_pool, v_pool, table, lens))


@pytest.mark.parametrize("device", DEVICES)
def test_paged_decode_honours_scale_strided_query_and_check_false(device):
    k_pool, v_pool, table, lens = make_paged([9, 50], 8, 2, 32, device=device, unused_entry=10**6)
    query = random_query((2, 1, 12, 32), torch.float32, device)[:, 0, 2:10]  # [2, 8, 32], strided heads
    expected = paged_decode_reference(query, k_pool, v_pool, table, lens, scale=0.3)
    assert_close(paged_decode_attention(query, k_pool, v_pool, table, lens, scale=0.3), expected)
    assert_close(paged_decode_attention(query, k_pool, v_pool, table, lens, scale=0.3, check=False), expected)


def test_choose_num_splits_fills_the_device_several_times_without_short_splits():
    assert choose_num_splits(1, 8, 32768, "cpu") == 1  # CPU / interpreter: never split unless forced
    assert choose_num_splits(128, 8, 32768, "cuda", num_sms=132) == 1  # 1,024 programs: more than 4 waves already
    assert choose_num_splits(64, 8, 32768, "cuda", num_sms=132) == 2  # 512: just short of 4 × 132 = 528
    assert choose_num_splits(32, 8, 32768, "cuda", num_sms=132) == 4  # 256 programs: ×3 for 4 waves, rounded up to 4
    assert choose_num_splits(1, 8, 32768, "cuda", num_sms=132) == 128  # 66 to make 4 waves → 128, 256 tokens each
    assert choose_num_splits(1, 8, 1024, "cuda", num_sms=132) == 4  # no split under 256 tokens
    assert choose_num_splits(1, 8, 1500, "cuda", num_sms=132) == 4  # 5 splits' worth of tokens → 4
    assert choose_num_splits(1, 8, 300, "cuda", num_sms=132) == 1
    assert choose_num_splits(1, 1, 10**6, "cuda", num_sms=132) == 128  # capped


@pytest.mark.parametrize("batch", [1, 2, 4, 8, 16, 32, 64])
@pytest.mark.parametrize("context", [1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072])
@pytest.mark.parametrize("kv_heads", [8, 3])  # Llama-3-8B, SmolLM2
def test_split_counts_on_a_132_sm_gpu_make_several_waves_within_the_limits(batch, context, kv_heads):
    sms = 132
    splits = choose_num_splits(batch, kv_heads, context, "cuda", num_sms=sms)
    programs = batch * kv_heads * splits
    assert splits & (splits - 1) == 0 and 1 <= splits <= MAX_SPLITS  # a power of two: few compiled variants
    assert splits == 1 or context // splits >= MIN_TOKENS_PER_SPLIT  # never a split too short to pay for itself
    limited = splits == MAX_SPLITS or 2 * splits * MIN_TOKENS_PER_SPLIT > context  # the next doubling is too short
    assert programs >= TARGET_WAVES * sms or limited, (batch, context, splits)  # several waves, or as many as allowed
    assert splits == 1 or batch * kv_heads * splits // 2 < TARGET_WAVES * sms  # and no more splits than that needs


def test_decode_autotune_key_follows_the_context_by_doublings():
    from kvlab.kernels.paged_decode import _decode_launcher, context_bucket
    from kvlab.kernels.quant_decode import _launcher as quant_launcher

    assert "CONTEXT_BUCKET" in _decode_launcher.key and "CONTEXT_BUCKET" in quant_launcher.key
    assert [context_bucket(n) for n in (1, 1000, 1024, 1025, 131072)] == [1, 1024, 1024, 2048, 131072]


def test_decode_bytes_counts_kv_query_output_and_tables():
    # K+V: 2·(10+20)·2·64·2 = 15360; query + output: 2·2·8·64·2 = 4096; table entries (1 + 2)·4 + lens 2·4 = 20
    assert decode_bytes(2, 8, 2, 64, [10, 20], 2, block_size=16) == 15360 + 4096 + 20
    # One more cached token adds SmolLM2's K/V bytes per token per layer: 2 · 3 heads · 64 · 2 B = 768
    assert decode_bytes(1, 9, 3, 64, [34], 2) - decode_bytes(1, 9, 3, 64, [33], 2) == 768
    assert decode_bytes(1, 9, 3, 64, torch.tensor([33]), 2) == decode_bytes(1, 9, 3, 64, [33], 2)


def _decode_inputs(**change):
    """Valid decode inputs (batch 3, Hq 4, Hkv 2, D 16, block 4, 10 blocks), with some entries replaced."""
    k_pool, v_pool, table, lens = make_paged([3, 9, 5], 4, 2, 16, spare_blocks=4)
    args = dict(query=torch.randn(3, 4, 16), k_pool=k_pool, v_pool=v_pool, block_tables=table, context_lens=lens)
    args.update({name: fn(args) for name, fn in change.items()})
    return args


def _with(tensor, index, value):
    tensor = tensor.clone()
    tensor[index] = value
    return tensor


DECODE_ERRORS = {
    "head_dim": (dict(k_pool=lambda a: torch.randn(10, 4, 2, 48), v_pool=lambda a: torch.randn(10, 4, 2, 48),
                      query=lambda a: torch.randn(3, 4, 48)), "head_dim 48 is not supported"),
    "block_size": (dict(k_pool=lambda a: torch.randn(10, 12, 2, 16), v_pool=lambda a: torch.randn(10, 12, 2, 16)),
                   "block_size 12 must be a power of two between 1 and 256"),
    "block_size too big": (dict(k_pool=lambda a: torch.randn(1, 512, 2, 16), v_pool=lambda a: torch.randn(1, 512, 2, 16)),
                           "block_size 512 must be a power of two"),
    "dtype": (dict(query=lambda a: a["query"].half()),
              "query dtype torch.float16 differs from the pool dtype torch.float32"),
    "v_pool dtype": (dict(v_pool=lambda a: a["v_pool"].bfloat16()),
                     "v_pool dtype torch.bfloat16 differs from k_pool dtype torch.float32"),
    "device": (dict(block_tables=lambda a: a["block_tables"].to("meta")), "block_tables is on meta but query is on cpu"),
    "heads": (dict(query=lambda a: torch.randn(3, 5, 16)), "num_q_heads 5 is not a multiple of num_kv_heads 2"),
    "batch": (dict(block_tables=lambda a: a["block_tables"][:2]), "block_tables has 2 rows but query has batch 3"),
    "lens batch": (dict(context_lens=lambda a: a["context_lens"][:2]), "context_lens has 2 entries but query has batch 3"),
    "empty context": (dict(context_lens=lambda a: _with(a["context_lens"], 1, 0)), "context_lens[1] = 0 must be at least 1"),
    "context past the table": (dict(context_lens=lambda a: _with(a["context_lens"], 2, 20)),
                               "context_lens[2] = 20 needs 5 blocks of 4 tokens but block_tables has only 4 columns"),
    "block past the pool": (dict(block_tables=lambda a: _with(a["block_tables"], (1, 2), 57)),
                            "block_tables[1, 2] = 57 is outside the pool of 10 blocks"),
    "negative block": (dict(block_tables=lambda a: _with(a["block_tables"], (0, 0), -1)),
                       "block_tables[0, 0] = -1 is outside the pool of 10 blocks"),
    "table dtype": (dict(block_tables=lambda a: a["block_tables"].float()), "block_tables must be a 2-D int32 tensor"),
}


@pytest.mark.parametrize("case", list(DECODE_ERRORS), ids=list(DECODE_ERRORS))
def test_paged_decode_rejects_bad_input_naming_the_value(case):
    change, message = DECODE_ERRORS[case]
    args = _decode_inputs(**change)
    k_before, v_before = args["k_pool"].clone(), args["v_pool"].clone()
    with pytest.raises(ValueError, match=re.escape(message)):
        paged_decode_attention(**args)
    assert torch.equal(args["k_pool"], k_before) and torch.equal(args["v_pool"], v_before)


@pytest.mark.parametrize("num_splits", [0, -2, 1.5])
def test_paged_decode_rejects_a_bad_num_splits(num_splits):
    with pytest.raises(ValueError, match=re.escape(f"num_splits = {num_splits}")):
        paged_decode_attention(**_decode_inputs(), num_splits=num_splits)


def test_unused_block_table_entries_are_never_validated_nor_read():
    k_pool, v_pool, table, lens = make_paged([3, 9, 5], 4, 2, 16, unused_entry=-(2**31))
    query = torch.randn(3, 4, 16)
    assert_close(paged_decode_attention(query, k_pool, v_pool, table, lens),
                 paged_decode_reference(query, k_pool, v_pool, table, lens))


# --- paged prefill -----------------------------------------------------------------------------------------
def _prefill_case(context_lens, q_lens, block_size, num_kv_heads, group, head_dim, dtype, device, max_new=None):
    k_pool, v_pool, table, lens = make_paged(context_lens, block_size, num_kv_heads, head_dim, dtype=dtype, device=device)
    max_new = max_new or max(q_lens)
    query = random_query((len(context_lens), max_new, num_kv_heads * group, head_dim), dtype, device)
    q_lens = torch.tensor(q_lens, dtype=torch.int32, device=device)
    return query, k_pool, v_pool, table, lens, q_lens


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("block_size", [1, 16, 64])
@pytest.mark.parametrize("group", [1, 3, 8])
def test_paged_prefill_matches_reference_for_whole_prompts_and_chunks(device, block_size, group):
    # a whole prompt (q_len = context), a chunk after cached tokens, a single token, a prompt of one token;
    # 45 new tokens span several query tiles for every group size
    args = _prefill_case([45, 70, 30, 1], [45, 13, 1, 1], block_size, 2, group, 32, torch.float32, device)
    out = paged_prefill_attention(*args)
    assert_close(out, paged_prefill_reference(*args))
    q_lens = args[-1]
    for b, n in enumerate(q_lens.tolist()):
        assert not out[b, n:].any()  # padding rows are zero


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_paged_prefill_matches_reference_in_half_precision(device, dtype):
    args = _prefill_case([33, 18], [33, 7], 16, 3, 3, 64, dtype, device)
    assert_close(paged_prefill_attention(*args), paged_prefill_reference(*args))


@pytest.mark.parametrize("device", DEVICES)
def test_paged_prefill_of_one_token_equals_paged_decode(device):
    query, k_pool, v_pool, table, lens, q_lens = _prefill_case([1, 17, 64], [1, 1, 1], 16, 2, 4, 32, torch.float32, device)
    assert_close(paged_prefill_attention(query, k_pool, v_pool, table, lens, q_lens)[:, 0],
                 paged_decode_attention(query[:, 0], k_pool, v_pool, table, lens))


def test_paged_prefill_reference_agrees_with_the_caches_attention_reference():
    query, k_pool, v_pool, table, lens, q_lens = _prefill_case([20, 12], [6, 12], 4, 2, 3, 16, torch.float32, "cpu")
    k = k_pool[table.clamp(min=0).long()].flatten(1, 2)  # [B, max_blocks · block_size, Hkv, D] in logical order
    v = v_pool[table.clamp(min=0).long()].flatten(1, 2)
    positions = (lens - q_lens)[:, None] + torch.arange(query.shape[1])[None, :]  # [B, T]
    expected = attend_reference(query, k, v, positions, lens)
    ours = paged_prefill_reference(query, k_pool, v_pool, table, lens, q_lens)
    for b, n in enumerate(q_lens.tolist()):
        assert_close(ours[b, :n], expected[b, :n])


@pytest.mark.parametrize("q_lens, message", [([4, 3], "q_lens[1] = 3 exceeds context_lens[1] = 2"),
                                             ([0, 1], "q_lens[0] = 0 must be between 1 and the query's 4 rows"),
                                             ([6, 1], "q_lens[0] = 6 must be between 1 and the query's 4 rows")])
def test_paged_prefill_rejects_bad_q_lens_naming_the_value(q_lens, message):
    query, k_pool, v_pool, table, lens, _ = _prefill_case([8, 2], [4, 2], 4, 1, 2, 16, torch.float32, "cpu")
    with pytest.raises(ValueError, match=re.escape(message)):
        paged_prefill_attention(query, k_pool, v_pool, table, lens, torch.tensor(q_lens, dtype=torch.int32))


def test_cpu_tensors_without_the_interpreter_get_a_clear_error(monkeypatch):
    from kvlab.kernels._common import interpreting

    monkeypatch.setenv("TRITON_INTERPRET", "0")  # what a CUDA machine has
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        interpreting(torch.device("cpu"))
