"""Store: scatter the new tokens' K and V into their slots of the paged pool.

A token's slot is `block_id * block_size + offset`; the cache computes it from the block table (the slot
mapping). Padding tokens carry a negative slot and are skipped. One program per token copies its
[num_kv_heads, head_dim] K and V rows: a pure copy, so bandwidth-bound.

Bytes it must move: reads 2·N·Hkv·D·elem (K and V of N tokens) + 8·N (the slot mapping),
writes 2·N·Hkv·D·elem — skipped tokens move nothing but their slot.
"""
from __future__ import annotations

import torch
import triton.language as tl

from ._common import INDEX_DTYPES, check_pools, check_same_device, device_guard, jit_pair, next_power_of_2


@jit_pair
def _store_kv_kernel(
    key_ptr, value_ptr, k_pool_ptr, v_pool_ptr, slot_mapping_ptr,
    stride_kn, stride_kh, stride_vn, stride_vh,  # key/value [N, Hkv, D], last dim contiguous
    stride_pb, stride_pt, stride_ph,  # both pools [num_blocks, block_size, Hkv, D], same strides
    NUM_KV_HEADS: tl.constexpr, BLOCK_H: tl.constexpr, HEAD_DIM: tl.constexpr, LOG2_BLOCK_SIZE: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)  # int64: token × stride and slot × stride can pass 2³¹ (see _common)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:  # padding
        return
    block = slot >> LOG2_BLOCK_SIZE
    offset = slot & ((1 << LOG2_BLOCK_SIZE) - 1)
    heads = tl.arange(0, BLOCK_H)
    dims = tl.arange(0, HEAD_DIM)
    mask = (heads < NUM_KV_HEADS)[:, None]
    k = tl.load(key_ptr + token * stride_kn + heads[:, None] * stride_kh + dims[None, :], mask=mask)  # [BLOCK_H, D]
    v = tl.load(value_ptr + token * stride_vn + heads[:, None] * stride_vh + dims[None, :], mask=mask)
    dst = block * stride_pb + offset * stride_pt + heads[:, None] * stride_ph + dims[None, :]
    tl.store(k_pool_ptr + dst, k, mask=mask)
    tl.store(v_pool_ptr + dst, v, mask=mask)


def _check_store(key, value, k_pool, v_pool, slot_mapping, check: bool) -> None:
    pools = check_pools(k_pool, v_pool)
    for name, t in (("key", key), ("value", value)):
        if t.dim() != 3 or tuple(t.shape[1:]) != (pools.num_kv_heads, pools.head_dim):
            raise ValueError(f"{name} must be [num_tokens, {pools.num_kv_heads}, {pools.head_dim}] to match the pool, "
                             f"got shape {tuple(t.shape)}")
        if t.dtype != k_pool.dtype:
            raise ValueError(f"{name} dtype {t.dtype} differs from the pool dtype {k_pool.dtype}")
    if value.shape != key.shape:
        raise ValueError(f"value shape {tuple(value.shape)} differs from key shape {tuple(key.shape)}")
    check_same_device("k_pool", k_pool, key=key, value=value, slot_mapping=slot_mapping)
    if slot_mapping.dim() != 1 or slot_mapping.dtype not in INDEX_DTYPES:
        raise ValueError(f"slot_mapping must be a 1-D int64 tensor [num_tokens], got {slot_mapping.dtype} "
                         f"of shape {tuple(slot_mapping.shape)}")
    if slot_mapping.shape[0] != key.shape[0]:
        raise ValueError(f"slot_mapping has {slot_mapping.shape[0]} entries but key has {key.shape[0]} tokens")
    if check and slot_mapping.numel():
        num_slots = pools.num_blocks * pools.block_size
        slots = slot_mapping.cpu()
        bad = (slots >= num_slots).nonzero()
        if bad.numel():
            i = int(bad[0])
            raise ValueError(f"slot_mapping[{i}] = {int(slots[i])} is outside the pool of {pools.num_blocks} blocks "
                             f"× {pools.block_size} = {num_slots} slots")


def store_kv(key: torch.Tensor, value: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
             slot_mapping: torch.Tensor, *, check: bool = True) -> None:
    """Write key/value [num_tokens, num_kv_heads, head_dim] into k_pool/v_pool [num_blocks, block_size,
    num_kv_heads, head_dim] at slot_mapping [num_tokens] (negative = skip). In place.

    `check` bounds-checks the slots on the host (a sync on a GPU); a failed check leaves the pools unchanged.
    """
    _check_store(key, value, k_pool, v_pool, slot_mapping, check)
    num_tokens, num_kv_heads, head_dim = key.shape
    if num_tokens == 0:
        return
    key = key if key.stride(-1) == 1 else key.contiguous()
    value = value if value.stride(-1) == 1 else value.contiguous()
    block_size = k_pool.shape[1]
    kernel = _store_kv_kernel.for_device(key.device)
    with device_guard(key.device):
        kernel[(num_tokens,)](
            key, value, k_pool, v_pool, slot_mapping,
            key.stride(0), key.stride(1), value.stride(0), value.stride(1),
            k_pool.stride(0), k_pool.stride(1), k_pool.stride(2),
            NUM_KV_HEADS=num_kv_heads, BLOCK_H=next_power_of_2(num_kv_heads), HEAD_DIM=head_dim,
            LOG2_BLOCK_SIZE=block_size.bit_length() - 1,
        )


def store_kv_reference(key: torch.Tensor, value: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                       slot_mapping: torch.Tensor) -> None:
    """Plain torch: the same scatter through a flat [num_slots, Hkv, D] view of each pool."""
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    k_pool.view(-1, *k_pool.shape[2:])[slots] = key[keep]
    v_pool.view(-1, *v_pool.shape[2:])[slots] = value[keep]


def store_bytes(num_tokens: int, num_kv_heads: int, head_dim: int, elem_size: int) -> int:
    """Bytes store_kv must move for num_tokens stored tokens: K+V read, K+V written, slots read (8 B each)."""
    return 2 * (2 * num_tokens * num_kv_heads * head_dim * elem_size) + 8 * num_tokens
