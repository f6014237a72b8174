"""The quantized KV kernels (kernels/quant_store.py, kernels/quant_decode.py) equal their plain-torch references,
and the decode result is close to full-precision attention over the original K/V.

CPU tensors: the kernels run under Triton's interpreter (~5 ms per program × tile), so every shape is small; with
CUDA the kernel tests also run compiled on the GPU (`-k cuda`, as `make gpu-check` does), against the same
references on the same device.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import pytest
import torch

import kvlab  # noqa: F401  (switches Triton's interpreter on before kvlab.kernels imports triton)
from kvlab.cache.quantization import make_scheme, quantize_tokens, roundtrip_error_bound, supports_float8
from kvlab.cache.quantized import QuantizedPool
from kvlab.kernels.quant_decode import (dequantize_sequence, quant_decode_attention, quant_decode_bytes,
                                        quant_decode_reference)
from kvlab.kernels.quant_store import (quantize_key_blocks, quantize_key_blocks_reference, quantize_store,
                                       quantize_store_reference)

SCHEMES = ["int8", "fp8", "int4", "kivi2"]
ATOL = 1e-5  # kernel vs reference, fp32
CPU_NEEDS_INTERPRETER = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
DEVICES = [  # as tests/test_kernels.py
    pytest.param("cpu", id="cpu", marks=pytest.mark.skipif(CPU_NEEDS_INTERPRETER, reason=(
        "a CUDA machine runs CPU tensors only with TRITON_INTERPRET=1 set before import"))),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")),
]


def scheme_on(device: str, name: str, head_dim: int, group: int | None = None):
    """make_scheme for `device`; fp8 on a GPU without float8 (compute capability < 8.9) skips the test."""
    if not supports_float8(device) and name == "fp8":
        pytest.skip(f"fp8 needs CUDA compute capability ≥ 8.9; {device} has "
                    f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))}")
    return make_scheme(name, head_dim, group, device=device)


def schemes_on(device: str) -> list[str]:
    return [name for name in SCHEMES if name != "fp8" or supports_float8(device)]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def bits_of(t: torch.Tensor) -> torch.Tensor:
    """Raw bytes, so that fp8 codes (and their NaN patterns) compare bit for bit."""
    return t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t


def make_pool(scheme, num_blocks: int, block_size: int, heads: int, seed: int | None = None,
              device: str = "cpu") -> QuantizedPool:
    """A pool of the scheme's layout on `device`; with a seed, filled with random bytes (to see what a kernel leaves
    alone)."""
    codes = (num_blocks, block_size, heads, scheme.code_bytes)
    per_token = (num_blocks, block_size, heads, scheme.num_groups)
    key_scales = (num_blocks, heads, scheme.head_dim) if scheme.keys_per_channel else per_token
    g = gen(seed) if seed is not None else None

    def codes_tensor():
        if g is None:
            return torch.zeros(codes, dtype=scheme.code_dtype, device=device)
        raw = torch.randint(0, 256, codes, generator=g, dtype=torch.uint8)
        return (raw.view(scheme.code_dtype) if scheme.code_dtype != torch.uint8 else raw).to(device)

    def scales(shape):
        if g is None:
            return torch.zeros(shape, dtype=torch.float16, device=device)
        return torch.rand(shape, generator=g).add(0.5).to(torch.float16).to(device)

    return QuantizedPool(codes_tensor(), scales(key_scales), None if scheme.symmetric else scales(key_scales),
                         codes_tensor(), scales(per_token), None if scheme.symmetric else scales(per_token), None, None)


def clone_pool(pool: QuantizedPool) -> QuantizedPool:
    tensors = (pool.k_codes, pool.k_scale, pool.k_min, pool.v_codes, pool.v_scale, pool.v_min)
    return QuantizedPool(*[None if t is None else t.clone() for t in tensors], None, None)


def adversarial_rows(n: int, heads: int, dim: int, seed: int) -> torch.Tensor:
    """n token rows: an outlier, zeros, all-equal positive and negative, values near float16's limit, random."""
    x = torch.randn(n, heads, dim, generator=gen(seed))
    special = [None] * 5
    special[0] = torch.randn(heads, dim, generator=gen(seed + 1))
    special[0][:, 3] = 500.0
    special[1] = torch.zeros(heads, dim)
    special[2] = torch.full((heads, dim), 0.37)
    special[3] = torch.full((heads, dim), -2.71)
    special[4] = torch.randn(heads, dim, generator=gen(seed + 2)).sign() * 6e4
    for i in range(min(n, 5)):
        x[i] = special[i]
    return x


# --- quantize_store --------------------------------------------------------------------------------------
STORE_CASES = [("int8", 64, None), ("int8", 32, 8), ("fp8", 64, None), ("fp8", 32, 8), ("int4", 64, 32),
               ("int4", 32, 8), ("kivi2", 64, 32), ("kivi2", 32, 16),
               ("int4", 64, 64), ("kivi2", 32, 32)]  # one group a head: the packed branch pads the groups to 2


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,head_dim,group", STORE_CASES, ids=[f"{n}-d{d}-g{g}" for n, d, g in STORE_CASES])
def test_store_kernel_writes_the_reference_codes_and_scales_bit_for_bit_and_skips_padding(device, name, head_dim,
                                                                                          group):
    scheme = scheme_on(device, name, head_dim, group)
    heads, num_blocks, block_size = 2, 4, 4
    for n, seed in [(7, 0), (1, 10)]:
        x = adversarial_rows(n, heads, head_dim, seed).to(device)
        slots = torch.randperm(num_blocks * block_size, generator=gen(seed))[:n]
        if n > 1:
            slots[5] = -1  # padding: skipped (not written at slot -1 = the pool's last slot)
        a = make_pool(scheme, num_blocks, block_size, heads, seed=seed + 3, device=device)
        before = clone_pool(a)
        b = clone_pool(a)
        quantize_store(scheme, x, a.v_codes, a.v_scale, a.v_min, slots.to(device))
        quantize_store_reference(scheme, x, b.v_codes, b.v_scale, b.v_min, slots.to(device))
        assert torch.equal(bits_of(a.v_codes), bits_of(b.v_codes)), f"codes differ, {n} tokens"
        assert torch.equal(a.v_scale, b.v_scale), f"scales differ, {n} tokens"
        if not scheme.symmetric:
            assert torch.equal(a.v_min, b.v_min), f"minimums differ, {n} tokens"
        written = torch.zeros(num_blocks * block_size, dtype=torch.bool)
        written[slots[slots >= 0]] = True
        for after, old in [(a.v_codes, before.v_codes), (a.v_scale, before.v_scale), (a.v_min, before.v_min)]:
            if after is None:
                continue
            flat, flat_old = after.view(-1, *after.shape[2:]).cpu(), old.view(-1, *old.shape[2:]).cpu()
            flat, flat_old = bits_of(flat), bits_of(flat_old)
            assert torch.equal(flat[~written], flat_old[~written]), "a slot that was not written changed"
            assert not torch.equal(flat[written], flat_old[written]), "the written slots kept their old contents"


@pytest.mark.parametrize("device", DEVICES)
def test_store_kernel_accepts_int32_slots_and_a_non_contiguous_input(device):
    scheme = make_scheme("int4", 32, 16)
    x = torch.randn(2, 5, 32, generator=gen(4)).to(device).transpose(0, 1)  # [5, 2, 32], token stride 32
    slots = torch.tensor([3, -1, 0, 9, 12], dtype=torch.int32, device=device)
    a, b = make_pool(scheme, 4, 4, 2, device=device), make_pool(scheme, 4, 4, 2, device=device)
    quantize_store(scheme, x, a.k_codes, a.k_scale, a.k_min, slots)
    quantize_store_reference(scheme, x, b.k_codes, b.k_scale, b.k_min, slots.long())
    assert torch.equal(a.k_codes, b.k_codes) and torch.equal(a.k_scale, b.k_scale)


@pytest.mark.parametrize("device", DEVICES)
def test_store_kernel_fp8_scales_match_reference_and_fp8_grid_values_are_stored_exactly(device):
    scheme = scheme_on(device, "fp8", 32)
    heads = 2
    x = (torch.randn(7, heads, 32, generator=gen(5)) * 3).to(device)
    slots = torch.tensor([0, 5, -1, 7, 2, 11, 15], device=device)
    a = make_pool(scheme, 4, 4, heads, seed=6, device=device)
    b = clone_pool(a)
    quantize_store(scheme, x, a.k_codes, a.k_scale, a.k_min, slots)
    quantize_store_reference(scheme, x, b.k_codes, b.k_scale, b.k_min, slots)
    assert torch.equal(a.k_scale, b.k_scale)
    # values already on the fp8 grid with absmax 448 (scale exactly 1): no rounding at all, so the codes must be
    # the values themselves — the fp8 store's addressing, independent of any rounding rule
    grid = torch.randint(-120, 120, (7, heads, 32), generator=gen(7)).float().to(torch.float8_e4m3fn).float()
    grid[:, :, 0] = 448.0
    grid = grid.to(device)
    quantize_store(scheme, grid, a.v_codes, a.v_scale, a.v_min, slots)
    quantize_store_reference(scheme, grid, b.v_codes, b.v_scale, b.v_min, slots)
    assert torch.equal(bits_of(a.v_codes), bits_of(b.v_codes)) and torch.equal(a.v_scale, b.v_scale)
    stored = a.v_codes.view(-1, heads, 32)[slots[slots >= 0]].float()
    assert torch.equal(stored, grid[slots >= 0])


@pytest.mark.parametrize("device", DEVICES)
def test_store_kernel_fp8_codes_dequantize_within_the_fp8_bound_and_agree_with_torchs_fp8_cast(device):
    """The stored fp8 codes are real fp8 roundings: within the fp8 round-trip bound, and ≥ 99% equal to torch's
    own float32 → float8_e4m3fn cast (kvlab may differ at exact ties and in fp8's subnormal range)."""
    scheme = scheme_on(device, "fp8", 64)
    heads, n = 2, 40
    x = adversarial_rows(n, heads, 64, seed=8).to(device)
    slots = torch.arange(n, device=device)
    pool = make_pool(scheme, 3, 16, heads, device=device)
    quantize_store(scheme, x, pool.v_codes, pool.v_scale, pool.v_min, slots)
    codes = pool.v_codes.view(-1, heads, 64)[:n]
    scale = pool.v_scale.view(-1, heads, 1)[:n].float()
    y = codes.float() * scale
    assert bool(((y - x).abs() <= roundtrip_error_bound(scheme, x)).all()), "kernel fp8 codes exceed the fp8 bound"
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    torch_cast = (x / safe).clamp(-448, 448).to(torch.float8_e4m3fn)
    same = (bits_of(codes) == bits_of(torch_cast)).float().mean().item()
    assert same >= 0.99, f"only {same:.1%} of fp8 codes equal torch's cast"


@pytest.mark.parametrize("device", DEVICES)
def test_store_kernel_fp8_rounds_124_5_up_to_128(device):
    """Triton 3.9's interpreter casts fp32 → fp8 wrongly when rounding carries into the exponent (124.5 → 64 when
    the exponent is odd: interpreter.py _convert_float ORs the carry into the exponent field); the kernel must
    not depend on that cast."""
    scheme = scheme_on(device, "fp8", 16)
    x = torch.zeros(1, 1, 16)
    x[0, 0, 0] = 448.0  # scale exactly 1
    x[0, 0, 1] = 124.5  # between the e4m3 values 120 and 128, nearer 128
    x[0, 0, 2] = -63.0  # between -60 and -64, nearer -64
    pool = make_pool(scheme, 1, 1, 1, device=device)
    quantize_store(scheme, x.to(device), pool.v_codes, pool.v_scale, pool.v_min, torch.tensor([0], device=device))
    assert quantize_tokens(scheme, x)[0][0, 0, 1].float().item() == 128.0  # the torch reference
    assert pool.v_codes[0, 0, 0, :3].float().tolist() == [448.0, 128.0, -64.0]


# --- quantize_key_blocks (kivi2 keys, per channel) -------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_key_block_kernel_writes_the_reference_codes_scales_and_minimums_bit_for_bit(device, block_size):
    scheme = make_scheme("kivi2", 32)
    heads, num_blocks = 2, 5
    staged = 3 + 3 * block_size
    keys = torch.randn(staged, heads, 32, generator=gen(block_size))
    keys[:, :, 5] += 40.0  # an outlier channel
    keys[:, :, 6] = 0.37  # a constant channel
    keys[:, :, 7] = 0.0  # a zero channel
    keys[:, 1, 8] = 6e4  # near float16's limit
    keys = keys.to(device)
    blocks = torch.tensor([3, 0, 4], dtype=torch.int32, device=device)
    first_rows = torch.tensor([3, 3 + block_size, 3 + 2 * block_size], dtype=torch.int32, device=device)  # unaligned
    a = make_pool(scheme, num_blocks, block_size, heads, seed=11, device=device)
    before = clone_pool(a)
    b = clone_pool(a)
    quantize_key_blocks(scheme, keys, a.k_codes, a.k_scale, a.k_min, blocks, first_rows)
    quantize_key_blocks_reference(scheme, keys, b.k_codes, b.k_scale, b.k_min, blocks, first_rows)
    assert torch.equal(a.k_codes, b.k_codes)
    assert torch.equal(a.k_scale, b.k_scale)
    assert torch.equal(a.k_min, b.k_min)
    untouched = [1, 2]
    for after, old in [(a.k_codes, before.k_codes), (a.k_scale, before.k_scale), (a.k_min, before.k_min)]:
        assert torch.equal(after[untouched], old[untouched]), "a block that was not sealed changed"
        assert not torch.equal(after[blocks.long()], old[blocks.long()])


# --- quant_decode_attention --------------------------------------------------------------------------------
@dataclass
class DecodeCase:
    scheme: object
    pool: QuantizedPool
    rows_q: torch.Tensor
    tables: torch.Tensor
    rows_seq: torch.Tensor
    rows_ctx: torch.Tensor
    rows_full: torch.Tensor
    rows_recent: torch.Tensor
    stage_k: torch.Tensor | None
    stage_v: torch.Tensor | None
    keys: list  # per sequence, the original full-precision K [L, Hkv, D]
    values: list

    def args(self):
        return (self.scheme, self.rows_q, self.pool, self.tables, self.rows_seq, self.rows_ctx, self.rows_full,
                self.rows_recent, self.stage_k, self.stage_v)

    def to(self, device: str) -> DecodeCase:
        """The kernel's inputs on `device`; the original K/V (full_precision_attention's) stay on the CPU."""
        def moved(t):
            return None if t is None else t.to(device)

        p = self.pool
        pool = QuantizedPool(*map(moved, (p.k_codes, p.k_scale, p.k_min, p.v_codes, p.v_scale, p.v_min)), None, None)
        return replace(self, pool=pool, rows_q=moved(self.rows_q), tables=moved(self.tables),
                       rows_seq=moved(self.rows_seq), rows_ctx=moved(self.rows_ctx), rows_full=moved(self.rows_full),
                       rows_recent=moved(self.rows_recent), stage_k=moved(self.stage_k), stage_v=moved(self.stage_v))


def build_case(name: str, *, num_q_heads: int, num_kv_heads: int, head_dim: int, block_size: int,
               seqs: list[tuple[int, list[int]]], seed: int = 0, group: int | None = None,
               key_offset: float = 0.0, device: str = "cpu") -> DecodeCase:
    """Sequences of length L, each with query rows at the given context lengths (a decode row: [L]; a prefill:
    several). Each sequence's K/V go into shuffled blocks, quantized the way the cache does: every token for
    int8/fp8/int4; for kivi2 the full blocks (keys per channel, values per token), while each row reads the
    tokens of its own, newest block from a staging buffer (with junk rows around, so offsets matter). Built on
    the CPU, then moved to `device`."""
    scheme = scheme_on(device, name, head_dim, group)
    g = gen(seed)
    kivi = scheme.keeps_recent
    blocks_per_seq = [-(-length // block_size) for length, _ in seqs]
    num_blocks = sum(blocks_per_seq) + 2
    physical = torch.randperm(num_blocks, generator=g).tolist()
    tables = torch.full((len(seqs), max(blocks_per_seq) + 1), -1, dtype=torch.int32)
    pool = make_pool(scheme, num_blocks, block_size, num_kv_heads, seed=seed + 100)  # garbage where nothing is stored
    keys, values, stage = [], [], []
    rows_seq, rows_ctx, rows_full, rows_recent = [], [], [], []
    stage_len = 0

    def junk(n):
        nonlocal stage_len
        stage.append((torch.full((n, num_kv_heads, head_dim), 50.0), torch.full((n, num_kv_heads, head_dim), 50.0)))
        stage_len += n

    for b, ((length, ctxs), count) in enumerate(zip(seqs, blocks_per_seq)):
        table = physical[:count]
        physical = physical[count:]
        tables[b, :count] = torch.tensor(table, dtype=torch.int32)
        k = torch.randn(length, num_kv_heads, head_dim, generator=g)
        k[..., 1] += key_offset  # an outlier key channel, as real models have
        v = torch.randn(length, num_kv_heads, head_dim, generator=g)
        keys.append(k)
        values.append(v)
        positions = torch.arange(length)
        slots = torch.tensor(table)[positions // block_size] * block_size + positions % block_size
        if not kivi:
            quantize_store_reference(scheme, k, pool.k_codes, pool.k_scale, pool.k_min, slots)
            quantize_store_reference(scheme, v, pool.v_codes, pool.v_scale, pool.v_min, slots)
            for c in ctxs:
                rows_seq.append(b), rows_ctx.append(c), rows_full.append(c), rows_recent.append(0)
            continue
        sealed = length // block_size
        sealed_slots = slots[: sealed * block_size]
        quantize_key_blocks_reference(scheme, k, pool.k_codes, pool.k_scale, pool.k_min,
                                      torch.tensor(table[:sealed], dtype=torch.int32),
                                      torch.arange(sealed, dtype=torch.int32) * block_size)
        quantize_store_reference(scheme, v[: sealed * block_size], pool.v_codes, pool.v_scale, pool.v_min,
                                 sealed_slots)
        fulls = [(c - 1) // block_size * block_size for c in ctxs]
        span_start = min(fulls)
        junk(2)
        offset = stage_len
        stage.append((k[span_start:], v[span_start:]))
        stage_len += length - span_start
        for c, f in zip(ctxs, fulls):
            rows_seq.append(b), rows_ctx.append(c), rows_full.append(f), rows_recent.append(offset + f - span_start)
    if kivi:
        junk(3)
    rows = len(rows_seq)
    rows_q = torch.randn(rows, num_q_heads, head_dim, generator=g)

    def i32(values_):
        return torch.tensor(values_, dtype=torch.int32)

    stage_k = torch.cat([s[0] for s in stage]) if kivi else None
    stage_v = torch.cat([s[1] for s in stage]) if kivi else None
    case = DecodeCase(scheme, pool, rows_q, tables, i32(rows_seq), i32(rows_ctx), i32(rows_full), i32(rows_recent),
                      stage_k, stage_v, keys, values)
    return case.to(device) if device != "cpu" else case


def full_precision_attention(case: DecodeCase) -> torch.Tensor:
    """Plain softmax attention of each row over the original, unquantized K/V [0, ctx) of its sequence."""
    rows_q = case.rows_q.cpu()
    rows, num_q_heads, head_dim = rows_q.shape
    out = torch.empty(rows, num_q_heads, head_dim)
    for r in range(rows):
        seq, ctx = int(case.rows_seq[r]), int(case.rows_ctx[r])
        k, v = case.keys[seq][:ctx], case.values[seq][:ctx]  # [ctx, Hkv, D]
        group = num_q_heads // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,nhd->hn", rows_q[r], k) / math.sqrt(head_dim)
        out[r] = torch.einsum("hn,nhd->hd", scores.softmax(-1), v)
    return out


DECODE_SHAPES = {
    # GQA group 3, D 64, block 16: contexts not multiples of the block, a 1-token context
    "gqa3-d64-bs16-ragged": dict(num_q_heads=6, num_kv_heads=2, head_dim=64, block_size=16,
                                 seqs=[(37, [37]), (1, [1]), (70, [70])]),
    # SmolLM2-like group 9 over one KV head, block size 1
    "group9-hkv1-d32-bs1": dict(num_q_heads=9, num_kv_heads=1, head_dim=32, block_size=1,
                                seqs=[(5, [5]), (23, [23])]),
    # group 9 over 3 KV heads, block 64: a context of exactly one block, one of three tokens
    "group9-hkv3-d64-bs64": dict(num_q_heads=9, num_kv_heads=3, head_dim=64, block_size=64,
                                 seqs=[(130, [130]), (64, [64]), (3, [3])]),
    # MHA (group 1), a prefill as rows of one sequence (ctx 28..37 cross a block edge) next to a decode row
    "mha-d32-bs16-prefill-rows": dict(num_q_heads=2, num_kv_heads=2, head_dim=32, block_size=16,
                                      seqs=[(20, [20]), (37, list(range(28, 38)))]),
    # MQA, D 16, block 128: kivi2 rows read up to 127 staged tokens (more than one interpreter tile of 64)
    "mqa-d16-bs128-long-recent": dict(num_q_heads=4, num_kv_heads=1, head_dim=16, block_size=128,
                                      seqs=[(127, [100, 127]), (200, [200])]),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", SCHEMES)
@pytest.mark.parametrize("shape", list(DECODE_SHAPES))
def test_decode_kernel_equals_reference_with_one_and_three_splits(device, name, shape):
    case = build_case(name, **DECODE_SHAPES[shape], seed=len(shape), device=device)
    expected = quant_decode_reference(*case.args())
    assert torch.isfinite(expected).all()
    for splits in (1, 3):
        out = quant_decode_attention(*case.args(), num_splits=splits)
        assert out.shape == expected.shape and out.dtype == torch.float32
        torch.testing.assert_close(out, expected, atol=ATOL, rtol=ATOL, msg=lambda m: f"num_splits={splits}: {m}")


SMALL_GROUPS = [("int8", 16), ("int4", 8), ("kivi2", 8)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,group", SMALL_GROUPS, ids=[f"{n}-g{g}" for n, g in SMALL_GROUPS])
def test_decode_kernel_equals_reference_with_several_scale_groups_per_head(device, name, group):
    case = build_case(name, num_q_heads=4, num_kv_heads=2, head_dim=32, block_size=4,
                      seqs=[(11, [9, 10, 11]), (6, [6])], seed=31, group=group, device=device)
    assert case.scheme.num_groups == 32 // group
    expected = quant_decode_reference(*case.args(), scale=0.3)
    out = quant_decode_attention(*case.args(), scale=0.3, num_splits=2)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=ATOL)
    assert not torch.allclose(out, quant_decode_reference(*case.args()), atol=1e-3)  # the scale is used


def test_kivi2_decode_cases_include_staged_rows_and_rows_with_nothing_quantized():
    """The kivi2 cases above do exercise the staging buffer: rows with full < ctx, full = 0, offsets > 0."""
    case = build_case("kivi2", **DECODE_SHAPES["mha-d32-bs16-prefill-rows"])
    full, ctx, recent = case.rows_full.tolist(), case.rows_ctx.tolist(), case.rows_recent.tolist()
    assert all(f < c for f, c in zip(full, ctx)) and 16 in full and 32 in full and min(recent) > 0
    short = build_case("kivi2", **DECODE_SHAPES["group9-hkv3-d64-bs64"])
    assert short.rows_full.tolist() == [128, 0, 0]


@pytest.mark.parametrize("device", DEVICES)
def test_kivi2_decode_uses_the_staged_rows_at_rows_recent(device):
    """Moving rows_recent onto the junk rows must change the output: the kernel reads the staging buffer there."""
    case = build_case("kivi2", **DECODE_SHAPES["mha-d32-bs16-prefill-rows"], device=device)
    out = quant_decode_attention(*case.args(), num_splits=1)
    case.rows_recent = torch.zeros_like(case.rows_recent)  # the two junk rows (all 50) and the next ones
    moved = quant_decode_attention(*case.args(), num_splits=1)
    torch.testing.assert_close(moved, quant_decode_reference(*case.args()), atol=ATOL, rtol=ATOL)
    assert (moved - out).abs().amax() > 1.0


@pytest.mark.parametrize("device", DEVICES)
def test_decode_kernel_with_float16_queries_and_staging_matches_reference(device):
    for name in ("int8", "kivi2"):
        case = build_case(name, **DECODE_SHAPES["mha-d32-bs16-prefill-rows"], seed=3, device=device)
        case.rows_q = case.rows_q.half()
        if case.stage_k is not None:
            case.stage_k, case.stage_v = case.stage_k.half(), case.stage_v.half()
        out = quant_decode_attention(*case.args(), num_splits=2)
        expected = quant_decode_reference(*case.args())
        assert out.dtype == torch.float16
        torch.testing.assert_close(out.float(), expected.float(), atol=4e-3, rtol=4e-3)


# tolerance on max |out − full precision| (outputs ~0.4 on average; measured ≈ 0.012, 0.09, 0.2, 0.35..0.6 over
# seeds), ordered by the scheme's precision: a dropped scale, minimum or code offset errs by more than 1
FULL_PRECISION_TOLERANCE = {"int8": 0.02, "fp8": 0.15, "int4": 0.3, "kivi2": 0.8}


@pytest.mark.parametrize("device", DEVICES)
def test_decode_is_close_to_full_precision_attention_with_a_tolerance_ordered_by_scheme(device):
    errors = {}
    for name in schemes_on(device):  # fp8 where the device has float8
        case = build_case(name, **DECODE_SHAPES["gqa3-d64-bs16-ragged"], seed=21, device=device)
        out = quant_decode_attention(*case.args(), num_splits=1).cpu()
        reference = full_precision_attention(case)
        errors[name] = (out - reference).abs().max().item()
        assert errors[name] < FULL_PRECISION_TOLERANCE[name], (name, errors)
    ordered = [errors[name] for name in SCHEMES if name in errors]  # int8 < fp8 < int4 < kivi2
    assert ordered == sorted(ordered) and len(set(ordered)) == len(ordered), errors


def test_dequantize_sequence_recovers_the_stored_tokens_within_the_roundtrip_bound():
    for name in SCHEMES:
        case = build_case(name, **DECODE_SHAPES["gqa3-d64-bs16-ragged"], seed=22)
        for b, (k, v) in enumerate(zip(case.keys, case.values)):
            n = k.shape[0] // 16 * 16 if case.scheme.keeps_recent else k.shape[0]
            if n == 0:
                continue
            dk, dv = dequantize_sequence(case.scheme, case.pool, case.tables[b], n)
            assert dk.shape == dv.shape == (n, 2, 64)
            assert bool(((dv - v[:n]).abs() <= roundtrip_error_bound(case.scheme, v[:n])).all()), (name, "values")
            if case.scheme.keys_per_channel:
                for start in range(0, n, 16):
                    block = k[start: start + 16]
                    bound = roundtrip_error_bound(case.scheme, block, per_channel=True)
                    assert bool(((dk[start: start + 16] - block).abs() <= bound).all()), (name, "keys", start)
            else:
                assert bool(((dk - k[:n]).abs() <= roundtrip_error_bound(case.scheme, k[:n])).all()), (name, "keys")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", SCHEMES)
def test_decode_output_changes_only_for_the_row_whose_block_holds_a_corrupted_scale(device, name):
    """If the kernel read a wrong (or no) scale, corrupting one would not move exactly the row that owns it."""
    case = build_case(name, **DECODE_SHAPES["gqa3-d64-bs16-ragged"], seed=23, device=device)
    before = quant_decode_attention(*case.args(), num_splits=1)
    block = int(case.tables[0, 1])  # sequence 0 (row 0), its second block: tokens 16..31, full for every scheme
    for which in ("v_scale", "k_scale"):
        scales = getattr(case.pool, which)
        saved = scales.clone()
        if scales.dim() == 3:  # kivi2 keys: per channel of the block
            scales[block, 1, :] *= 4
        else:
            scales[block, 5, 1, :] *= 4  # token 21, KV head 1
        after = quant_decode_attention(*case.args(), num_splits=1)
        torch.testing.assert_close(after, quant_decode_reference(*case.args()), atol=ATOL, rtol=ATOL)
        changed = (after - before).abs().amax(dim=-1)  # [rows, Hq]
        assert changed[0, 3:].min() > 1e-4, f"{which}: row 0, heads of KV head 1 did not change"
        assert changed[0, :3].max() == 0, f"{which}: heads of KV head 0 changed"
        assert changed[1:].max() == 0, f"{which}: other sequences changed"
        scales.copy_(saved)


def test_decode_kernel_rejects_mismatched_shapes_naming_them():
    case = build_case("int8", **DECODE_SHAPES["mha-d32-bs16-prefill-rows"])
    with pytest.raises(ValueError, match="num_q_heads 3 is not a multiple of num_kv_heads 2"):
        quant_decode_attention(case.scheme, torch.randn(11, 3, 32), *case.args()[2:])
    with pytest.raises(ValueError, match="rows_ctx must have one entry per query row"):
        quant_decode_attention(case.scheme, case.rows_q, case.pool, case.tables, case.rows_seq, case.rows_ctx[:-1],
                               case.rows_full, case.rows_recent)


# --- bytes -------------------------------------------------------------------------------------------------
def test_quant_decode_bytes_by_hand():
    # int8, D 32: 2·(32 + 2) = 68 B per token and KV head. Contexts 5 and 20, block 16, Hq 2, Hkv 1, fp16:
    # quantized 25·68 = 1700; query + out 2·2·2·32·2 = 512; tables 4·(1 + 2) + 16·2 = 44 → 2256
    assert quant_decode_bytes(make_scheme("int8", 32), 2, 1, [5, 20], 16, 2) == 1700 + 512 + 44
    # kivi2, D 32, group 32, block 16: values 8 + 2·2 = 12, keys 8 + 2·32·2/16 = 16 → 28 per token and head.
    # One row, ctx 20, full 16, Hq 3, Hkv 1, fp16: quantized 16·28 = 448; recent 2·4·32·2 = 512;
    # query + out 2·3·32·2 = 384; tables 4·1 + 16 = 20 → 1364
    assert quant_decode_bytes(make_scheme("kivi2", 32), 3, 1, [20], 16, 2, full_lens=[16]) == 448 + 512 + 384 + 20
    # int4 moves fewer bytes than int8 for the same step
    assert (quant_decode_bytes(make_scheme("int4", 64), 9, 3, [100, 7], 16, 2)
            < quant_decode_bytes(make_scheme("int8", 64), 9, 3, [100, 7], 16, 2))
