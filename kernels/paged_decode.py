"""Paged decode attention: one new query token per sequence over its K/V scattered in pool blocks.

Decode is bandwidth-bound: the work is reading every cached K/V byte once. So:
* GQA-native: one program per (sequence, KV head[, split]) loads the query group of that KV head as one
  tile ([BLOCK_G ≥ 16 rows, D], padded rows masked) and reuses each K/V tile for all heads of the group;
  the group's score and output products are `tl.dot`s that run on the tensor cores.
* Tiles of BLOCK_N tokens, gathered across pages: token t lives at row `t & (bs-1)` of block
  `table[t >> log2(bs)]` (shifts, not divisions: block sizes are powers of two), so a tile can span many
  small pages or part of one big page with the same code.
* Online softmax in fp32 (running max and sum), fp32 accumulator; exp2 with log2(e) folded into the scale.
* Split-K (flash-decoding): few sequences × long context cannot fill the GPU with one program per
  (sequence, KV head), so the context is cut into `num_splits` slices; each writes its partial output and
  log-sum-exp to fp32 scratch and a second small kernel combines them.

Bytes it must move (decode_bytes): K and V of every cached token, 2 · Σ context · Hkv · D · elem, plus the
query (B · Hq · D · elem) read, the output (same) written and the block table entries read (4 B each).
Split-K adds 2 · B · Hq · splits · (D + 1) · 4 B of fp32 scratch traffic: small next to the K/V bytes.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from ._common import Launcher, check_paged_inputs, device_guard, dot_flags, interpreting, jit_pair, next_power_of_2

MIN_TOKENS_PER_SPLIT = 256  # each split spans several tiles, or the combine costs more than the split saves
MAX_SPLITS = 128
INTERPRETER_BLOCK_N = 64  # under the interpreter one fixed configuration: its cost is per tile-iteration, not per byte
AUTOTUNE_CONFIGS = [  # on CUDA: tiles of BLOCK_N tokens; head_dim 256 with big tiles and 3 stages is pruned
    triton.Config({"BLOCK_N": block_n}, num_warps=warps, num_stages=stages)  # by OutOfResources at tuning time
    for block_n, warps, stages in [(32, 4, 2), (64, 4, 2), (64, 4, 3), (128, 4, 2), (64, 8, 3), (128, 8, 3)]
]


@jit_pair
def _paged_decode_kernel(
    q_ptr, k_pool_ptr, v_pool_ptr, block_tables_ptr, context_lens_ptr, out_ptr, lse_ptr,
    qk_scale,  # softmax scale × log2(e): scores are in the exp2 domain
    stride_qb, stride_qh,  # query [B, Hq, D]
    stride_kb, stride_kt, stride_kh,  # pools [num_blocks, block_size, Hkv, D]
    stride_vb, stride_vt, stride_vh,
    stride_tb,  # block_tables [B, max_blocks]
    stride_ob, stride_oh, stride_os,  # out [B, Hq, D] or, split, partial out [B, Hq, splits, D] fp32
    stride_lb, stride_lh,  # split only: lse [B, Hq, splits] fp32 (log2 domain)
    CONTEXT_BUCKET,  # context_bucket(longest context): unused by the code, read by the autotune key
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, LOG2_BLOCK_SIZE: tl.constexpr,
    NUM_SPLITS: tl.constexpr, CAST_TO_FP32: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)  # int64: seq × an outer stride can pass 2³¹ (see _common)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    context_len = tl.load(context_lens_ptr + seq)
    num_tiles = tl.cdiv(context_len, BLOCK_N)
    tiles_per_split = tl.cdiv(num_tiles, NUM_SPLITS)
    tile_start = split * tiles_per_split
    tile_end = tl.minimum(tile_start + tiles_per_split, num_tiles)

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_n = tl.arange(0, BLOCK_N)
    heads = kv_head * GROUP + offs_g  # the query heads that share this KV head
    group_mask = offs_g < GROUP
    q = tl.load(q_ptr + seq * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=group_mask[:, None], other=0.0)  # [BLOCK_G, D]
    if CAST_TO_FP32:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)  # running max of the scores
    l_i = tl.zeros([BLOCK_G], tl.float32)  # running sum of exp2(score - max)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
    table_row = block_tables_ptr + seq * stride_tb
    k_head = k_pool_ptr + kv_head * stride_kh
    v_head = v_pool_ptr + kv_head * stride_vh
    for tile in range(tile_start, tile_end):
        tokens = tile * BLOCK_N + offs_n
        valid = tokens < context_len
        block_ids = tl.load(table_row + (tokens >> LOG2_BLOCK_SIZE), mask=valid, other=0).to(tl.int64)
        rows = tokens & ((1 << LOG2_BLOCK_SIZE) - 1)
        k = tl.load(k_head + (block_ids * stride_kb + rows * stride_kt)[:, None] + offs_d[None, :],
                    mask=valid[:, None], other=0.0)  # [BLOCK_N, D]
        v = tl.load(v_head + (block_ids * stride_vb + rows * stride_vt)[:, None] + offs_d[None, :],
                    mask=valid[:, None], other=0.0)
        if CAST_TO_FP32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [BLOCK_G, BLOCK_N]
        scores = tl.where(valid[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 1))  # finite: every tile holds at least one valid token
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new

    out_rows = out_ptr + seq * stride_ob + heads[:, None] * stride_oh + offs_d[None, :]
    if NUM_SPLITS == 1:
        tl.store(out_rows, (acc / l_i[:, None]).to(out_ptr.dtype.element_ty), mask=group_mask[:, None])
    else:  # a split past the end of a short context saw nothing: lse = -inf gives it weight 0
        seen = l_i > 0
        partial = acc / tl.where(seen, l_i, 1.0)[:, None]
        tl.store(out_rows + split * stride_os, partial, mask=group_mask[:, None])
        lse = tl.where(seen, m_i + tl.log2(tl.where(seen, l_i, 1.0)), float("-inf"))
        tl.store(lse_ptr + seq * stride_lb + heads * stride_lh + split, lse, mask=group_mask)


@jit_pair
def _combine_splits_kernel(
    partial_ptr, lse_ptr, out_ptr,
    stride_pb, stride_ph, stride_ps,  # partial [B, Hq, splits, D] fp32
    stride_lb, stride_lh,  # lse [B, Hq, splits] fp32
    stride_ob, stride_oh,  # out [B, Hq, D]
    NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr, HEAD_DIM: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, HEAD_DIM)
    split_mask = offs_s < NUM_SPLITS
    lse = tl.load(lse_ptr + seq * stride_lb + head * stride_lh + offs_s, mask=split_mask, other=float("-inf"))
    weights = tl.exp2(lse - tl.max(lse, 0))  # split 0 always saw tokens, so the max is finite
    partial = tl.load(partial_ptr + seq * stride_pb + head * stride_ph + offs_s[:, None] * stride_ps + offs_d[None, :],
                      mask=split_mask[:, None], other=0.0)  # [BLOCK_S, D]
    out = tl.sum(weights[:, None] * partial, 0) / tl.sum(weights, 0)
    tl.store(out_ptr + seq * stride_ob + head * stride_oh + offs_d, out.to(out_ptr.dtype.element_ty))


_decode_launcher = Launcher(_paged_decode_kernel, AUTOTUNE_CONFIGS,
                            key=["HEAD_DIM", "LOG2_BLOCK_SIZE", "BLOCK_G", "NUM_SPLITS", "CONTEXT_BUCKET"])


TARGET_WAVES = 4  # programs per SM the split count aims for: one program per SM cannot keep its loads in flight


def choose_num_splits(batch: int, num_kv_heads: int, max_context: int, device: torch.device | str, *,
                      num_sms: int | None = None) -> int:
    """Splits of the context per (sequence, KV head) so that the decode grid fills the GPU several times over.

    1 on a CPU / under the interpreter, and when batch × num_kv_heads programs already make TARGET_WAVES waves;
    otherwise enough splits for TARGET_WAVES programs per SM (one program per SM is too few to saturate the
    memory bandwidth: a program waits on its own loads), but no split shorter than MIN_TOKENS_PER_SPLIT and at
    most MAX_SPLITS. The count is a power of two (each value compiles and autotunes its own kernel: a growing
    context must not trigger a new compile every 256 tokens): the fill target rounded up, the length limit down.
    `num_sms` overrides the device's SM count (for tests and what-ifs).
    """
    if num_sms is None:
        device = torch.device(device)
        if device.type != "cuda" or interpreting(device):
            return 1
        num_sms = torch.cuda.get_device_properties(device).multi_processor_count
    programs = batch * num_kv_heads
    wanted = TARGET_WAVES * num_sms
    if programs >= wanted:
        return 1
    to_fill = next_power_of_2(-(-wanted // programs))
    longest = max(1, max_context // MIN_TOKENS_PER_SPLIT)
    return min(to_fill, 1 << (longest.bit_length() - 1), MAX_SPLITS)


def context_bucket(max_context: int) -> int:
    """The autotune key's context: the next power of two, so a decode kernel is tuned again as its context grows
    past each doubling (the best tile and stage count at 1K tokens is not the best at 128K), not once for all."""
    return next_power_of_2(max(1, int(max_context)))


def paged_decode_attention(query: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float | None = None,
                           num_splits: int | None = None, *, check: bool = True) -> torch.Tensor:
    """Attention of one new query per sequence over its paged K/V.

    query [B, Hq, D]; k_pool, v_pool [num_blocks, block_size, Hkv, D] (the query's own K/V already stored);
    block_tables [B, max_blocks] int32; context_lens [B] int32 (tokens each query sees, ≥ 1).
    Returns [B, Hq, D] in the query's dtype. scale defaults to 1/sqrt(D). num_splits=None chooses with
    choose_num_splits. `check` validates context lengths and block-table entries on the host (a sync on a
    GPU; the longest context then also guides the split choice, else the table's capacity does).
    """
    pools, max_context = check_paged_inputs(query, "batch, num_q_heads, head_dim", k_pool, v_pool,
                                            block_tables, context_lens, check)
    batch, num_q_heads, head_dim = query.shape
    if max_context is None:
        max_context = block_tables.shape[1] * pools.block_size
    if num_splits is None:
        num_splits = choose_num_splits(batch, pools.num_kv_heads, max_context, query.device)
    if not isinstance(num_splits, int) or num_splits < 1:
        raise ValueError(f"num_splits = {num_splits!r} must be a positive integer")
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    query = query if query.stride(-1) == 1 else query.contiguous()
    group = num_q_heads // pools.num_kv_heads
    out = torch.empty_like(query, memory_format=torch.contiguous_format)  # [B, Hq, D]
    target, lse, target_strides = split_scratch(out, num_splits)
    kernel, config = _decode_launcher(query.device, {"BLOCK_N": INTERPRETER_BLOCK_N})
    with device_guard(query.device):
        kernel[(batch, pools.num_kv_heads, num_splits)](
            query, k_pool, v_pool, block_tables, context_lens, target, lse,
            scale * math.log2(math.e),
            query.stride(0), query.stride(1),
            k_pool.stride(0), k_pool.stride(1), k_pool.stride(2),
            v_pool.stride(0), v_pool.stride(1), v_pool.stride(2),
            block_tables.stride(0),
            *target_strides,
            lse.stride(0), lse.stride(1),
            context_bucket(max_context),
            GROUP=group, BLOCK_G=max(16, next_power_of_2(group)), HEAD_DIM=head_dim,
            LOG2_BLOCK_SIZE=pools.log2_block_size, NUM_SPLITS=num_splits,
            **dot_flags(query.dtype, query.device), **config,
        )
        if num_splits > 1:
            combine_splits(target, lse, out)
    return out


def split_scratch(out: torch.Tensor, num_splits: int):
    """Where a decode kernel writes: `out` [R, Hq, D] itself, or with split-K fp32 partial outputs
    [R, Hq, splits, D] and their log-sum-exps [R, Hq, splits]. Returns (target, lse, target strides)."""
    if num_splits == 1:
        return out, out, (out.stride(0), out.stride(1), 0)  # lse unused
    rows, heads, head_dim = out.shape
    target = torch.empty(rows, heads, num_splits, head_dim, device=out.device, dtype=torch.float32)
    lse = torch.empty(rows, heads, num_splits, device=out.device, dtype=torch.float32)
    return target, lse, (target.stride(0), target.stride(1), target.stride(2))


def combine_splits(partial: torch.Tensor, lse: torch.Tensor, out: torch.Tensor) -> None:
    """Second pass of split-K: out [R, Hq, D] = the splits' partial outputs weighted by exp2(lse). In place."""
    rows, heads, num_splits, head_dim = partial.shape
    _combine_splits_kernel.for_device(out.device)[(rows, heads)](
        partial, lse, out,
        partial.stride(0), partial.stride(1), partial.stride(2),
        lse.stride(0), lse.stride(1),
        out.stride(0), out.stride(1),
        NUM_SPLITS=num_splits, BLOCK_S=next_power_of_2(num_splits), HEAD_DIM=head_dim,
    )


def paged_decode_reference(query: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor,
                           scale: float | None = None) -> torch.Tensor:
    """Plain torch, the oracle: gather each sequence's K/V through its block table, repeat K/V heads for GQA,
    softmax in fp32. Same arguments and result as paged_decode_attention."""
    batch, num_q_heads, head_dim = query.shape
    block_size, num_kv_heads = k_pool.shape[1], k_pool.shape[2]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    out = torch.empty_like(query)
    for b in range(batch):
        n = int(context_lens[b])
        blocks = block_tables[b, : -(-n // block_size)].long()
        k = k_pool[blocks].reshape(-1, num_kv_heads, head_dim)[:n].float()  # [n, Hkv, D]
        v = v_pool[blocks].reshape(-1, num_kv_heads, head_dim)[:n].float()
        k = k.repeat_interleave(num_q_heads // num_kv_heads, dim=1)  # [n, Hq, D]
        v = v.repeat_interleave(num_q_heads // num_kv_heads, dim=1)
        scores = torch.einsum("hd,nhd->hn", query[b].float(), k) * scale  # [Hq, n]
        out[b] = torch.einsum("hn,nhd->hd", scores.softmax(dim=-1), v).to(query.dtype)
    return out


def decode_bytes(batch: int, num_q_heads: int, num_kv_heads: int, head_dim: int,
                 context_lens: Sequence[int] | torch.Tensor, elem_size: int, block_size: int = 16) -> int:
    """Bytes one decode step must move: K+V read (2 · Σ context · Hkv · D · elem) + query read + output
    written (B · Hq · D · elem each) + block-table entries read (4 B per used entry) + context_lens (4 B each)."""
    lens = [int(n) for n in (context_lens.tolist() if isinstance(context_lens, torch.Tensor) else context_lens)]
    if len(lens) != batch:
        raise ValueError(f"context_lens has {len(lens)} entries but batch is {batch}")
    kv = 2 * sum(lens) * num_kv_heads * head_dim * elem_size
    query_and_out = 2 * batch * num_q_heads * head_dim * elem_size
    tables = 4 * sum(-(-n // block_size) for n in lens) + 4 * batch
    return kv + query_and_out + tables
