"""What the paged kernels share: the interpreter switch, the supported sizes and the checks of their inputs.

Offsets are int64 where they can pass 2³¹: a pool may hold more than 2³¹ elements (and a caller's query or a
prefill chunk may too), while Triton multiplies two int32 values in int32, wrapping silently (its interpreter
too). So each kernel makes the index of a tensor's outer dimension int64 before it multiplies: block ids, slots,
the program ids of sequences, tokens and rows. The strides of those dimensions end in the dimension's letter:
b (block or batch), n (token), r (row); kvlab.kernels.aot checks in the compiled TTIR that each of them is used
only widened to int64.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import triton

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128, 256)
MAX_BLOCK_SIZE = 256
POOL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)


def interpreting(device: torch.device) -> bool:
    """True when a launch on `device` runs under Triton's interpreter: forced by TRITON_INTERPRET=1, or CPU tensors.

    CPU tensors need the interpreter switched on before triton.language is imported (kvlab.kernels does that
    when there is no CUDA): otherwise tl.cdiv, tl.max … are compiled-only and an interpreted kernel cannot call them.
    """
    forced = os.environ.get("TRITON_INTERPRET") == "1"
    if torch.device(device).type == "cpu" and not forced:
        raise RuntimeError("kvlab's Triton kernels got CPU tensors on a machine with CUDA: pass CUDA tensors, or set "
                           "TRITON_INTERPRET=1 before importing kvlab.kernels to run them in the interpreter")
    return forced or torch.device(device).type == "cpu"


@dataclass(frozen=True)
class KernelPair:
    """One kernel decorated twice: compiled for CUDA tensors, interpreted for CPU tensors.

    Triton decides at decoration time (`@triton.jit` reads TRITON_INTERPRET then), so a GPU machine that also
    runs the kernels on CPU tensors (the test suite does) needs both. On a CPU-only machine both are interpreted.
    """
    compiled: triton.JITFunction
    interpreted: triton.JITFunction

    def for_device(self, device: torch.device):
        return self.interpreted if interpreting(device) else self.compiled


class Launcher:
    """How a KernelPair is launched: under the interpreter with one fixed, small configuration (its cost is per
    tile-iteration, not per byte); on CUDA the compiled kernel autotuned over `configs` by `key`, built on first use."""

    def __init__(self, kernel: KernelPair, configs: list, key: list[str]):
        self.kernel, self.configs, self.key = kernel, configs, key
        self._autotuned = None

    def __call__(self, device: torch.device, interpreter_config: dict):
        """(kernel, launch config): the config only under the interpreter; autotuning picks it on CUDA."""
        if interpreting(device):
            return self.kernel.interpreted, interpreter_config
        if self._autotuned is None:
            self._autotuned = triton.autotune(self.configs, key=self.key)(self.kernel.compiled)
        return self._autotuned, {}


def device_guard(device: torch.device):
    """Launch on the tensors' GPU, not the current one."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def jit_pair(fn) -> KernelPair:
    saved = os.environ.get("TRITON_INTERPRET")
    compiled = triton.jit(fn)
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        interpreted = triton.jit(fn)
    finally:
        if saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved
    return KernelPair(compiled, interpreted)


def dot_flags(dtype: torch.dtype, device: torch.device) -> dict:
    """Constexpr flags for tl.dot. The interpreter multiplies bf16 bit patterns as if they were numbers, so
    there every tile is cast to fp32 first; compiled, fp16/bf16 tiles stay as they are for the tensor cores
    (fp32 accumulate), and fp32 tiles use full-precision products rather than tf32."""
    return dict(CAST_TO_FP32=interpreting(device), DOT_PRECISION="ieee" if dtype == torch.float32 else "tf32")


def next_power_of_2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@dataclass(frozen=True)
class PoolShape:
    num_blocks: int
    block_size: int
    num_kv_heads: int
    head_dim: int

    @property
    def log2_block_size(self) -> int:
        return self.block_size.bit_length() - 1


def check_pools(k_pool: torch.Tensor, v_pool: torch.Tensor) -> PoolShape:
    """K/V pools of one layer: [num_blocks, block_size, num_kv_heads, head_dim], same shape, dtype and device."""
    if k_pool.dim() != 4:
        raise ValueError(f"k_pool must be [num_blocks, block_size, num_kv_heads, head_dim], got shape {tuple(k_pool.shape)}")
    if v_pool.shape != k_pool.shape:
        raise ValueError(f"v_pool shape {tuple(v_pool.shape)} differs from k_pool shape {tuple(k_pool.shape)}")
    if k_pool.dtype not in POOL_DTYPES:
        raise ValueError(f"pool dtype {k_pool.dtype} is not supported; use float32, float16 or bfloat16")
    if v_pool.dtype != k_pool.dtype:
        raise ValueError(f"v_pool dtype {v_pool.dtype} differs from k_pool dtype {k_pool.dtype}")
    if v_pool.device != k_pool.device:
        raise ValueError(f"v_pool is on {v_pool.device} but k_pool is on {k_pool.device}")
    num_blocks, block_size, num_kv_heads, head_dim = k_pool.shape
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head_dim {head_dim} is not supported; use one of {', '.join(map(str, SUPPORTED_HEAD_DIMS))}")
    if not (1 <= block_size <= MAX_BLOCK_SIZE and block_size & (block_size - 1) == 0):
        raise ValueError(f"block_size {block_size} must be a power of two between 1 and {MAX_BLOCK_SIZE}")
    if k_pool.stride(-1) != 1 or v_pool.stride() != k_pool.stride():
        raise ValueError(f"k_pool and v_pool must share strides and be contiguous along head_dim, got strides "
                         f"{k_pool.stride()} and {v_pool.stride()}")
    return PoolShape(num_blocks, block_size, num_kv_heads, head_dim)


def check_same_device(reference_name: str, reference: torch.Tensor, **others: torch.Tensor) -> None:
    for name, tensor in others.items():
        if tensor.device != reference.device:
            raise ValueError(f"{name} is on {tensor.device} but {reference_name} is on {reference.device}")


def check_paged_inputs(query: torch.Tensor, query_layout: str, k_pool: torch.Tensor, v_pool: torch.Tensor,
                       block_tables: torch.Tensor, context_lens: torch.Tensor, check: bool) -> tuple[PoolShape, int | None]:
    """The checks shared by paged decode and prefill. `query` is [batch, ..., num_q_heads, head_dim].

    Returns the pool's shape and, when `check` (which copies context_lens and block_tables to the host: a
    sync on a GPU), the longest context; otherwise None. Raises ValueError naming the bad value.
    """
    pools = check_pools(k_pool, v_pool)
    if query.dtype != k_pool.dtype:
        raise ValueError(f"query dtype {query.dtype} differs from the pool dtype {k_pool.dtype}")
    check_same_device("query", query, k_pool=k_pool, block_tables=block_tables, context_lens=context_lens)
    expected_dims = len(query_layout.split(","))
    if query.dim() != expected_dims:
        raise ValueError(f"query must be [{query_layout}], got shape {tuple(query.shape)}")
    batch, num_q_heads, head_dim = query.shape[0], query.shape[-2], query.shape[-1]
    if head_dim != pools.head_dim:
        raise ValueError(f"query head_dim {head_dim} differs from the pool's head_dim {pools.head_dim}")
    if num_q_heads % pools.num_kv_heads != 0:
        raise ValueError(f"num_q_heads {num_q_heads} is not a multiple of num_kv_heads {pools.num_kv_heads}")
    if block_tables.dim() != 2 or block_tables.dtype not in INDEX_DTYPES:
        raise ValueError(f"block_tables must be a 2-D int32 tensor [batch, max_blocks], got {block_tables.dtype} "
                         f"of shape {tuple(block_tables.shape)}")
    if context_lens.dim() != 1 or context_lens.dtype not in INDEX_DTYPES:
        raise ValueError(f"context_lens must be a 1-D int32 tensor [batch], got {context_lens.dtype} "
                         f"of shape {tuple(context_lens.shape)}")
    if block_tables.shape[0] != batch:
        raise ValueError(f"block_tables has {block_tables.shape[0]} rows but query has batch {batch}")
    if context_lens.shape[0] != batch:
        raise ValueError(f"context_lens has {context_lens.shape[0]} entries but query has batch {batch}")
    if not check:
        return pools, None
    lens = context_lens.cpu().long()
    tables = block_tables.cpu().long()
    for b, n in enumerate(lens.tolist()):
        if n < 1:
            raise ValueError(f"context_lens[{b}] = {n} must be at least 1")
        needed = -(-n // pools.block_size)
        if needed > tables.shape[1]:
            raise ValueError(f"context_lens[{b}] = {n} needs {needed} blocks of {pools.block_size} tokens but "
                             f"block_tables has only {tables.shape[1]} columns")
    used = torch.arange(tables.shape[1])[None, :] < (lens[:, None] + pools.block_size - 1) // pools.block_size
    bad = used & ((tables < 0) | (tables >= pools.num_blocks))
    if bad.any():
        b, j = bad.nonzero()[0].tolist()
        raise ValueError(f"block_tables[{b}, {j}] = {int(tables[b, j])} is outside the pool of {pools.num_blocks} blocks")
    return pools, int(lens.max())
