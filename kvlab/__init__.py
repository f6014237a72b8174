"""kvlab: how the KV cache makes LLM inference fast, run for real on SmolLM2-135M-Instruct.

    model, tokenizer = kvlab.load_model()
    result = kvlab.generate(model, tokenizer, ["The KV cache"], max_new_tokens=32, cache="contiguous")
"""
import os

import torch

# `@triton.jit` decides at decoration time whether a function is compiled or interpreted — Triton's own
# library functions (tl.zeros, …) too, when triton is first imported — and a compiled kernel cannot launch
# without a GPU. On a machine without CUDA, switch the interpreter on before anything imports triton (the
# kernels in kvlab.kernels, transformers, a notebook's own kernels). An explicit TRITON_INTERPRET is kept.
if not torch.cuda.is_available() and "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "1"

from .engine import (Engine, GenerationResult, GenerationStats, Request, ServeResult, StepClock,  # noqa: E402
                     build_engine, generate, serve)
from .model import load_model, pick_device  # noqa: E402

__all__ = ["load_model", "pick_device", "generate", "serve", "build_engine", "Engine", "Request", "StepClock",
           "ServeResult", "GenerationResult", "GenerationStats"]
__version__ = "0.1.0"
