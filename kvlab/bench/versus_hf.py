"""kvlab's batch-1 greedy decode against HF transformers' `generate`, same GGUF model, same prompt, same process.

Decode tokens/s = (new tokens − 1) / (total time − time to first token), median over runs after a warm-up;
the two engines' runs alternate so that a noisy neighbour slows both. The tokens must be identical.

Three engines: HF (float32 weights, dequantized from the GGUF file at load), kvlab on the same float32 weights,
and kvlab on the GGUF file's own Q4_1/Q8_0 blocks (its default on a CPU: the same weights, 5.6× fewer bytes).
The physical bound of each: a batch-1 decode step reads every weight once (plus the K/V so far), so
  bound tokens/s = measured copy bandwidth / bytes that engine reads per step
and the achieved fraction = tokens/s / bound says how much of the memory system it uses.
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


def check_run_arguments(new_tokens: int, runs: int) -> None:
    """What every engine comparison needs: a decode step after the first token, and at least one timed run."""
    if new_tokens < 2:
        raise ValueError(f"new_tokens must be ≥ 2 (decode starts after the first token), got {new_tokens}")
    if runs < 1:
        raise ValueError(f"runs must be ≥ 1, got {runs}")


HF = "HF transformers"
KVLAB_FLOAT32 = "kvlab, float32 weights"
KVLAB_BLOCKS = "kvlab, GGUF blocks"


def compare_with_hf(model, tokenizer, prompt: str, new_tokens: int = 64, runs: int = 3, hf_model=None) -> dict:
    """Batch-1 greedy decode tokens/s of HF generate and of kvlab reading the float32 weights (as HF does) and,
    where the model has them, the GGUF file's blocks (kvlab's default on a CPU), runs alternating.
    "ratio" is kvlab's default engine over HF; every engine's tokens must equal HF's."""
    check_run_arguments(new_tokens, runs)
    hf_model = hf_model or load_hf_model()
    ids = torch.tensor([tokenizer.encode(prompt)])
    default_reads_blocks = model.decode_reads_blocks
    variants = {KVLAB_FLOAT32: False} | ({KVLAB_BLOCKS: True} if model.can_read_blocks else {})
    rates: dict[str, list[float]] = {name: [] for name in [HF, *variants]}
    tokens, step_bytes = {}, {}
    try:
        _hf_run(hf_model, ids, 4)  # warm-up
        for reads_blocks in variants.values():
            model.decode_reads_blocks = reads_blocks
            generate(model, tokenizer, prompt, max_new_tokens=4, stop_at_eos=False)  # warm-up
        for _ in range(runs):
            rate, tokens[HF] = _hf_run(hf_model, ids, new_tokens)
            rates[HF].append(rate)
            for name, reads_blocks in variants.items():
                model.decode_reads_blocks = reads_blocks
                result = generate(model, tokenizer, prompt, max_new_tokens=new_tokens, stop_at_eos=False)
                rates[name].append(result.stats.decode_tokens_per_s)
                tokens[name] = result.token_ids[0]
                step_bytes[name] = result.stats.bytes_read_per_decode_step  # weights (as this engine reads them) + K/V
    finally:
        model.decode_reads_blocks = default_reads_blocks
    step_bytes[HF] = step_bytes[KVLAB_FLOAT32]  # HF reads the same float32 weights and the same K/V
    bandwidth = device_roofs(model.device).copy.gb_per_s * 1e9
    engines = {}
    for name, engine_rates in rates.items():
        rate = statistics.median(engine_rates)
        bound = bandwidth / step_bytes[name]
        same = next((i for i, (a, b) in enumerate(zip(tokens[name], tokens[HF])) if a != b), len(tokens[name]))
        engines[name] = {"decode_tok_s": rate, "runs_tok_s": engine_rates, "bytes_per_step": step_bytes[name],
                         "bound_tok_s": bound, "fraction_of_bound": rate / bound, "gb_s": rate * step_bytes[name] / 1e9,
                         "tokens_identical": tokens[name] == tokens[HF], "identical_before_first_difference": same}
    default = KVLAB_BLOCKS if default_reads_blocks and KVLAB_BLOCKS in engines else KVLAB_FLOAT32
    return {"prompt_tokens": ids.shape[1], "new_tokens": new_tokens, "runs": runs, "threads": torch.get_num_threads(),
            "copy_gb_s": bandwidth / 1e9, "engines": engines, "kvlab_default": default,
            "ratio": engines[default]["decode_tok_s"] / engines[HF]["decode_tok_s"],
            "tokens_identical": all(e["tokens_identical"] for e in engines.values())}


def print_comparison(report: dict) -> None:
    print(f"batch-1 greedy decode, {report['new_tokens']} new tokens, {report['threads']} threads, median of "
          f"{report['runs']} alternating runs; bound = {report['copy_gb_s']:.1f} GB/s measured copy bandwidth / bytes "
          f"read per step")
    hf_rate = report["engines"][HF]["decode_tok_s"]
    for name, e in report["engines"].items():
        verdict = "tokens = HF's" if e["tokens_identical"] else f"tokens DIFFER from #{e['identical_before_first_difference']}"
        print(f"  {name:24s} {e['decode_tok_s']:6.1f} tok/s  {e['decode_tok_s'] / hf_rate:4.2f}× HF   "
              f"{e['bytes_per_step'] / 1e6:4.0f} MB/step  {e['gb_s']:5.1f} GB/s  bound {e['bound_tok_s']:4.0f} tok/s "
              f"({e['fraction_of_bound']:.0%})  {verdict}")
    print(f"  kvlab's default ({report['kvlab_default']}) / HF: {report['ratio']:.2f}×; tokens "
          f"{'identical' if report['tokens_identical'] else 'NOT identical'}")
