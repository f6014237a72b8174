"""A weight matrix and the product y = x @ Wᵀ that streams it fastest on its device.

Batch-1 decode multiplies one activation vector by every weight matrix: each weight byte is read once for
2 FLOP, so a step runs at whatever bandwidth those matrix-vector products reach, and reading fewer bytes is
faster. Measured on a 2-core EPYC, the 121 products of one SmolLM2 step (`python -m kvlab.bench gemv`
measures them on any machine):

  F.linear (MKL) on the float32 weights, 538 MB       ~50 ms  (~11 GB/s)  ← what HF transformers runs
  kvlab.kernels.cpu_gemv on the float32 weights        ~21 ms  (~26 GB/s; a plain read: ~30 GB/s)
  kvlab.kernels.cpu_gemv on the GGUF blocks, 97 MB     ~8 ms   (~12 GB/s: unpacking 4-bit blocks on 2 cores
                                                                 is now the limit, not the memory)

The GGUF file stores the layers in Q4_1 and the embedding in Q8_0; the blocks kernel rebuilds the very float32
weights gguf's dequantize gives (bit for bit) in registers, so the tokens stay HF's. On a CPU, float32
products of up to GEMV_MAX_ROWS rows (decode, short prefills) go to the compiled kernel, reading the blocks
when the Projection has them (`read_blocks`); longer ones (prefill, compute-bound) to F.linear on the float32
weights. On CUDA, or without the kernel, F.linear always. W stays [out, in] row-major everywhere: a tied
lm_head shares the embedding's memory. All paths compute the same dot products in other summation orders;
the oracle tests hold the greedy tokens to HF's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kvlab.kernels.cpu_gemv import block_row_bytes, blocks_gemv, load_gemv

# rows of x up to which the kernel beats F.linear; all 121 products of a step, 2-core EPYC, median of 7:
#   rows:          1     4     8     16
#   F.linear      50    96    67    81 ms
#   float32 gemv  21    32    40    77 ms
#   blocks gemv    8    16    30    61 ms
GEMV_MAX_ROWS = 16


class Projection:
    def __init__(self, weight: torch.Tensor, blocks: torch.Tensor | None = None, block_format: str | None = None):
        """weight: [out, in], kept as is (contiguous).
        blocks: the same weights as the GGUF file stores them, uint8 [out, in / 32 · block bytes] in block_format
        ("Q4_1" or "Q8_0"); a CPU decode step then reads these instead of the float32 weight."""
        assert weight.dim() == 2, f"a projection weight is 2-D, got shape {tuple(weight.shape)}"
        self.weight = weight.contiguous()  # [out, in]
        self.out_features, self.in_features = weight.shape
        kernel = load_gemv() if weight.device.type == "cpu" and weight.dtype == torch.float32 else None
        self.streams_on_cpu = kernel is not None
        self._gemv = kernel.gemv if kernel is not None else None  # called directly: 121 calls a decode step
        self.blocks, self.block_format = None, None
        if blocks is not None and kernel is not None:
            row_bytes = block_row_bytes(block_format, self.in_features)
            if blocks.dtype != torch.uint8 or tuple(blocks.shape) != (self.out_features, row_bytes):
                raise ValueError(f"{block_format} blocks for a {self.out_features}×{self.in_features} weight are uint8 "
                                 f"[{self.out_features}, {row_bytes}], got {blocks.dtype} {list(blocks.shape)}")
            self.blocks, self.block_format = blocks.contiguous(), block_format  # [out, in / 32 · block bytes]
            self._gemv_blocks = blocks_gemv(block_format)
        self.read_blocks = self.blocks is not None  # False: decode reads the float32 weight, as HF does

    @property
    def reads_blocks(self) -> bool:
        return self.blocks is not None and self.read_blocks

    def uses_kernel(self, rows: int) -> bool:
        """Whether a product with `rows` rows of x runs the compiled CPU kernel (else F.linear)."""
        return self.streams_on_cpu and 0 < rows <= GEMV_MAX_ROWS

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in] → [..., out]."""
        rows = x.numel() // self.in_features
        if not self.uses_kernel(rows):
            return F.linear(x, self.weight)
        x2 = x.reshape(rows, self.in_features).contiguous()  # [rows, in]
        y = self._gemv_blocks(x2, self.blocks) if self.reads_blocks else self._gemv(x2, self.weight)  # [rows, out]
        return y.reshape(*x.shape[:-1], self.out_features)

    def numel(self) -> int:
        return self.weight.numel()

    def element_size(self) -> int:
        return self.weight.element_size()

    def nbytes_read(self, rows: int = 1) -> int:
        """Bytes of weights one product with `rows` rows of x streams from memory: every weight once, as blocks
        when the block kernel runs, else in the weight's dtype."""
        if self.reads_blocks and self.uses_kernel(rows):
            return self.blocks.numel()
        return self.weight.numel() * self.weight.element_size()

    def __repr__(self) -> str:
        kernel = "kvlab.kernels.cpu_gemv" + (f" on the {self.block_format} blocks" if self.reads_blocks else "")
        path = f"{kernel} for ≤ {GEMV_MAX_ROWS} rows" if self.streams_on_cpu else "F.linear"
        return f"Projection({self.out_features}×{self.in_features}, {self.weight.dtype}, {self.weight.device}, {path})"
