"""kvlab's CPU greedy decode against llama.cpp's, same GGUF file, same prompt token ids, same process.

Three engines at each batch B (B copies of one prompt): llama.cpp's batched decode (kvlab.bench.llamacpp_engine),
kvlab's fused C++ per-layer decode (model.fused_decode = True) and kvlab's readable Python forward (False), both
of kvlab's reading the file's Q4_1/Q8_0 blocks. Runs alternate between engines, so a noisy neighbour slows all;
median and range over runs after a warm-up.
  decode tokens/s = tokens of the steps after the first, summed over the batch / (total − time to first token)
  bound tokens/s  = B · measured copy bandwidth / bytes that engine reads per step (weights once + K/V of B sequences)
and the fraction of bound = tokens/s ÷ bound. kvlab's bytes come from its own step records; llama.cpp's are counted
from the file and its f16 K/V (llamacpp_engine says what is counted).
Tokens are compared with kvlab's Python forward at the same batch, reported and not required: llama.cpp
quantizes the activations to 8 bits, so its greedy tokens may drift from kvlab's (which are HF's).
"""
from __future__ import annotations

import json
import pathlib
import statistics

import torch

from ..engine import generate
from ..model.projection import GEMV_MAX_ROWS
from .llamacpp_engine import CONTEXT_SETTINGS, LlamaCppEngine, f16_kv_bytes_per_token, gguf_weight_bytes_per_step
from .results import RESULTS
from .versus_hf import check_run_arguments
from .roofs import device_roofs

LLAMACPP = "llama.cpp"
KVLAB_FUSED = "kvlab, fused C++ decode"
KVLAB_PYTHON = "kvlab, Python forward"


def kvlab_engines(model) -> tuple[dict[str, bool], dict[str, str]]:
    """kvlab's decode paths this model can run (name → model.fused_decode) and those it cannot (name → why)."""
    if not model.can_read_blocks:
        raise ValueError("versus-llamacpp compares kvlab reading the GGUF blocks, which needs a CPU model in float32 "
                         "and kvlab's compiled CPU kernel; this model has no blocks")
    if not model.can_fuse_decode:
        return {KVLAB_PYTHON: False}, {KVLAB_FUSED: "this model cannot run the fused decode (kernel not built?)"}
    return {KVLAB_FUSED: True, KVLAB_PYTHON: False}, {}


def _first_difference(tokens: list[list[int]], reference: list[list[int]]) -> int:
    """Tokens before the first that differs, the worst sequence of the batch."""
    return min(next((i for i, (a, b) in enumerate(zip(seq, ref)) if a != b), min(len(seq), len(ref)))
               for seq, ref in zip(tokens, reference))


def _row(name: str, batch: int, runs_tok_s: list[float], bytes_per_step: float, bandwidth: float,
         tokens: list[list[int]], reference: list[list[int]]) -> dict:
    rate = statistics.median(runs_tok_s)
    bound = batch * bandwidth / bytes_per_step
    return {"engine": name, "batch": batch, "decode_tok_s": rate, "min_tok_s": min(runs_tok_s),
            "max_tok_s": max(runs_tok_s), "runs_tok_s": runs_tok_s, "bytes_per_step": bytes_per_step,
            "bound_tok_s": bound, "fraction_of_bound": rate / bound, "gb_s": rate / batch * bytes_per_step / 1e9,
            "tokens_identical": tokens == reference, "identical_before_first_difference": _first_difference(tokens, reference)}


def paired_ratio(kvlab_runs: list[float], llama_runs: list[float], batch: int) -> dict:
    """kvlab / llama.cpp as the ratio of the medians, and run by run: run k of each engine ran back to back, so
    their ratio cancels most of what a noisy neighbour does to both."""
    paired = [a / b for a, b in zip(kvlab_runs, llama_runs)]
    return {"batch": batch, "kvlab_over_llamacpp": statistics.median(kvlab_runs) / statistics.median(llama_runs),
            "paired_runs": paired, "paired_median": statistics.median(paired)}


def _check_arguments(new_tokens: int, runs: int, batches) -> list[int]:
    check_run_arguments(new_tokens, runs)
    batches = list(batches)
    if not batches or any(b < 1 for b in batches):
        raise ValueError(f"every batch must be ≥ 1, got batches={batches}")
    return batches


def compare_with_llamacpp(model, tokenizer, prompt: str, new_tokens: int = 64, runs: int = 5,
                          batches=(1, 4, 16), threads: int | None = None, llama=None) -> dict:
    """Decode tokens/s of llama.cpp, kvlab fused and kvlab's Python forward at each batch, runs alternating.
    threads: llama.cpp's (default: torch's, which kvlab uses). llama: a LlamaCppEngine (default: one on the GGUF
    file, closed at the end). "ratios": kvlab fused (or, where it cannot run, its Python forward) / llama.cpp.
    kvlab's fused path takes up to GEMV_MAX_ROWS sequences; a larger batch decodes through the Python forward."""
    from ..model.gguf_file import find_model_file

    batches = _check_arguments(new_tokens, runs, batches)
    threads = threads or torch.get_num_threads()
    ids = tokenizer.encode(prompt)
    kvlab, not_measured = kvlab_engines(model)
    own_llama = llama is None
    if own_llama:
        try:
            llama = LlamaCppEngine(find_model_file(), threads, len(ids) + new_tokens)
        except NotImplementedError as error:  # some of the batched-decode API is missing
            llama, not_measured[LLAMACPP] = None, str(error)
    defaults = model.decode_reads_blocks, model.fused_decode
    rates = {}
    tokens, step_bytes = {}, {}
    names = ([LLAMACPP] if llama else []) + list(kvlab)
    try:
        for batch in batches:  # warm-up
            if llama:
                llama.generate(ids, batch, min(new_tokens, 4))
            for fused in kvlab.values():
                model.decode_reads_blocks, model.fused_decode = True, fused
                generate(model, tokenizer, [ids] * batch, max_new_tokens=min(new_tokens, 4), stop_at_eos=False)
        for _ in range(runs):
            for batch in batches:
                if llama:
                    run = llama.generate(ids, batch, new_tokens)
                    rates.setdefault((LLAMACPP, batch), []).append(run.decode_tokens_per_s)
                    tokens[LLAMACPP, batch] = run.token_ids
                for name, fused in kvlab.items():
                    model.decode_reads_blocks, model.fused_decode = True, fused
                    result = generate(model, tokenizer, [ids] * batch, max_new_tokens=new_tokens, stop_at_eos=False)
                    rates.setdefault((name, batch), []).append(result.stats.decode_tokens_per_s)
                    tokens[name, batch] = result.token_ids
                    step_bytes[name, batch] = result.stats.bytes_read_per_decode_step  # blocks as read + K/V
    finally:
        model.decode_reads_blocks, model.fused_decode = defaults
        if own_llama and llama:
            llama.close()
    weight_bytes = gguf_weight_bytes_per_step(find_model_file())
    mean_context = len(ids) + new_tokens / 2  # decode step k (1 … new_tokens − 1) attends over prompt + k tokens
    for batch in batches:
        step_bytes[LLAMACPP, batch] = weight_bytes + batch * f16_kv_bytes_per_token(model.config) * mean_context
    bandwidth = device_roofs(model.device).copy.gb_per_s * 1e9
    rows = [_row(name, batch, rates[name, batch], step_bytes[name, batch], bandwidth, tokens[name, batch],
                 tokens[KVLAB_PYTHON, batch]) for batch in batches for name in names]
    ratio_engine = KVLAB_FUSED if KVLAB_FUSED in kvlab else KVLAB_PYTHON
    ratios = [paired_ratio(rates[ratio_engine, b], rates[LLAMACPP, b], b) for b in batches if llama]
    return {"prompt_tokens": len(ids), "new_tokens": new_tokens, "runs": runs, "batches": batches,
            "threads": torch.get_num_threads(), "llama_cpp_threads": threads,
            "llama_cpp_version": getattr(llama, "version", None), "llama_cpp_context": CONTEXT_SETTINGS,
            "copy_gb_s": bandwidth / 1e9,
            "reference": KVLAB_PYTHON, "rows": rows, "ratio_engine": ratio_engine, "ratios": ratios,
            "not_measured": not_measured, "notes": [f"batch {b}: above GEMV_MAX_ROWS = {GEMV_MAX_ROWS}, kvlab "
                                                    "decodes through the Python forward" for b in batches
                                                    if b > GEMV_MAX_ROWS and KVLAB_FUSED in kvlab]}


def print_comparison(report: dict) -> None:
    print(f"greedy decode tokens/s (summed over the batch), {report['new_tokens']} new tokens, median [min–max] of "
          f"{report['runs']} alternating runs; kvlab on {report['threads']} torch threads, llama.cpp "
          f"{report['llama_cpp_version'] or '(not run)'} on {report['llama_cpp_threads']}; bound = batch · "
          f"{report['copy_gb_s']:.1f} GB/s copy / bytes read per step")
    llama = {r["batch"]: r["decode_tok_s"] for r in report["rows"] if r["engine"] == LLAMACPP}
    print(f"  {'engine':24s} {'batch':>5s} {'tok/s [min–max]':>22s} {'× llama.cpp':>11s} {'MB/step':>8s} "
          f"{'of bound':>8s}  tokens vs {report['reference']}")
    for r in report["rows"]:
        ratio = f"{r['decode_tok_s'] / llama[r['batch']]:.2f}×" if r["batch"] in llama else "–"
        same = ("same" if r["tokens_identical"]
                else f"differ from #{r['identical_before_first_difference']} of {report['new_tokens']}")
        spread = f"{r['decode_tok_s']:6.1f} [{r['min_tok_s']:.1f}–{r['max_tok_s']:.1f}]"
        print(f"  {r['engine']:24s} {r['batch']:5d} {spread:>22s} {ratio:>11s} {r['bytes_per_step'] / 1e6:8.1f} "
              f"{r['fraction_of_bound']:8.0%}  {same}")
    if report["ratios"]:
        print(f"  {report['ratio_engine']} / llama.cpp: "
              + ", ".join(f"{r['kvlab_over_llamacpp']:.2f}× at batch {r['batch']}" for r in report["ratios"]))
        print("  run by run (each pair back to back): " + ", ".join(
            f"batch {r['batch']} median {r['paired_median']:.2f}× [{min(r['paired_runs']):.2f}–{max(r['paired_runs']):.2f}]"
            for r in report["ratios"] if "paired_runs" in r))
    for name, why in report["not_measured"].items():
        print(f"  not measured: {name} — {why}")
    for note in report.get("notes", []):
        print(f"  note: {note}")


def recorded_comparisons(folder: str | pathlib.Path = RESULTS) -> list[dict]:
    """The recorded results, benchmarks/results/versus_llamacpp_<device>.json, oldest file name first."""
    return [json.loads(p.read_text()) for p in sorted(pathlib.Path(folder).glob("versus_llamacpp_*.json"))]
