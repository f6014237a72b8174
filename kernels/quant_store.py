"""Quantized store: K/V become codes + float16 scales as they are written into the paged pool.

Two kernels, one per way of grouping (the schemes are in kvlab/cache/quantization.py):
* `quantize_store` — per token: one program per (token, KV head) loads its D channels, finds each group's
  absmax (int8, fp8, int4) or min/max (kivi2 values), rounds the scale to float16, computes the codes and packs
  PACK = 8 / bits of them per byte. Padding tokens (slot < 0) are skipped.
* `quantize_key_blocks` — kivi2 keys, per channel: one program per (full block, KV head) loads the block's
  block_size tokens, finds each channel's min/max over them, and writes the block's codes and its per-channel
  scale and minimum.

Bytes they must move: per stored token and head, D·elem read and code_bytes + groups·2 (·2 with minimums)
written; the key-block kernel reads block_size·D·elem and writes block_size·code_bytes + 2·D·2 per block.
"""
from __future__ import annotations

import torch
import triton.language as tl

from kvlab.cache.quantization import FP8_MAX as _FP8_MAX, FP8_MIN_NORMAL as _FP8_MIN_NORMAL, QuantScheme, quantize_channels, quantize_tokens

from ._common import device_guard, jit_pair

KIND_INT, KIND_FP8, KIND_ASYM = 0, 1, 2
FP8_MAX = tl.constexpr(_FP8_MAX)  # constexpr: a kernel may read a global only as a compile-time constant
FP8_MIN_NORMAL = tl.constexpr(_FP8_MIN_NORMAL)
FP16_MAX = tl.constexpr(65504.0)


def kind_of(scheme: QuantScheme) -> int:
    return KIND_FP8 if scheme.name == "fp8" else KIND_INT if scheme.symmetric else KIND_ASYM


@jit_pair
def _quantize_tokens_kernel(
    x_ptr, slots_ptr, codes_ptr, scale_ptr, min_ptr,
    stride_xn, stride_xh,  # x [N, Hkv, D], last dim contiguous
    stride_cb, stride_ct, stride_ch,  # codes [num_blocks, block_size, Hkv, code_bytes]
    stride_sb, stride_st, stride_sh,  # scale (and min) [num_blocks, block_size, Hkv, groups] fp16
    HEAD_DIM: tl.constexpr, GROUP: tl.constexpr, BLOCK_GROUPS: tl.constexpr, BITS: tl.constexpr, KIND: tl.constexpr,
    QMAX: tl.constexpr, LOG2_BLOCK_SIZE: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)  # int64: token × stride and slot × stride can pass 2³¹ (see _common)
    head = tl.program_id(1)
    slot = tl.load(slots_ptr + token).to(tl.int64)
    if slot < 0:  # padding
        return
    block = slot >> LOG2_BLOCK_SIZE
    row = slot & ((1 << LOG2_BLOCK_SIZE) - 1)
    NUM_GROUPS: tl.constexpr = HEAD_DIM // GROUP
    PACK: tl.constexpr = 8 // BITS
    SUB: tl.constexpr = GROUP // PACK  # codes of one group that share a byte are SUB channels apart
    g = tl.arange(0, BLOCK_GROUPS)  # the groups, padded to at least 2 (a one-group head): padding rows masked
    real = g < NUM_GROUPS  # [BLOCK_GROUPS]
    src = x_ptr + token * stride_xn + head * stride_xh
    codes_row = codes_ptr + block * stride_cb + row * stride_ct + head * stride_ch
    scale_row = block * stride_sb + row * stride_st + head * stride_sh + g
    if PACK == 1:  # int8, fp8: [groups, GROUP]
        j = tl.arange(0, GROUP)
        channels = g[:, None] * GROUP + j[None, :]
        x = tl.load(src + channels, mask=real[:, None], other=0.0).to(tl.float32)
        absmax = tl.max(tl.abs(x), 1)  # [groups]; 0 for a padding group
        if KIND == 1:
            scale = tl.minimum(tl.div_rn(absmax, FP8_MAX), FP16_MAX).to(tl.float16).to(tl.float32)
        else:
            scale = tl.minimum(tl.div_rn(absmax, QMAX), FP16_MAX).to(tl.float16).to(tl.float32)
        safe = tl.where(scale > 0, scale, 1.0)
        y = tl.div_rn(x, safe[:, None])
        if KIND == 1:
            # round_to_fp8 (kvlab/cache/quantization.py) spelled out: 3 mantissa bits, ties away from zero
            magnitude = tl.abs(y)
            exponent = ((magnitude.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
            step = (tl.maximum(exponent - 3 + 127, 1) << 23).to(tl.float32, bitcast=True)
            rounded = tl.minimum(tl.floor(tl.div_rn(magnitude, step) + 0.5) * step, FP8_MAX)
            rounded = tl.where(magnitude < FP8_MIN_NORMAL, 0.0, rounded)
            codes = tl.where(y < 0, -rounded, rounded)
        else:
            codes = tl.minimum(tl.maximum(tl.floor(y + 0.5), -QMAX), QMAX)
        tl.store(codes_row + channels, codes.to(codes_ptr.dtype.element_ty), mask=real[:, None])
    else:  # int4, kivi2: [groups, PACK, SUB], the PACK codes of one byte along the middle axis
        i = tl.arange(0, PACK)
        j = tl.arange(0, SUB)
        channels = g[:, None, None] * GROUP + i[None, :, None] * SUB + j[None, None, :]
        x = tl.load(src + channels, mask=real[:, None, None], other=0.0).to(tl.float32)
        if KIND == 0:  # symmetric, code + 8 stored as an unsigned nibble
            absmax = tl.max(tl.max(tl.abs(x), 2), 1)
            scale = tl.minimum(tl.div_rn(absmax, QMAX), FP16_MAX).to(tl.float16).to(tl.float32)
            safe = tl.where(scale > 0, scale, 1.0)
            q = tl.minimum(tl.maximum(tl.floor(tl.div_rn(x, safe[:, None, None]) + 0.5), -QMAX), QMAX) + 8
        else:  # asymmetric: code = round((x - min) / scale) in [0, QMAX]
            low = tl.maximum(tl.min(tl.min(x, 2), 1), -FP16_MAX).to(tl.float16).to(tl.float32)
            high = tl.max(tl.max(x, 2), 1)
            scale = tl.minimum(tl.div_rn(high - low, QMAX), FP16_MAX).to(tl.float16).to(tl.float32)
            safe = tl.where(scale > 0, scale, 1.0)
            q = tl.minimum(tl.maximum(tl.floor(tl.div_rn(x - low[:, None, None], safe[:, None, None]) + 0.5), 0.0), QMAX)
            tl.store(min_ptr + scale_row, low.to(tl.float16), mask=real)
        packed = tl.sum(q.to(tl.int32) << (i * BITS)[None, :, None], 1)  # [groups, SUB]
        tl.store(codes_row + g[:, None] * SUB + j[None, :], packed.to(tl.uint8), mask=real[:, None])
    tl.store(scale_ptr + scale_row, scale.to(tl.float16), mask=real)


@jit_pair
def _quantize_key_blocks_kernel(
    x_ptr, blocks_ptr, first_rows_ptr, codes_ptr, scale_ptr, min_ptr,
    stride_xn, stride_xh,  # staged keys [S, Hkv, D]
    stride_cb, stride_ct, stride_ch,  # codes [num_blocks, block_size, Hkv, D/PACK]
    stride_sb, stride_sh,  # scale, min [num_blocks, Hkv, D] fp16
    HEAD_DIM: tl.constexpr, BITS: tl.constexpr, QMAX: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):
    index = tl.program_id(0)
    head = tl.program_id(1)
    block = tl.load(blocks_ptr + index).to(tl.int64)
    first = tl.load(first_rows_ptr + index).to(tl.int64)
    PACK: tl.constexpr = 8 // BITS
    SUB: tl.constexpr = HEAD_DIM // PACK
    t = tl.arange(0, BLOCK_SIZE)
    j = tl.arange(0, SUB)
    tokens = x_ptr + ((first + t) * stride_xn + head * stride_xh)[:, None]  # [BLOCK_SIZE, 1]
    packed = tl.zeros([BLOCK_SIZE, SUB], tl.int32)
    for i in range(PACK):  # byte position i holds channels i·SUB … (i+1)·SUB − 1: one slice at a time
        x = tl.load(tokens + i * SUB + j[None, :]).to(tl.float32)  # [BLOCK_SIZE, SUB]
        low = tl.maximum(tl.min(x, 0), -FP16_MAX).to(tl.float16).to(tl.float32)  # [SUB] per channel
        scale = tl.minimum(tl.div_rn(tl.max(x, 0) - low, QMAX), FP16_MAX).to(tl.float16).to(tl.float32)
        safe = tl.where(scale > 0, scale, 1.0)
        q = tl.minimum(tl.maximum(tl.floor(tl.div_rn(x - low[None, :], safe[None, :]) + 0.5), 0.0), QMAX)
        packed = packed | (q.to(tl.int32) << (i * BITS))
        per_channel = block * stride_sb + head * stride_sh + i * SUB + j
        tl.store(scale_ptr + per_channel, scale.to(tl.float16))
        tl.store(min_ptr + per_channel, low.to(tl.float16))
    tl.store(codes_ptr + block * stride_cb + head * stride_ch + t[:, None] * stride_ct + j[None, :], packed.to(tl.uint8))


def _check_rows(name: str, x: torch.Tensor, scheme: QuantScheme, codes: torch.Tensor) -> None:
    if x.dim() != 3 or x.shape[-1] != scheme.head_dim or x.shape[1] != codes.shape[2]:
        raise ValueError(f"{name} must be [tokens, {codes.shape[2]}, {scheme.head_dim}], got shape {tuple(x.shape)}")
    if x.device != codes.device:
        raise ValueError(f"{name} is on {x.device} but the pool is on {codes.device}")


def quantize_store(scheme: QuantScheme, x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
                   minimum: torch.Tensor | None, slots: torch.Tensor) -> None:
    """Quantize x [N, Hkv, D] per token and write codes [num_blocks, block_size, Hkv, code_bytes], scale and
    (asymmetric) minimum [num_blocks, block_size, Hkv, groups] at slots [N] (negative = skip). In place."""
    _check_rows("x", x, scheme, codes)
    assert slots.shape == (x.shape[0],) and codes.shape[-1] == scheme.code_bytes
    assert scale.shape[-1] == scheme.num_groups and (minimum is None) == scheme.symmetric
    if x.shape[0] == 0:
        return
    x = x if x.stride(-1) == 1 else x.contiguous()
    block_size = codes.shape[1]
    minimum = scale if minimum is None else minimum  # unused when symmetric
    with device_guard(x.device):
        _quantize_tokens_kernel.for_device(x.device)[(x.shape[0], x.shape[1])](
            x, slots, codes, scale, minimum,
            x.stride(0), x.stride(1),
            codes.stride(0), codes.stride(1), codes.stride(2),
            scale.stride(0), scale.stride(1), scale.stride(2),
            HEAD_DIM=scheme.head_dim, GROUP=scheme.group_size, BLOCK_GROUPS=max(2, scheme.num_groups),
            BITS=scheme.bits, KIND=kind_of(scheme),
            QMAX=float(scheme.qmax), LOG2_BLOCK_SIZE=block_size.bit_length() - 1,
        )


def quantize_store_reference(scheme: QuantScheme, x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
                             minimum: torch.Tensor | None, slots: torch.Tensor) -> None:
    """Plain torch: quantize_tokens, then scatter through flat [num_slots, Hkv, ...] views."""
    keep = slots >= 0
    target = slots[keep].long()
    q, s, m = quantize_tokens(scheme, x[keep])
    codes.view(-1, *codes.shape[2:])[target] = q
    scale.view(-1, *scale.shape[2:])[target] = s
    if minimum is not None:
        minimum.view(-1, *minimum.shape[2:])[target] = m


def quantize_key_blocks(scheme: QuantScheme, keys: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
                        minimum: torch.Tensor, blocks: torch.Tensor, first_rows: torch.Tensor) -> None:
    """kivi2 keys: for each full block blocks[m], quantize keys[first_rows[m] : first_rows[m] + block_size]
    ([S, Hkv, D]) per channel into codes [num_blocks, block_size, Hkv, D/4] and scale, minimum [num_blocks, Hkv, D]."""
    _check_rows("keys", keys, scheme, codes)
    assert scheme.keys_per_channel and blocks.shape == first_rows.shape
    if blocks.numel() == 0:
        return
    keys = keys if keys.stride(-1) == 1 else keys.contiguous()
    with device_guard(keys.device):
        _quantize_key_blocks_kernel.for_device(keys.device)[(blocks.shape[0], keys.shape[1])](
            keys, blocks, first_rows, codes, scale, minimum,
            keys.stride(0), keys.stride(1),
            codes.stride(0), codes.stride(1), codes.stride(2),
            scale.stride(0), scale.stride(1),
            HEAD_DIM=scheme.head_dim, BITS=scheme.bits, QMAX=float(scheme.qmax), BLOCK_SIZE=codes.shape[1],
            num_warps=key_block_warps(codes.shape[1], scheme.head_dim),
        )


def key_block_warps(block_size: int, head_dim: int) -> int:
    """Warps for one block's [block_size, head_dim / PACK] slice: ≤ 64 values a thread (no spills, sm_80 to 256²)."""
    return max(4, min(16, block_size * head_dim // 8192))


def quantize_key_blocks_reference(scheme: QuantScheme, keys: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
                                  minimum: torch.Tensor, blocks: torch.Tensor, first_rows: torch.Tensor) -> None:
    block_size = codes.shape[1]
    for block, first in zip(blocks.tolist(), first_rows.tolist()):
        codes[block], scale[block], minimum[block] = quantize_channels(scheme, keys[first: first + block_size])


def store_bytes(scheme: QuantScheme, num_tokens: int, num_kv_heads: int, elem_size: int) -> int:
    """Bytes the per-token store moves for K and V: D·elem read, codes + scales (+ minimums) written, per token
    and head, plus 8 B of slot per token."""
    groups = scheme.num_groups * 2 * (1 if scheme.symmetric else 2)
    per_head = scheme.head_dim * elem_size + scheme.code_bytes + groups
    return 2 * num_tokens * num_kv_heads * per_head + 8 * num_tokens

