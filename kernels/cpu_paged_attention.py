"""Paged decode attention on a CPU that reads K/V where they lie: through the block table, no gathered copy.

Why: the paged cache's plain-torch path gathers each sequence's blocks into a contiguous copy and attends over
that: it reads the K/V, writes them again and reads the copy, so on a 2-core CPU it took 3.2–6.8× the time of
torch's SDPA over the same K/V in a contiguous cache (benchmarks/results/decode_cpu-x86-64-2-threads.json before
this kernel). That overstates what paging costs: the vLLM paper measured its paged kernel 20–26 % slower than a
contiguous one, because a kernel can read a block in place as cheaply as a row. This one does, on a CPU
(cpu_paged_attention.cpp): one task per (sequence, split of its context), walking the block table tile by tile,
every KV head of a token at once so that a block is read front to back; each K/V row serves its whole query group
(GQA-native); online softmax in fp32; AVX-512 or AVX2 where the build has them, plain C++ otherwise. It is
`PagedCache`'s decode path on a CPU (backend "cpu"); prefill keeps the torch path. Measured on the same 2 cores
(SmolLM2's 9:3 heads, float32, blocks of 16, batch 1–16 × context 256–4K; `python -m kvlab.bench decode`): this
kernel 0.55–0.77× SDPA's time on the contiguous cache, the gather path 2.8–5.6×. SDPA's CPU kernel is not tuned
for one query a sequence; paging itself costs nothing measurable here.

Bytes it must move: decode_bytes (kernels/paged_decode.py), the Triton kernel's count: K and V of every cached
token (2 · Σ context · Hkv · D · elem), the query read and the output written (B · Hq · D · elem each), the used
block-table entries and context_lens (4 B each). With splits, 2 · B · splits · Hq · (D + 2) · 4 B of fp32
scratch more: small next to the K/V.

Its oracle is paged_decode_reference (kernels/paged_decode.py): same arguments, same result as
paged_decode_attention. It is compiled into the C++ CPU extension beside cpu_gemv (cpu_gemv.py: built once by
`make install`; KVLAB_CPU_GEMV=0 switches both off); `available()` says whether it loaded.
"""
from __future__ import annotations

import math

import torch

from ._common import check_paged_inputs
from .cpu_gemv import load_gemv
from .paged_decode import decode_bytes, paged_decode_reference  # noqa: F401 (the bytes and the oracle, named above)


def available() -> bool:
    """Whether the compiled kernel loads here (it warns once where it cannot be built)."""
    return load_gemv() is not None


def _module():
    module = load_gemv()
    if module is None:
        raise RuntimeError("kvlab's C++ CPU kernels are not available here (see the warning above, or KVLAB_CPU_GEMV)")
    return module


def cpu_paged_decode_attention(query: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                               block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float | None = None,
                               num_splits: int | None = None, *, check: bool = True) -> torch.Tensor:
    """Attention of one new query per sequence over its paged K/V, on CPU tensors.

    query [B, Hq, D]; k_pool, v_pool [num_blocks, block_size, Hkv, D] (the query's own K/V already stored);
    block_tables [B, max_blocks] int32; context_lens [B] int32 (tokens each query sees, ≥ 1). Returns [B, Hq, D]
    in the query's dtype. scale defaults to 1/sqrt(D). num_splits=None lets the kernel cut short batches' contexts
    so that every thread has work (cpu_splits). The table and lengths are always checked, in C++ (one pass over
    the used entries: a bad value raises ValueError naming it). `check` also checks shapes, dtypes and devices
    here, naming a bad one (~10 µs of Python a call); without it the C++ still refuses them, in fewer words.
    """
    if check:
        check_paged_inputs(query, "batch, num_q_heads, head_dim", k_pool, v_pool, block_tables, context_lens, False)
        if query.device.type != "cpu":
            raise ValueError(f"query is on {query.device}; cpu_paged_decode_attention takes CPU tensors "
                             f"(paged_decode_attention runs the Triton kernel on a GPU)")
    if num_splits is not None and (isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 1):
        raise ValueError(f"num_splits = {num_splits!r} must be a positive integer")
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)
    context_lens = context_lens.to(block_tables.dtype)  # one index type for the C++ side (a no-op for int32 both)
    return _module().paged_decode(query.contiguous(), k_pool, v_pool, block_tables.contiguous(),
                                  context_lens.contiguous(), scale, num_splits or 0)


def cpu_splits(batch: int, max_context: int) -> int:
    """The splits of each context the kernel chooses at torch's current thread count: 1 when the batch already
    gives every thread several sequences, else enough for that, each split at least 64 tokens, at most 64."""
    return int(_module().paged_decode_splits(batch, max_context))


def simd_path() -> str:
    """The vector code this build's attention kernel runs: "avx512", "avx2" or "plain"."""
    return _module().attention_simd_path()
