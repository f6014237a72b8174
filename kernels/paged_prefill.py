"""Paged prefill attention: a chunk of new query tokens per sequence, causal, over everything cached for it.

Used for prompts, chunked prefill and speculative verification: sequence b has q_lens[b] new tokens at
positions context_lens[b] - q_lens[b] … context_lens[b] - 1 (their K/V already stored), and the query at
position p sees keys 0 … p. Queries are right-padded: [B, max_new, Hq, D]; padding rows of the output are 0.

One program per (query tile, sequence, KV head). GQA-native like decode: the tile's BLOCK_M rows are
(token, head-of-the-group) pairs, BLOCK_M // GROUP tokens × GROUP heads, so each K/V tile is loaded once for
the whole group. K/V tiles are gathered through the block table as in paged_decode; the loop stops at the
tile's last query position (causal), and the diagonal tile is masked per row. Online softmax in fp32.

Bytes it must move (at least): query read + output written (B · max_new · Hq · D · elem each) and the
K/V of every sequence's context once per query tile, 2 · Σ_b tiles_b · context_b · Hkv · D · elem (at most;
causal tiles stop early). Prefill is compute-bound for long chunks: 4 · Σ q_len · context · Hq · D flops / 2.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._common import (INDEX_DTYPES, Launcher, check_paged_inputs, check_same_device, device_guard, dot_flags,
                      jit_pair, next_power_of_2)

INTERPRETER_BLOCK_N = 32  # under the interpreter one fixed configuration; BLOCK_M = max(32, group rounded up)
AUTOTUNE_CONFIGS = [
    triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages)
    for block_m, block_n, warps, stages in [(64, 32, 4, 2), (64, 64, 4, 3), (128, 32, 4, 2), (128, 64, 8, 3)]
]
MAX_GROUP = 64  # the query tile holds at least one token's whole group


@jit_pair
def _paged_prefill_kernel(
    q_ptr, k_pool_ptr, v_pool_ptr, block_tables_ptr, context_lens_ptr, q_lens_ptr, out_ptr,
    qk_scale,  # softmax scale × log2(e)
    stride_qb, stride_qt, stride_qh,  # query [B, T, Hq, D]
    stride_kb, stride_kt, stride_kh,  # pools [num_blocks, block_size, Hkv, D]
    stride_vb, stride_vt, stride_vh,
    stride_tb,  # block_tables [B, max_blocks]
    stride_ob, stride_ot, stride_oh,  # out [B, T, Hq, D]
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, LOG2_BLOCK_SIZE: tl.constexpr,
    CAST_TO_FP32: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    q_tile = tl.program_id(0)
    seq = tl.program_id(1).to(tl.int64)  # int64: seq × an outer stride can pass 2³¹ (see _common)
    kv_head = tl.program_id(2)
    q_len = tl.load(q_lens_ptr + seq)
    context_len = tl.load(context_lens_ptr + seq)
    first = q_tile * (BLOCK_M // GROUP)  # first new token of this tile
    if first >= q_len:
        return
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_n = tl.arange(0, BLOCK_N)
    tokens = first + offs_m // GROUP  # row = (token, head of the group)
    heads = kv_head * GROUP + offs_m % GROUP
    row_valid = (offs_m < (BLOCK_M // GROUP) * GROUP) & (tokens < q_len)
    start = context_len - q_len  # position of the first new token
    q_pos = tl.where(row_valid, start + tokens, context_len - 1)  # padding rows: any position, never stored
    q = tl.load(q_ptr + seq * stride_qb + tokens[:, None] * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
                mask=row_valid[:, None], other=0.0)  # [BLOCK_M, D]
    if CAST_TO_FP32:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    table_row = block_tables_ptr + seq * stride_tb
    k_head = k_pool_ptr + kv_head * stride_kh
    v_head = v_pool_ptr + kv_head * stride_vh
    kv_end = tl.minimum(start + first + BLOCK_M // GROUP, context_len)  # causal: keys up to the tile's last query
    for tile in range(0, tl.cdiv(kv_end, BLOCK_N)):
        keys = tile * BLOCK_N + offs_n
        key_valid = keys < kv_end
        block_ids = tl.load(table_row + (keys >> LOG2_BLOCK_SIZE), mask=key_valid, other=0).to(tl.int64)
        rows = keys & ((1 << LOG2_BLOCK_SIZE) - 1)
        k = tl.load(k_head + (block_ids * stride_kb + rows * stride_kt)[:, None] + offs_d[None, :],
                    mask=key_valid[:, None], other=0.0)  # [BLOCK_N, D]
        v = tl.load(v_head + (block_ids * stride_vb + rows * stride_vt)[:, None] + offs_d[None, :],
                    mask=key_valid[:, None], other=0.0)
        if CAST_TO_FP32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [BLOCK_M, BLOCK_N]
        scores = tl.where(key_valid[None, :] & (keys[None, :] <= q_pos[:, None]), scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 1))  # finite: the first tile holds key 0, seen by every row
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new

    out = acc / l_i[:, None]
    tl.store(out_ptr + seq * stride_ob + tokens[:, None] * stride_ot + heads[:, None] * stride_oh + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_valid[:, None])


_prefill_launcher = Launcher(_paged_prefill_kernel, AUTOTUNE_CONFIGS, key=["HEAD_DIM", "LOG2_BLOCK_SIZE", "GROUP"])


def _check_q_lens(q_lens: torch.Tensor, query: torch.Tensor, context_lens: torch.Tensor, check: bool) -> None:
    check_same_device("query", query, q_lens=q_lens)
    if q_lens.dim() != 1 or q_lens.dtype not in INDEX_DTYPES or q_lens.shape[0] != query.shape[0]:
        raise ValueError(f"q_lens must be a 1-D int32 tensor with one entry per sequence ({query.shape[0]}), "
                         f"got {q_lens.dtype} of shape {tuple(q_lens.shape)}")
    if not check:
        return
    for b, (n, ctx) in enumerate(zip(q_lens.tolist(), context_lens.tolist())):
        if not 1 <= n <= query.shape[1]:
            raise ValueError(f"q_lens[{b}] = {n} must be between 1 and the query's {query.shape[1]} rows")
        if n > ctx:
            raise ValueError(f"q_lens[{b}] = {n} exceeds context_lens[{b}] = {ctx}: the new tokens are part of the context")


def paged_prefill_attention(query: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                            block_tables: torch.Tensor, context_lens: torch.Tensor, q_lens: torch.Tensor,
                            scale: float | None = None, *, check: bool = True) -> torch.Tensor:
    """Causal attention of each sequence's new tokens over its paged K/V.

    query [B, max_new, Hq, D], right-padded; q_lens [B] int32 new tokens per sequence (1 … max_new), at
    positions context_lens[b] - q_lens[b] … context_lens[b] - 1; k_pool, v_pool [num_blocks, block_size, Hkv, D]
    with the new tokens' K/V already stored; block_tables [B, max_blocks] int32; context_lens [B] int32.
    Returns [B, max_new, Hq, D] in the query's dtype, zeros in the padding rows.
    `check` validates lengths and table entries on the host (a sync on a GPU).
    """
    pools, _ = check_paged_inputs(query, "batch, max_new, num_q_heads, head_dim", k_pool, v_pool,
                                  block_tables, context_lens, check)
    _check_q_lens(q_lens, query, context_lens, check)
    batch, max_new, num_q_heads, head_dim = query.shape
    group = num_q_heads // pools.num_kv_heads
    if group > MAX_GROUP:
        raise ValueError(f"query group {group} (num_q_heads / num_kv_heads) is above the supported {MAX_GROUP}")
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    query = query if query.stride(-1) == 1 else query.contiguous()
    out = torch.zeros(query.shape, device=query.device, dtype=query.dtype)  # [B, T, Hq, D]
    kernel, config = _prefill_launcher(query.device, {"BLOCK_M": max(32, next_power_of_2(group)),
                                                       "BLOCK_N": INTERPRETER_BLOCK_N})

    def grid(meta):
        return (triton.cdiv(max_new, meta["BLOCK_M"] // group), batch, pools.num_kv_heads)

    with device_guard(query.device):
        kernel[grid](
            query, k_pool, v_pool, block_tables, context_lens, q_lens, out,
            scale * math.log2(math.e),
            query.stride(0), query.stride(1), query.stride(2),
            k_pool.stride(0), k_pool.stride(1), k_pool.stride(2),
            v_pool.stride(0), v_pool.stride(1), v_pool.stride(2),
            block_tables.stride(0),
            out.stride(0), out.stride(1), out.stride(2),
            GROUP=group, HEAD_DIM=head_dim, LOG2_BLOCK_SIZE=pools.log2_block_size,
            **dot_flags(query.dtype, query.device), **config,
        )
    return out


def paged_prefill_reference(query: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                            block_tables: torch.Tensor, context_lens: torch.Tensor, q_lens: torch.Tensor,
                            scale: float | None = None) -> torch.Tensor:
    """Plain torch, the oracle: per sequence gather K/V through the block table, repeat heads for GQA, causal
    softmax in fp32. Same arguments and result as paged_prefill_attention."""
    batch, max_new, num_q_heads, head_dim = query.shape
    block_size, num_kv_heads = k_pool.shape[1], k_pool.shape[2]
    group = num_q_heads // num_kv_heads
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    out = torch.zeros_like(query)
    for b in range(batch):
        n, new = int(context_lens[b]), int(q_lens[b])
        blocks = block_tables[b, : -(-n // block_size)].long()
        k = k_pool[blocks].reshape(-1, num_kv_heads, head_dim)[:n].float().repeat_interleave(group, dim=1)  # [n, Hq, D]
        v = v_pool[blocks].reshape(-1, num_kv_heads, head_dim)[:n].float().repeat_interleave(group, dim=1)
        scores = torch.einsum("thd,nhd->htn", query[b, :new].float(), k) * scale  # [Hq, new, n]
        q_pos = torch.arange(n - new, n, device=query.device)
        key_pos = torch.arange(n, device=query.device)
        scores = scores.masked_fill(key_pos[None, None, :] > q_pos[None, :, None], float("-inf"))
        out[b, :new] = torch.einsum("htn,nhd->thd", scores.softmax(dim=-1), v).to(query.dtype)
    return out
