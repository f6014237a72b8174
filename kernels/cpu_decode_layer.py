"""One decoder layer of a CPU decode step in one C++ call: what kvlab's fast CPU decode runs instead of the
Python forward's twenty-odd torch operations a layer.

Why: a batch-1 SmolLM2 step on 2 cores spent ~9 ms in the 121 matrix products over the GGUF blocks and as much
again around them — 61 RMSNorms, RoPE, slices, cache writes, 30 attention calls, SiLU, adds — each a few
microseconds of Python and dispatch around a few nanoseconds of arithmetic on one token's numbers.
cpu_decode_layer.cpp runs a whole layer per call: the same product kernels (cpu_gemv), the same paged attention
kernel (cpu_paged_attention), kvlab's C++ RMSNorm (the Python forward's too, on a CPU), ATen's SiLU, and plain
loops for RoPE, the cache write and the adds,
computing what the torch operations compute in the same order. Its result is bit for bit the Python forward's
where that forward attends with the same kernel (the paged caches' "cpu" backend); over a contiguous cache the
Python forward attends with SDPA, so the two differ there by attention's summation order only
(tests/test_fused_decode.py bounds it).

Bytes one call must move: the layer's weights once, as stored (Projection.nbytes_read: blocks or float32), the
K/V it attends over (2 · Σ context · Hkv · D · 4), the new K/V it stores (2 · B · Hkv · D · 4) and a few KB of
activations: `decode_layer_bytes`.

Its oracle is decode_layer_reference below, plain torch over the same arguments (paged_decode_reference for the
attention); the model-level oracle is the Python forward itself (LlamaModel.fused_decode = False).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .cpu_gemv import dequantize_reference, load_gemv
from .paged_decode import paged_decode_reference

def available() -> bool:
    """Whether the compiled layer loads here (it is part of the C++ CPU extension: cpu_gemv.load_gemv)."""
    return load_gemv() is not None


def weight_and_format(projection) -> tuple[torch.Tensor, str]:
    """What decode_layer reads of a kvlab.model.projection.Projection: its blocks where it reads them, else float32."""
    return (projection.blocks, projection.block_format) if projection.reads_blocks else (projection.weight, "F32")


def decode_layer(x: torch.Tensor, layer, k_pool: torch.Tensor, v_pool: torch.Tensor, block_tables: torch.Tensor,
                 context_lens: torch.Tensor, slots: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 num_heads: int, eps: float) -> torch.Tensor:
    """One layer for one new token per sequence; stores the token's K/V at `slots` and returns the new x.

    x [B, hidden] float32; layer: kvlab.model.llama.LayerWeights; k_pool, v_pool [num_blocks, block_size, Hkv, D]
    float32; block_tables [B, max_blocks] int32; context_lens [B] int32 (the new token included); slots [B] int64
    (block id · block_size + offset); cos, sin [B, D]. The C++ checks every shape and slot (a bad value raises).
    """
    (wqkv, f_qkv), (wo, f_o) = weight_and_format(layer.wqkv), weight_and_format(layer.wo)
    (w_gu, f_gu), (w_down, f_down) = weight_and_format(layer.w_gate_up), weight_and_format(layer.w_down)
    num_kv_heads, head_dim = k_pool.shape[2], k_pool.shape[3]
    return load_gemv().decode_layer(x, layer.attn_norm, wqkv, f_qkv, wo, f_o, layer.ffn_norm, w_gu, f_gu, w_down,
                                    f_down, k_pool, v_pool, block_tables, context_lens, slots, cos, sin, num_heads,
                                    num_kv_heads, eps, 1.0 / math.sqrt(head_dim))


def decode_layer_reference(x: torch.Tensor, weights: dict, k_pool: torch.Tensor, v_pool: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor, slots: torch.Tensor,
                           cos: torch.Tensor, sin: torch.Tensor, num_heads: int, eps: float) -> torch.Tensor:
    """decode_layer in plain torch. weights: attn_norm, ffn_norm [hidden] and (tensor, format) for wqkv, wo, gate_up,
    down (blocks are dequantized with dequantize_reference). Stores into the pools as decode_layer does."""
    def linear(h, name):
        weight, fmt = weights[name]
        return h @ (weight if fmt == "F32" else dequantize_reference(weight, fmt)).t()

    batch, _ = x.shape
    num_kv_heads, head_dim = k_pool.shape[2], k_pool.shape[3]
    q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
    qkv = linear(F.rms_norm(x, x.shape[-1:], weights["attn_norm"], eps), "wqkv")  # [B, q_size + 2 · kv_size]
    q = qkv[:, :q_size].reshape(batch, num_heads, head_dim)
    k = qkv[:, q_size: q_size + kv_size].reshape(batch, num_kv_heads, head_dim)
    v = qkv[:, q_size + kv_size:].reshape(batch, num_kv_heads, head_dim)
    half = head_dim // 2

    def rope(t):  # [B, H, D]
        return t * cos[:, None] + torch.cat([-t[..., half:], t[..., :half]], dim=-1) * sin[:, None]

    q = rope(q)
    k_pool.view(-1, num_kv_heads, head_dim)[slots] = rope(k)
    v_pool.view(-1, num_kv_heads, head_dim)[slots] = v
    attn = paged_decode_reference(q, k_pool, v_pool, block_tables, context_lens)  # [B, Hq, D]
    x = x + linear(attn.reshape(batch, q_size), "wo")
    gate, up = linear(F.rms_norm(x, x.shape[-1:], weights["ffn_norm"], eps), "gate_up").chunk(2, dim=-1)
    return x + linear(F.silu(gate) * up, "down")


def decode_layer_bytes(layer, context_lens: torch.Tensor, num_kv_heads: int, head_dim: int) -> int:
    """Bytes one call must move: the weights as read, the K/V attended over and stored, x in and out."""
    weights = sum(p.nbytes_read(len(context_lens)) for p in (layer.wqkv, layer.wo, layer.w_gate_up, layer.w_down))
    norms = (layer.attn_norm.numel() + layer.ffn_norm.numel()) * 4
    kv_row = num_kv_heads * head_dim * 4
    attended = 2 * int(context_lens.sum()) * kv_row
    stored = 2 * len(context_lens) * kv_row
    return weights + norms + attended + stored + 2 * len(context_lens) * layer.attn_norm.numel() * 4
