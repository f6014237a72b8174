"""kvlab's batch-1 greedy decode against HF transformers' `generate` on the same GGUF model and prompt.

Decode tokens/s = (new tokens - 1) / (total time - time to first token), median over runs after a warm-up.
transformers is a test dependency: this benchmark imports it only when run.
"""
from __future__ import annotations

import statistics
import time

import torch

from ..engine import generate


def _hf_decode_rate(hf_model, ids: torch.Tensor, new_tokens: int) -> float:
    """HF generate timed twice: 1 token (≈ TTFT) and new_tokens; the difference is decode."""
    common = dict(do_sample=False, eos_token_id=None, pad_token_id=2, attention_mask=torch.ones_like(ids))
    with torch.no_grad():
        start = time.perf_counter()
        hf_model.generate(ids, max_new_tokens=1, min_new_tokens=1, **common)
        ttft = time.perf_counter() - start
        start = time.perf_counter()
        hf_model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **common)
        total = time.perf_counter() - start
    return (new_tokens - 1) / (total - ttft)


def compare_with_hf(model, tokenizer, prompt: str, new_tokens: int = 64, runs: int = 3) -> dict:
    import transformers

    from ..model.gguf_file import find_model_file

    path = find_model_file()
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    hf_model.eval()
    ids = torch.tensor([tokenizer.encode(prompt)])
    _hf_decode_rate(hf_model, ids, 4)  # warm-up
    hf_rates = [_hf_decode_rate(hf_model, ids, new_tokens) for _ in range(runs)]
    generate(model, tokenizer, prompt, max_new_tokens=4, stop_at_eos=False)  # warm-up
    ours = [generate(model, tokenizer, prompt, max_new_tokens=new_tokens, stop_at_eos=False).stats for _ in range(runs)]
    kv_rate = statistics.median(s.decode_tokens_per_s for s in ours)
    hf_rate = statistics.median(hf_rates)
    return {"prompt_tokens": ids.shape[1], "new_tokens": new_tokens, "runs": runs, "threads": torch.get_num_threads(),
            "kvlab_decode_tok_s": kv_rate, "hf_decode_tok_s": hf_rate, "ratio": kv_rate / hf_rate,
            "kvlab_bytes_per_step": ours[0].bytes_read_per_decode_step,
            "kvlab_gb_s": statistics.median(s.decode_gb_per_s for s in ours)}
