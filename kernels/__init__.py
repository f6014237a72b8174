"""kvlab's Triton kernels, shipped inside the package as `kvlab.kernels`.

Each kernel file holds the kernel, its plain-torch reference and the bytes it must move; its test lives in
tests/test_kernels.py and its benchmark in kvlab.bench. Compiled on CUDA; CPU tensors run under Triton's
interpreter (each kernel is decorated twice, compiled and interpreted, and picks by the tensors' device).

    store_kv                 scatter new tokens' K/V into pool slots                      store_kv.py
    paged_decode_attention   one query per sequence, GQA-native, split-K                 paged_decode.py
    paged_prefill_attention  a causal chunk of queries per sequence over its paged K/V   paged_prefill.py
    quantize_store           quantize K/V per token into codes + fp16 scales (int8/fp8/int4/kivi2 values)
    quantize_key_blocks      kivi2 keys: per channel over a full block                    quant_store.py
    quant_decode_attention   paged decode over a quantized pool, dequantized in registers quant_decode.py

C++ kernels for the CPU, one extension compiled once (torch.utils.cpp_extension), each imported on its own:
    cpu_gemv                 decode's x @ Wᵀ streamed at memory bandwidth                 cpu_gemv.py/.cpp
    cpu_paged_decode_attention  paged decode reading the blocks in place, GQA-native      cpu_paged_attention.py/.cpp
"""
import os

import torch

# Importing kvlab (this package's parent) already switched Triton's interpreter on when there is no CUDA:
# see kvlab/__init__.py.
assert torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET"), "kvlab/__init__ sets TRITON_INTERPRET"

from .paged_decode import (choose_num_splits, decode_bytes, paged_decode_attention,  # noqa: E402
                           paged_decode_reference)
from .paged_prefill import paged_prefill_attention, paged_prefill_reference  # noqa: E402
from .store_kv import store_bytes, store_kv, store_kv_reference  # noqa: E402

__all__ = [
    "store_kv", "store_kv_reference", "store_bytes",
    "paged_decode_attention", "paged_decode_reference", "choose_num_splits", "decode_bytes",
    "paged_prefill_attention", "paged_prefill_reference",
]
