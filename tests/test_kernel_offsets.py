"""The kernels address past 2³¹ elements: pools, queries and inputs whose far elements lie beyond int32 offsets.

Triton multiplies two int32 values in int32 and wraps silently; its interpreter wraps the same way (the first
test shows it), so these CPU tests fail if a kernel computes such an offset in int32 (kernels/_common: the
outer index is made int64 before it multiplies a stride).

Each big tensor is a view 2³¹ elements into a buffer of just over 2³² (torch.empty: virtual memory, only the
pages a test writes or reads are ever backed — the test checks the process grew by < 1 GB), so an offset that
wraps lands inside the buffer, on zeros, and the result is wrong instead of a crash (under strict overcommit,
vm.overcommit_memory=2, such a buffer is refused: the test skips, saying so). What this proves: the
offsets the interpreter computes from each kernel's source are right at these sizes; the compiled code is the
same arithmetic (kvlab.kernels.aot checks in the TTIR that every outer stride is widened to int64 there).
"""
from __future__ import annotations

import pytest
import torch

import kvlab  # noqa: F401, I001  (switches Triton's interpreter on before anything imports triton)
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from kvlab.cache.quantization import make_scheme
from kvlab.cache.quantized import QuantizedPool
from kvlab.kernels import (paged_decode_attention, paged_decode_reference, paged_prefill_attention,
                           paged_prefill_reference, store_kv)
from kvlab.kernels.paged_decode import combine_splits
from kvlab.kernels.quant_decode import quant_decode_attention, quant_decode_reference
from kvlab.kernels.quant_store import (quantize_key_blocks, quantize_key_blocks_reference, quantize_store,
                                       quantize_store_reference)

WRAP = 2 ** 31
HEADS, DIM, BLOCK = 1, 16, 16  # a block of 256 elements: the pool passes 2³¹ elements at block 2²³


def past_int32(shape: tuple[int, ...], strides: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A view with `shape` and `strides` placed 2³¹ elements into an unwritten buffer (see the module doc)."""
    span = 1 + sum((n - 1) * s for n, s in zip(shape, strides))
    assert span > WRAP and all(s < WRAP for s in strides), "the test needs offsets, not strides, past 2³¹"
    try:
        buffer = torch.empty(WRAP + span, dtype=dtype)
    except RuntimeError as error:  # vm.overcommit_memory=2 (strict) refuses even pages that are never touched
        gib = (WRAP + span) * dtype.itemsize / 2 ** 30
        pytest.skip(f"this machine will not reserve {gib:.1f} GiB of virtual memory (strict overcommit?) for a "
                    f"view past 2³¹ elements: {str(error).splitlines()[0]}")
    return buffer.as_strided(shape, strides, WRAP)


def pool_past_int32(dtype: torch.dtype, row: int = DIM) -> torch.Tensor:
    """[num_blocks, BLOCK, HEADS, row], contiguous, with its last blocks past 2³¹ elements."""
    num_blocks = WRAP // (BLOCK * HEADS * row) + 4
    return past_int32((num_blocks, BLOCK, HEADS, row), (BLOCK * HEADS * row, HEADS * row, row, 1), dtype)


def rows_past_int32(rows: int, *inner: int, dtype: torch.dtype) -> torch.Tensor:
    """[rows, *inner] with rows 2³⁰ elements apart: row 2 starts at 2³¹ (the stride itself still fits int32)."""
    inner_strides = [1]
    for n in reversed(inner[1:]):
        inner_strides.insert(0, inner_strides[0] * n)
    return past_int32((rows, *inner), (2 ** 30, *inner_strides), dtype)


def resident_mb() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmRSS"))


@pytest.fixture(autouse=True)
def stays_virtual():
    before = resident_mb()
    yield
    assert resident_mb() - before < 1024, "a test touched most of its multi-GB buffer"


def far_blocks(pool: torch.Tensor) -> torch.Tensor:
    """A block table row mixing blocks past 2³¹ elements with low ones."""
    n = pool.shape[0]
    return torch.tensor([n - 1, 3, n - 2, n - 4], dtype=torch.int32)


def test_the_interpreter_wraps_int32_products_as_the_gpu_does():
    @triton.jit
    def product(out_ptr, stride):
        pid = tl.program_id(0)
        tl.store(out_ptr + pid, (pid * stride).to(tl.int64))

    out = torch.zeros(3, dtype=torch.int64)
    product[(3,)](out, 2 ** 30)
    assert out.tolist() == [0, 2 ** 30, -(2 ** 31)]  # 2 × 2³⁰ wrapped: what the tests below would see


def test_a_machine_that_will_not_reserve_the_buffer_skips_naming_why(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:119] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(torch, "empty", refuse)
    with pytest.raises(pytest.skip.Exception, match=r"8\.0 GiB of virtual memory \(strict overcommit\?\).*can't"):
        rows_past_int32(3, HEADS, DIM, dtype=torch.float16)


def test_store_kv_writes_slots_and_reads_tokens_past_2_31_elements():
    k_pool, v_pool = pool_past_int32(torch.float16), pool_past_int32(torch.float16)
    key = rows_past_int32(3, HEADS, DIM, dtype=torch.float16)
    key.copy_(torch.randn(key.shape, generator=torch.Generator().manual_seed(0)).half())
    value = -key.contiguous()
    n = k_pool.shape[0]
    slots = torch.tensor([(n - 1) * BLOCK + 3, 5, (n - 2) * BLOCK], dtype=torch.int32)  # int32: the kernel widens
    store_kv(key, value, k_pool, v_pool, slots)
    assert torch.equal(k_pool.view(-1, HEADS, DIM)[slots], key)
    assert torch.equal(v_pool.view(-1, HEADS, DIM)[slots], value)


def test_paged_decode_reads_blocks_and_queries_past_2_31_elements():
    g = torch.Generator().manual_seed(1)
    k_pool, v_pool = pool_past_int32(torch.float16), pool_past_int32(torch.float16)
    table = far_blocks(k_pool)[None].repeat(3, 1)  # [3, 4]
    for pool in (k_pool, v_pool):
        pool[table[0].long()] = torch.randn(4, BLOCK, HEADS, DIM, generator=g).half()
    query = rows_past_int32(3, 2, DIM, dtype=torch.float16)  # 2 query heads per KV head
    query.copy_(torch.randn(query.shape, generator=g).half())
    lens = torch.tensor([60, 64, 50], dtype=torch.int32)
    out = paged_decode_attention(query, k_pool, v_pool, table, lens)
    expected = paged_decode_reference(query, k_pool, v_pool, table, lens)
    torch.testing.assert_close(out, expected, atol=2e-3, rtol=2e-3)


def test_split_combine_writes_outputs_past_2_31_elements():
    g = torch.Generator().manual_seed(5)
    partial = torch.randn(3, 2, 4, DIM, generator=g)  # [rows, Hq, splits, D] fp32, as split_scratch makes it
    lse = torch.randn(3, 2, 4, generator=g)
    lse[1, :, 3] = float("-inf")  # a split that saw nothing
    out = rows_past_int32(3, 2, DIM, dtype=torch.float16)  # row 2 × its stride past 2³¹
    combine_splits(partial, lse, out)
    weights = torch.exp2(lse - lse.amax(-1, keepdim=True))
    expected = (weights[..., None] * partial).sum(2) / weights.sum(-1)[..., None]
    torch.testing.assert_close(out.float(), expected, atol=2e-3, rtol=2e-3)


def test_paged_prefill_reads_blocks_and_queries_past_2_31_elements():
    g = torch.Generator().manual_seed(2)
    k_pool, v_pool = pool_past_int32(torch.float16), pool_past_int32(torch.float16)
    table = far_blocks(k_pool)[None].repeat(3, 1)
    for pool in (k_pool, v_pool):
        pool[table[0].long()] = torch.randn(4, BLOCK, HEADS, DIM, generator=g).half()
    query = rows_past_int32(3, 8, 2, DIM, dtype=torch.float16)  # [B, new tokens, Hq, D]
    query.copy_(torch.randn(query.shape, generator=g).half())
    lens, new = torch.tensor([60, 64, 40], dtype=torch.int32), torch.tensor([8, 5, 8], dtype=torch.int32)
    out = paged_prefill_attention(query, k_pool, v_pool, table, lens, new)
    expected = paged_prefill_reference(query, k_pool, v_pool, table, lens, new)
    torch.testing.assert_close(out, expected, atol=2e-3, rtol=2e-3)


def quantized_pool_past_int32(scheme) -> QuantizedPool:
    """int8 codes past 2³¹ bytes; the scales (1 per token: 16× fewer elements) stay below."""
    k_codes, v_codes = pool_past_int32(torch.int8), pool_past_int32(torch.int8)
    scales = (k_codes.shape[0], BLOCK, HEADS, scheme.num_groups)
    return QuantizedPool(k_codes, torch.empty(scales, dtype=torch.float16), None,
                         v_codes, torch.empty(scales, dtype=torch.float16), None, None, None)


def test_quantized_store_and_decode_address_codes_and_rows_past_2_31():
    g = torch.Generator().manual_seed(3)
    scheme = make_scheme("int8", DIM)
    pool = quantized_pool_past_int32(scheme)
    blocks = far_blocks(pool.k_codes)
    slots = (blocks[:, None] * BLOCK + torch.arange(BLOCK, dtype=torch.int32)).reshape(-1)  # the 4 blocks, int32
    x = torch.randn(slots.numel(), HEADS, DIM, generator=g)
    quantize_store(scheme, x, pool.k_codes, pool.k_scale, None, slots)  # slots × block stride past 2³¹
    quantize_store(scheme, -x, pool.v_codes, pool.v_scale, None, slots)
    far_x = rows_past_int32(3, HEADS, DIM, dtype=torch.float16)  # token 2 × its stride past 2³¹
    far_x.copy_(torch.randn(far_x.shape, generator=g).half())
    far_slots = torch.tensor([8, 9, 10], dtype=torch.int64)  # block 0, clear of the 4 blocks
    quantize_store(scheme, far_x, pool.k_codes, pool.k_scale, None, far_slots)

    inputs, targets = torch.cat([x, far_x.float()]), torch.cat([slots.long(), far_slots])
    codes = torch.empty(inputs.shape[0], 1, HEADS, DIM, dtype=torch.int8)
    scale = torch.empty(inputs.shape[0], 1, HEADS, 1, dtype=torch.float16)
    quantize_store_reference(scheme, inputs, codes, scale, None, torch.arange(inputs.shape[0]))
    assert torch.equal(pool.k_codes.view(-1, HEADS, DIM)[targets], codes[:, 0])
    assert torch.equal(pool.k_scale.view(-1, HEADS, 1)[targets], scale[:, 0])

    rows = rows_past_int32(3, 2, DIM, dtype=torch.float16)  # query rows; row 2 past 2³¹
    rows.copy_(torch.randn(rows.shape, generator=g).half())
    seq, ctx = torch.zeros(3, dtype=torch.int32), torch.tensor([64, 40, 57], dtype=torch.int32)
    args = (scheme, rows, pool, blocks[None], seq, ctx, ctx, torch.zeros(3, dtype=torch.int32))
    torch.testing.assert_close(quant_decode_attention(*args), quant_decode_reference(*args), atol=2e-3, rtol=2e-3)


def test_kivi2_key_blocks_write_codes_and_read_keys_past_2_31():
    g = torch.Generator().manual_seed(4)
    scheme = make_scheme("kivi2", DIM)
    codes = pool_past_int32(torch.uint8, row=scheme.code_bytes)  # 4 bytes a token: 2²⁵ blocks
    num_blocks = codes.shape[0]
    scale = torch.empty(num_blocks, HEADS, DIM, dtype=torch.float16)
    minimum = torch.empty(num_blocks, HEADS, DIM, dtype=torch.float16)
    keys = past_int32((9 * BLOCK, HEADS, DIM), (2 ** 24, DIM, 1), torch.float16)  # rows 128 … 143 past 2³¹
    keys.copy_(torch.randn(keys.shape, generator=g).half())
    blocks = torch.tensor([num_blocks - 1, 2, num_blocks - 3], dtype=torch.int32)
    first_rows = torch.tensor([128, 0, 16], dtype=torch.int32)
    quantize_key_blocks(scheme, keys, codes, scale, minimum, blocks, first_rows)
    expected = [torch.empty(3, *t.shape[1:], dtype=t.dtype) for t in (codes, scale, minimum)]
    quantize_key_blocks_reference(scheme, keys.contiguous(), *expected, torch.arange(3), first_rows)
    for got, want in zip((codes, scale, minimum), expected):
        assert torch.equal(got[blocks.long()], want)


def test_kivi2_decode_reads_staged_rows_past_2_31_elements():
    """One split and nothing quantized yet (full = 0): each row reads only its own staged tokens, from
    rows_recent on, 2³⁰ elements apart — staged token 2 past 2³¹."""
    g = torch.Generator().manual_seed(6)
    scheme = make_scheme("kivi2", DIM)
    pool = QuantizedPool.zeros(scheme, 2, BLOCK, HEADS, "cpu")
    stage_k, stage_v = [past_int32((3, HEADS, DIM), (2 ** 30, DIM, 1), torch.float16) for _ in range(2)]
    for stage in (stage_k, stage_v):
        stage.copy_(torch.randn(stage.shape, generator=g).half())
    rows_q = torch.randn(2, 2, DIM, generator=g).half()  # 2 query heads on the one KV head
    table = torch.zeros(1, 1, dtype=torch.int32)
    seq, ctx = torch.zeros(2, dtype=torch.int32), torch.tensor([3, 1], dtype=torch.int32)
    full, recent = torch.zeros(2, dtype=torch.int32), torch.tensor([0, 2], dtype=torch.int32)
    args = (scheme, rows_q, pool, table, seq, ctx, full, recent, stage_k, stage_v)
    out = quant_decode_attention(*args, num_splits=1)
    torch.testing.assert_close(out, quant_decode_reference(*args), atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(out[1].float(), stage_v[2].float().expand(2, DIM), atol=2e-3, rtol=2e-3)
