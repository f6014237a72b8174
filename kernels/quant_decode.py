"""Paged decode attention over a quantized pool, dequantizing in registers right after each load.

The paged decode kernel (paged_decode.py) with one change: a K/V tile arrives as codes and float16 scales
and becomes float just before its `tl.dot` — no dequantized copy of the cache exists anywhere. The bytes
saved are the speed-up: decode is bandwidth-bound, so int8 should take about half the bf16 time and int4
about a quarter.

* Unpacking: channel c's code sits in byte `(c // P)·(P / PACK) + c % (P / PACK)` at bit
  `((c % P) // (P / PACK))·bits` (P = the packing group, see kvlab/cache/quantization.py); every channel of a
  tile is one load + shift + mask, no interleaving. Its scale is entry `c // scale_group` of the token's scales
  (kivi2 keys: entry c of the block's per-channel scales, which have token stride 0).
* Rows, not sequences: each program serves one *query row* — a decode token, or one token of a prefill — with
  its own context length, the count `full` of tokens it reads quantized, and (kivi2) where the rest, its own
  still-unquantized block, sits in the full-precision staging buffer. So a prefill is a batch of decode rows
  sharing a block table, and every query sees exactly what it would see at decode time.
* GQA-native (one program per row × KV head, the query group as one tile), online softmax in fp32, split-K
  with the paged kernel's combine: as in paged_decode.py.

Bytes it must move (quant_decode_bytes): per row and KV head, `full`·(code_bytes + scale bytes) for K and V,
plus the kivi2 per-channel key scales once per block, plus (ctx − full)·D·elem of full-precision K and V, plus
the query read and output written (Hq·D·elem each) and the block-table entries (4 B each).
"""
from __future__ import annotations

import math

import torch
import triton.language as tl

from kvlab.cache.quantization import QuantScheme, dequantize_tokens, unpack_codes

from ._common import Launcher, device_guard, dot_flags, jit_pair, next_power_of_2
from .paged_decode import (AUTOTUNE_CONFIGS, INTERPRETER_BLOCK_N, choose_num_splits, combine_splits, context_bucket,
                           split_scratch)
from .quant_store import kind_of


@jit_pair
def _quant_decode_kernel(
    q_ptr, kc_ptr, ks_ptr, km_ptr, vc_ptr, vs_ptr, vm_ptr, rk_ptr, rv_ptr,
    block_tables_ptr, rows_seq_ptr, rows_ctx_ptr, rows_full_ptr, rows_recent_ptr, out_ptr, lse_ptr,
    qk_scale,  # softmax scale × log2(e)
    stride_qr, stride_qh,  # query rows [R, Hq, D]
    stride_cb, stride_ct, stride_ch,  # K and V codes [num_blocks, block_size, Hkv, code_bytes]
    stride_ksb, stride_kst, stride_ksh,  # key scales (and mins): per token [nb, bs, Hkv, groups]; kivi2 [nb, Hkv, D], token stride 0
    stride_vsb, stride_vst, stride_vsh,  # value scales (and mins) [nb, bs, Hkv, groups]
    stride_rn, stride_rh,  # kivi2 staged full-precision K and V [S, Hkv, D]
    stride_tb,  # block_tables [B, max_blocks]
    stride_or, stride_oh, stride_os,  # out [R, Hq, D] or, split, partial out [R, Hq, splits, D] fp32
    stride_lr, stride_lh,  # split only: lse [R, Hq, splits] fp32
    CONTEXT_BUCKET,  # context_bucket(the table's capacity): unused by the code, read by the autotune key
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, LOG2_BLOCK_SIZE: tl.constexpr,
    NUM_SPLITS: tl.constexpr, BITS: tl.constexpr, KIND: tl.constexpr,
    K_SCALE_GROUP: tl.constexpr, V_SCALE_GROUP: tl.constexpr, K_PACK_GROUP: tl.constexpr, V_PACK_GROUP: tl.constexpr,
    HAS_RECENT: tl.constexpr, CAST_TO_FP32: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # int64: row × an outer stride can pass 2³¹ (see _common)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq = tl.load(rows_seq_ptr + row).to(tl.int64)
    context_len = tl.load(rows_ctx_ptr + row)
    full_len = tl.load(rows_full_ptr + row)  # tokens [0, full_len) are read quantized
    num_tiles = tl.cdiv(full_len, BLOCK_N)
    tiles_per_split = tl.cdiv(num_tiles, NUM_SPLITS)
    tile_start = split * tiles_per_split
    tile_end = tl.minimum(tile_start + tiles_per_split, num_tiles)

    PACK: tl.constexpr = 8 // BITS
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_n = tl.arange(0, BLOCK_N)
    k_byte = (offs_d // K_PACK_GROUP) * (K_PACK_GROUP // PACK) + offs_d % (K_PACK_GROUP // PACK)  # [D]
    k_shift = ((offs_d % K_PACK_GROUP) // (K_PACK_GROUP // PACK)) * BITS
    v_byte = (offs_d // V_PACK_GROUP) * (V_PACK_GROUP // PACK) + offs_d % (V_PACK_GROUP // PACK)
    v_shift = ((offs_d % V_PACK_GROUP) // (V_PACK_GROUP // PACK)) * BITS
    k_group = offs_d // K_SCALE_GROUP
    v_group = offs_d // V_SCALE_GROUP
    heads = kv_head * GROUP + offs_g
    group_mask = offs_g < GROUP
    q = tl.load(q_ptr + row * stride_qr + heads[:, None] * stride_qh + offs_d[None, :],
                mask=group_mask[:, None], other=0.0)  # [BLOCK_G, D]
    if CAST_TO_FP32:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
    table_row = block_tables_ptr + seq * stride_tb
    for tile in range(tile_start, tile_end):
        tokens = tile * BLOCK_N + offs_n
        valid = tokens < full_len
        block_ids = tl.load(table_row + (tokens >> LOG2_BLOCK_SIZE), mask=valid, other=0).to(tl.int64)
        rows = tokens & ((1 << LOG2_BLOCK_SIZE) - 1)
        codes_at = kv_head * stride_ch + (block_ids * stride_cb + rows * stride_ct)[:, None]  # [BLOCK_N, 1]
        k_raw = tl.load(kc_ptr + codes_at + k_byte[None, :], mask=valid[:, None])  # [BLOCK_N, D]
        v_raw = tl.load(vc_ptr + codes_at + v_byte[None, :], mask=valid[:, None])  # (no `other`: fp8 has no 0 literal)
        if PACK == 1:  # int8 or fp8 codes; masked rows may hold anything, even an fp8 NaN: zero them
            k = tl.where(valid[:, None], k_raw.to(tl.float32), 0.0)
            v = tl.where(valid[:, None], v_raw.to(tl.float32), 0.0)
        else:
            k = ((k_raw.to(tl.int32) >> k_shift[None, :]) & ((1 << BITS) - 1)).to(tl.float32)
            v = ((v_raw.to(tl.int32) >> v_shift[None, :]) & ((1 << BITS) - 1)).to(tl.float32)
            if KIND == 0:  # symmetric codes are stored + 8
                k = k - 8.0
                v = v - 8.0
        # scales (and minimums): one per token when a group is the whole head — a [BLOCK_N] vector, loaded once;
        # otherwise entry c // group of the token's scales (kivi2 keys: entry c of its block's) per channel
        k_at = kv_head * stride_ksh + block_ids * stride_ksb + rows * stride_kst  # [BLOCK_N]
        v_at = kv_head * stride_vsh + block_ids * stride_vsb + rows * stride_vst
        if K_SCALE_GROUP == HEAD_DIM:
            k = k * tl.load(ks_ptr + k_at, mask=valid, other=0.0).to(tl.float32)[:, None]
            if KIND == 2:
                k = k + tl.load(km_ptr + k_at, mask=valid, other=0.0).to(tl.float32)[:, None]
        else:
            k_at_c = k_at[:, None] + k_group[None, :]  # [BLOCK_N, D]
            k = k * tl.load(ks_ptr + k_at_c, mask=valid[:, None], other=0.0).to(tl.float32)
            if KIND == 2:
                k = k + tl.load(km_ptr + k_at_c, mask=valid[:, None], other=0.0).to(tl.float32)
        if V_SCALE_GROUP == HEAD_DIM:
            v = v * tl.load(vs_ptr + v_at, mask=valid, other=0.0).to(tl.float32)[:, None]
            if KIND == 2:
                v = v + tl.load(vm_ptr + v_at, mask=valid, other=0.0).to(tl.float32)[:, None]
        else:
            v_at_c = v_at[:, None] + v_group[None, :]
            v = v * tl.load(vs_ptr + v_at_c, mask=valid[:, None], other=0.0).to(tl.float32)
            if KIND == 2:
                v = v + tl.load(vm_ptr + v_at_c, mask=valid[:, None], other=0.0).to(tl.float32)
        k = k.to(q.dtype)
        v = v.to(q.dtype)
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [BLOCK_G, BLOCK_N]
        scores = tl.where(valid[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new

    if HAS_RECENT:  # kivi2: the row's own block, full precision, read by the last split
        if split == NUM_SPLITS - 1:
            recent_start = tl.load(rows_recent_ptr + row).to(tl.int64)
            num_recent = context_len - full_len
            for start in range(0, num_recent, BLOCK_N):
                idx = start + offs_n
                valid = idx < num_recent
                at = ((recent_start + idx) * stride_rn + kv_head * stride_rh)[:, None] + offs_d[None, :]
                k = tl.load(rk_ptr + at, mask=valid[:, None], other=0.0)
                v = tl.load(rv_ptr + at, mask=valid[:, None], other=0.0)
                if CAST_TO_FP32:
                    k = k.to(tl.float32)
                    v = v.to(tl.float32)
                scores = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=DOT_PRECISION) * qk_scale
                scores = tl.where(valid[None, :], scores, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(scores, 1))
                alpha = tl.exp2(m_i - m_new)
                p = tl.exp2(scores - m_new[:, None])
                l_i = l_i * alpha + tl.sum(p, 1)
                acc = tl.dot(p.to(q.dtype), v.to(q.dtype), acc * alpha[:, None], input_precision=DOT_PRECISION)
                m_i = m_new

    out_rows = out_ptr + row * stride_or + heads[:, None] * stride_oh + offs_d[None, :]
    if NUM_SPLITS == 1:
        tl.store(out_rows, (acc / l_i[:, None]).to(out_ptr.dtype.element_ty), mask=group_mask[:, None])
    else:  # a split that saw nothing: lse = -inf gives it weight 0 in the combine
        seen = l_i > 0
        partial = acc / tl.where(seen, l_i, 1.0)[:, None]
        tl.store(out_rows + split * stride_os, partial, mask=group_mask[:, None])
        lse = tl.where(seen, m_i + tl.log2(tl.where(seen, l_i, 1.0)), float("-inf"))
        tl.store(lse_ptr + row * stride_lr + heads * stride_lh + split, lse, mask=group_mask)


_launcher = Launcher(_quant_decode_kernel, AUTOTUNE_CONFIGS,
                     key=["HEAD_DIM", "LOG2_BLOCK_SIZE", "BLOCK_G", "NUM_SPLITS", "BITS", "KIND", "HAS_RECENT",
                          "CONTEXT_BUCKET"])


def _check_rows(scheme: QuantScheme, rows_q: torch.Tensor, pool, block_tables: torch.Tensor, rows: list[torch.Tensor]):
    num_kv_heads = pool.k_codes.shape[2]
    if rows_q.dim() != 3 or rows_q.shape[-1] != scheme.head_dim:
        raise ValueError(f"query rows must be [rows, num_q_heads, {scheme.head_dim}], got shape {tuple(rows_q.shape)}")
    if rows_q.shape[1] % num_kv_heads:
        raise ValueError(f"num_q_heads {rows_q.shape[1]} is not a multiple of num_kv_heads {num_kv_heads}")
    for name, t in zip(("rows_seq", "rows_ctx", "rows_full", "rows_recent"), rows):
        if t.shape != (rows_q.shape[0],):
            raise ValueError(f"{name} must have one entry per query row ({rows_q.shape[0]}), got shape {tuple(t.shape)}")
    if block_tables.dim() != 2:
        raise ValueError(f"block_tables must be [batch, max_blocks], got shape {tuple(block_tables.shape)}")


def quant_decode_attention(scheme: QuantScheme, rows_q: torch.Tensor, pool, block_tables: torch.Tensor,
                           rows_seq: torch.Tensor, rows_ctx: torch.Tensor, rows_full: torch.Tensor,
                           rows_recent: torch.Tensor, stage_k: torch.Tensor | None = None,
                           stage_v: torch.Tensor | None = None, scale: float | None = None,
                           num_splits: int | None = None) -> torch.Tensor:
    """Attention of each query row over its sequence's quantized K/V (a QuantizedPool's tensors).

    rows_q [R, Hq, D]; block_tables [B, max_blocks] int32; rows_seq [R] (row of block_tables), rows_ctx [R]
    (tokens seen), rows_full [R] (of those, read quantized), rows_recent [R] (kivi2: first staged row of the
    rest) all int32; stage_k/stage_v [S, Hkv, D] kivi2's full-precision tokens. Returns [R, Hq, D].
    """
    _check_rows(scheme, rows_q, pool, block_tables, [rows_seq, rows_ctx, rows_full, rows_recent])
    num_rows, num_q_heads, head_dim = rows_q.shape
    num_kv_heads, block_size = pool.k_codes.shape[2], pool.k_codes.shape[1]
    if num_rows == 0:
        return torch.empty_like(rows_q)
    if num_splits is None:
        num_splits = choose_num_splits(num_rows, num_kv_heads, block_tables.shape[1] * block_size, rows_q.device)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    rows_q = rows_q if rows_q.stride(-1) == 1 else rows_q.contiguous()
    has_recent = scheme.keeps_recent
    if has_recent:
        assert stage_k is not None and stage_v is not None and stage_k.stride() == stage_v.stride()
    else:
        stage_k = stage_v = rows_q  # unused
    out = torch.empty_like(rows_q, memory_format=torch.contiguous_format)  # [R, Hq, D]
    target, lse, target_strides = split_scratch(out, num_splits)
    k_min = pool.k_min if pool.k_min is not None else pool.k_scale
    v_min = pool.v_min if pool.v_min is not None else pool.v_scale
    key_strides = ((pool.k_scale.stride(0), 0, pool.k_scale.stride(1)) if scheme.keys_per_channel
                   else (pool.k_scale.stride(0), pool.k_scale.stride(1), pool.k_scale.stride(2)))
    kernel, config = _launcher(rows_q.device, {"BLOCK_N": INTERPRETER_BLOCK_N})
    group = num_q_heads // num_kv_heads
    with device_guard(rows_q.device):
        kernel[(num_rows, num_kv_heads, num_splits)](
            rows_q, pool.k_codes, pool.k_scale, k_min, pool.v_codes, pool.v_scale, v_min, stage_k, stage_v,
            block_tables, rows_seq, rows_ctx, rows_full, rows_recent, target, lse,
            scale * math.log2(math.e),
            rows_q.stride(0), rows_q.stride(1),
            pool.k_codes.stride(0), pool.k_codes.stride(1), pool.k_codes.stride(2),
            *key_strides,
            pool.v_scale.stride(0), pool.v_scale.stride(1), pool.v_scale.stride(2),
            stage_k.stride(0), stage_k.stride(1),
            block_tables.stride(0),
            *target_strides,
            lse.stride(0), lse.stride(1),
            context_bucket(block_tables.shape[1] * block_size),
            GROUP=group, BLOCK_G=max(16, next_power_of_2(group)), HEAD_DIM=head_dim,
            LOG2_BLOCK_SIZE=block_size.bit_length() - 1, NUM_SPLITS=num_splits, BITS=scheme.bits,
            KIND=kind_of(scheme), K_SCALE_GROUP=1 if scheme.keys_per_channel else scheme.group_size,
            V_SCALE_GROUP=scheme.group_size, K_PACK_GROUP=head_dim if scheme.keys_per_channel else scheme.group_size,
            V_PACK_GROUP=scheme.group_size, HAS_RECENT=has_recent, **dot_flags(rows_q.dtype, rows_q.device), **config,
        )
        if num_splits > 1:
            combine_splits(target, lse, out)
    return out


def dequantize_sequence(scheme: QuantScheme, pool, table_row: torch.Tensor, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first num_tokens quantized tokens of one sequence, dequantized: K, V [num_tokens, Hkv, D] fp32.
    For the reference and for figures — the kernel never builds this."""
    block_size = pool.k_codes.shape[1]
    blocks = table_row[: -(-num_tokens // block_size)].long()
    heads, dim = pool.k_codes.shape[2], scheme.head_dim

    def tokens(t: torch.Tensor) -> torch.Tensor:
        return t[blocks].reshape(-1, heads, t.shape[-1])[:num_tokens]

    if scheme.keys_per_channel:
        codes = unpack_codes(pool.k_codes[blocks], scheme.bits, dim).float()  # [nb, bs, Hkv, D]
        k = codes * pool.k_scale[blocks, None].float() + pool.k_min[blocks, None].float()
        k = k.reshape(-1, heads, dim)[:num_tokens]
    else:
        k = dequantize_tokens(scheme, tokens(pool.k_codes), tokens(pool.k_scale),
                              tokens(pool.k_min) if pool.k_min is not None else None)
    v = dequantize_tokens(scheme, tokens(pool.v_codes), tokens(pool.v_scale),
                          tokens(pool.v_min) if pool.v_min is not None else None)
    return k, v


def quant_decode_reference(scheme: QuantScheme, rows_q: torch.Tensor, pool, block_tables: torch.Tensor,
                           rows_seq: torch.Tensor, rows_ctx: torch.Tensor, rows_full: torch.Tensor,
                           rows_recent: torch.Tensor, stage_k: torch.Tensor | None = None,
                           stage_v: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """Plain torch, the oracle (and the CPU path): per sequence, dequantize its blocks, append the staged
    full-precision rows, and let each query row see keys [0, full) quantized and its staged rows
    [recent, recent + ctx − full). Same arguments and result as quant_decode_attention."""
    _check_rows(scheme, rows_q, pool, block_tables, [rows_seq, rows_ctx, rows_full, rows_recent])
    num_q_heads, head_dim = rows_q.shape[1:]
    num_kv_heads = pool.k_codes.shape[2]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    out = torch.empty_like(rows_q)
    seq_of_row = rows_seq.long()
    for seq in seq_of_row.unique().tolist():
        mine = (seq_of_row == seq).nonzero().squeeze(1)  # [r]
        full, ctx, recent = rows_full[mine].long(), rows_ctx[mine].long(), rows_recent[mine].long()
        k, v = dequantize_sequence(scheme, pool, block_tables[seq], int(full.max()))  # [F, Hkv, D]
        allowed = torch.arange(k.shape[0], device=k.device)[None, :] < full[:, None]  # [r, F]
        if scheme.keeps_recent and stage_k is not None:
            stage_pos = torch.arange(stage_k.shape[0], device=k.device)[None, :]
            staged = (stage_pos >= recent[:, None]) & (stage_pos < (recent + ctx - full)[:, None])  # [r, S]
            k = torch.cat([k, stage_k.float()])
            v = torch.cat([v, stage_v.float()])
            allowed = torch.cat([allowed, staged], dim=1)
        k = k.repeat_interleave(num_q_heads // num_kv_heads, dim=1)  # [L, Hq, D]
        v = v.repeat_interleave(num_q_heads // num_kv_heads, dim=1)
        scores = torch.einsum("rhd,lhd->rhl", rows_q[mine].float(), k) * scale
        scores = scores.masked_fill(~allowed[:, None, :], float("-inf"))
        out[mine] = torch.einsum("rhl,lhd->rhd", scores.softmax(-1), v).to(rows_q.dtype)
    return out


def quant_decode_bytes(scheme: QuantScheme, num_q_heads: int, num_kv_heads: int, context_lens, block_size: int,
                       elem_size: int, full_lens=None) -> int:
    """Bytes one quantized decode step must move (see the module docstring). full_lens defaults to the
    context lengths (every token quantized); kivi2 reads the rest in full precision."""
    lens = [int(n) for n in context_lens]
    fulls = lens if full_lens is None else [int(n) for n in full_lens]
    per_token = scheme.bytes_per_token_head(block_size)  # K + V codes, scales, kivi2 key scales per block
    quantized = sum(fulls) * num_kv_heads * per_token
    recent = 2 * sum(n - f for n, f in zip(lens, fulls)) * num_kv_heads * scheme.head_dim * elem_size
    query_and_out = 2 * len(lens) * num_q_heads * scheme.head_dim * elem_size
    tables = 4 * sum(-(-f // block_size) for f in fulls) + 4 * 4 * len(lens)
    return int(quantized + recent + query_and_out + tables)
