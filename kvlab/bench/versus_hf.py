"""kvlab's batch-1 greedy decode against HF transformers' `generate`, same GGUF model, same prompt, same process.

Decode tokens/s = (new tokens − 1) / (total time − time to first token), median over runs after a warm-up;
the two engines' runs alternate so that a noisy neighbour slows both. The tokens must be identical.

The physical bound: a batch-1 decode step reads every weight once (plus the K/V so far), so
  bound tokens/s = measured copy bandwidth / bytes read per step
and the achieved fraction = tokens/s / bound says how much of the memory system decode uses.
transformers is a test dependency: this benchmark imports it only when run.
"""
from __future__ import annotations

import statistics
import time

import torch

from ..engine import generate
from .roofs import device_roofs


def _hf_run(hf_model, ids: torch.Tensor, new_tokens: int) -> tuple[float, list[int]]:
    """HF generate timed twice: 1 token (≈ TTFT) and new_tokens; the difference is decode → (tok/s, tokens)."""
    common = dict(do_sample=False, eos_token_id=None, pad_token_id=2, attention_mask=torch.ones_like(ids))
    with torch.no_grad():
        start = time.perf_counter()
        hf_model.generate(ids, max_new_tokens=1, min_new_tokens=1, **common)
        ttft = time.perf_counter() - start
        start = time.perf_counter()
        out = hf_model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **common)
        total = time.perf_counter() - start
    return (new_tokens - 1) / (total - ttft), out[0, ids.shape[1]:].tolist()


def load_hf_model():
    import transformers

    from ..model.gguf_file import find_model_file

    path = find_model_file()
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return hf_model.eval()


def compare_with_hf(model, tokenizer, prompt: str, new_tokens: int = 64, runs: int = 3, hf_model=None) -> dict:
    if new_tokens < 2:
        raise ValueError(f"new_tokens must be ≥ 2 (decode starts after the first token), got {new_tokens}")
    if runs < 1:
        raise ValueError(f"runs must be ≥ 1, got {runs}")
    hf_model = hf_model or load_hf_model()
    ids = torch.tensor([tokenizer.encode(prompt)])
    _hf_run(hf_model, ids, 4)  # warm-up
    generate(model, tokenizer, prompt, max_new_tokens=4, stop_at_eos=False)  # warm-up
    hf_rates, ours = [], []
    for _ in range(runs):
        rate, hf_tokens = _hf_run(hf_model, ids, new_tokens)
        hf_rates.append(rate)
        ours.append(generate(model, tokenizer, prompt, max_new_tokens=new_tokens, stop_at_eos=False))
    kv_tokens = ours[0].token_ids[0]
    same = next((i for i, (a, b) in enumerate(zip(kv_tokens, hf_tokens)) if a != b), len(kv_tokens))
    kv_rate = statistics.median(r.stats.decode_tokens_per_s for r in ours)
    hf_rate = statistics.median(hf_rates)
    bytes_per_step = ours[0].stats.bytes_read_per_decode_step  # weights + mean K/V read
    bandwidth = device_roofs(model.device).copy.gb_per_s * 1e9
    bound_rate = bandwidth / bytes_per_step
    return {"prompt_tokens": ids.shape[1], "new_tokens": new_tokens, "runs": runs, "threads": torch.get_num_threads(),
            "kvlab_decode_tok_s": kv_rate, "hf_decode_tok_s": hf_rate, "ratio": kv_rate / hf_rate,
            "tokens_identical": kv_tokens == hf_tokens, "tokens_identical_before_first_difference": same,
            "bytes_per_step": bytes_per_step, "copy_gb_s": bandwidth / 1e9, "bound_tok_s": bound_rate,
            "kvlab_fraction_of_bound": kv_rate / bound_rate, "hf_fraction_of_bound": hf_rate / bound_rate,
            "kvlab_gb_s": kv_rate * bytes_per_step / 1e9, "hf_gb_s": hf_rate * bytes_per_step / 1e9}


def print_comparison(report: dict) -> None:
    mb = report["bytes_per_step"] / 1e6
    print(f"batch-1 greedy decode, {report['new_tokens']} new tokens, {report['threads']} threads, "
          f"median of {report['runs']} runs")
    print(f"  kvlab {report['kvlab_decode_tok_s']:6.1f} tok/s  ({report['kvlab_gb_s']:.1f} GB/s, "
          f"{report['kvlab_fraction_of_bound']:.0%} of the bound)")
    print(f"  HF    {report['hf_decode_tok_s']:6.1f} tok/s  ({report['hf_gb_s']:.1f} GB/s, "
          f"{report['hf_fraction_of_bound']:.0%} of the bound)")
    print(f"  ratio {report['ratio']:.2f}×   bound {report['bound_tok_s']:.0f} tok/s = "
          f"{report['copy_gb_s']:.1f} GB/s measured copy bandwidth / {mb:.0f} MB read per step")
    verdict = "identical" if report["tokens_identical"] else \
        f"DIFFERENT from token {report['tokens_identical_before_first_difference']}"
    print(f"  tokens {verdict}")
