"""A weight matrix and the product y = x @ Wᵀ that streams it fastest on its device.

Batch-1 decode multiplies one activation vector by every weight matrix: each weight byte is read once for
2 FLOP, so a step runs at whatever bandwidth those matrix-vector products reach. Measured on a 2-core EPYC,
the 121 products of one SmolLM2 step (538 MB of float32 weights; `python -m kvlab.bench gemv` measures them
on any machine):

  F.linear (MKL), W [out, in] row-major                              ~11 GB/s  ← what HF transformers runs
  bmm over column blocks of Wᵀ, one per thread                       ~21 GB/s
  kvlab.kernels.cpu_gemv: each thread streams its rows of W          ~29 GB/s  (a plain read: ~30 GB/s)

So on a CPU, float32 products of a few rows (decode at batch ≤ 4) go to the compiled kernel, and longer ones
(prefill, where the product is compute-bound) to F.linear. On CUDA, or without the kernel, F.linear
always. W stays [out, in] row-major everywhere: a tied lm_head shares the embedding's memory.
Both paths compute the same float32 dot products in other summation orders; the oracle tests hold the
greedy tokens to HF's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kvlab.kernels.cpu_gemv import load_gemv

GEMV_MAX_ROWS = 4  # rows of x up to which the kernel beats F.linear (37 vs 62 ms at 4 rows, 69 vs 57 at 8)


class Projection:
    def __init__(self, weight: torch.Tensor):
        """weight: [out, in], kept as is (contiguous)."""
        assert weight.dim() == 2, f"a projection weight is 2-D, got shape {tuple(weight.shape)}"
        self.weight = weight.contiguous()  # [out, in]
        self.out_features, self.in_features = weight.shape
        kernel = load_gemv() if weight.device.type == "cpu" and weight.dtype == torch.float32 else None
        self.streams_on_cpu = kernel is not None
        self._gemv = kernel.gemv if kernel is not None else None  # called directly: 121 calls a decode step

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in] → [..., out]."""
        rows = x.numel() // self.in_features
        if not self.streams_on_cpu or rows > GEMV_MAX_ROWS or rows == 0:
            return F.linear(x, self.weight)
        y = self._gemv(x.reshape(rows, self.in_features).contiguous(), self.weight)  # [rows, out]; cpu_gemv's kernel
        return y.reshape(*x.shape[:-1], self.out_features)

    def numel(self) -> int:
        return self.weight.numel()

    def element_size(self) -> int:
        return self.weight.element_size()

    def nbytes_read(self) -> int:
        """Bytes one product streams from memory: every weight once."""
        return self.weight.numel() * self.weight.element_size()

    def __repr__(self) -> str:
        path = f"kvlab.kernels.cpu_gemv for ≤ {GEMV_MAX_ROWS} rows" if self.streams_on_cpu else "F.linear"
        return f"Projection({self.out_features}×{self.in_features}, {self.weight.dtype}, {self.weight.device}, {path})"
