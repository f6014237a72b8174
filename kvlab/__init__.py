"""kvlab: how the KV cache makes LLM inference fast, run for real on SmolLM2-135M-Instruct.

    model, tokenizer = kvlab.load_model()
    result = kvlab.generate(model, tokenizer, ["The KV cache"], max_new_tokens=32, cache="contiguous")
"""
from .engine import GenerationResult, GenerationStats, generate
from .model import load_model, pick_device

__all__ = ["load_model", "pick_device", "generate", "GenerationResult", "GenerationStats"]
__version__ = "0.1.0"
