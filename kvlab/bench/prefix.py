"""Prefix caching on the real model: time to first token when a request's opening blocks are already cached.

A cold request prefills all P tokens of its prompt: ≈ 2 · (matmul weights) · P FLOPs, and P · bytes_per_token
bytes of K/V computed and written. A warm one finds its first H tokens cached (whole blocks, along the hash
chain) and computes only the last P − H: H · bytes_per_token bytes of K/V are not recomputed, and TTFT falls
with the tokens computed (what is left is the work on P − H tokens, attention over all P included).

Each scenario of kvlab.scenarios runs three ways:
  cold     every request through its own fresh paged cache (cache="paged"), after one untimed warm-up prefill;
  warm     every request, one after another, through ONE PrefixCachedPagedCache; the first request fills it;
  together all requests at once on the warm cache, one token each: the shared blocks are held once, by every
           sequence — the memory that sharing saves.
TTFTs are medians over requests; the warm median leaves out the first request, which found nothing cached.
Greedy decoding must give the same tokens warm as cold: a difference is recorded, warned about and printed,
never dropped.
"""
from __future__ import annotations

import dataclasses
import pathlib
import statistics
import time
import warnings

import torch

from ..cache import PrefixCachedPagedCache, blocks_for
from ..checks import positive_int
from ..engine import generate
from ..scenarios import (RAG_REQUESTS, Scenario, chatbot_scenario, chatbot_system_prompt, rag_scenario,
                         reusable_prefix_tokens)
from ..progress import progress_bar
from .results import RESULTS, save_result
from .roofs import device_label

TTFT_REDUCTION_TARGET = 0.85  # warm TTFT at most 15 % of cold for the chatbot
SCENARIOS = ("chatbot", "rag")  # the report's per-scenario keys


def run_prefix_benchmark(model, tokenizer, requests: int = 16, new_tokens: int = 16, rag_requests: int | None = None,
                         block_size: int = 16, progress: bool = True) -> dict:
    """Time the chatbot scenario (`requests` questions after one shared system prompt) and the RAG scenario
    (`rag_requests` of its requests, by default as many as `requests` allows) cold and warm; a plain dict report."""
    if positive_int("requests", requests) < 2:
        raise ValueError("requests must be ≥ 2: the first one only fills the cache")
    positive_int("new_tokens", new_tokens)
    chatbot = chatbot_scenario(tokenizer, requests)
    rag = rag_scenario(tokenizer, min(requests, len(RAG_REQUESTS)) if rag_requests is None else rag_requests)
    bar = progress_bar(sum(_runs(scenario) for scenario in (chatbot, rag)), progress, "prefix benchmark", "run")
    results = {scenario.name: measure_scenario(model, tokenizer, scenario, new_tokens, block_size, bar)
               for scenario in (chatbot, rag)}
    if bar is not None:
        bar.close()
    report = {
        "device": device_label(model.device), "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
        "dtype": str(model.dtype).replace("torch.", ""),
        "parameters": {"requests": requests, "rag_requests": len(rag), "new_tokens": new_tokens,
                       "block_size": block_size,
                       "system_prompt_tokens": len(tokenizer.encode(chatbot_system_prompt()))},
        "bytes_per_token": results["chatbot"]["bytes_per_token"],
        "prefill_flops_per_token": prefill_flops_per_token(model),
        "ttft_reduction_target": TTFT_REDUCTION_TARGET,
        **results,
        "token_exact": all(r["token_exact"] for r in results.values()),
    }
    if not report["token_exact"]:
        warnings.warn(f"prefix benchmark: warm tokens differ from cold for {mismatch_summary(report)}", stacklevel=2)
    return report


def measure_scenario(model, tokenizer, scenario: Scenario, new_tokens: int, block_size: int = 16, bar=None) -> dict:
    """Cold, warm and together runs of one scenario (see the module docstring) → its part of the report."""
    if len(scenario) < 2:
        raise ValueError(f"scenario {scenario.name} needs ≥ 2 requests: the first one only fills the cache")
    prompts = scenario.prompt_ids
    predicted = reusable_prefix_tokens(prompts, block_size)

    def run(batch, cache, max_new_tokens=new_tokens, **options):
        result = generate(model, tokenizer, batch, max_new_tokens=max_new_tokens, cache=cache, stop_at_eos=False,
                          **options)
        if bar is not None:
            bar.update(1)
        return result

    run([prompts[0]], "paged", max_new_tokens=1, block_size=block_size)  # warm-up: one-time costs of a first prefill
    cold = [run([ids], "paged", block_size=block_size) for ids in prompts]
    cache = PrefixCachedPagedCache(model.config, model.device, model.dtype, block_size=block_size,
                                   num_blocks=pool_blocks(prompts, predicted, new_tokens, block_size))
    warm = [run([ids], cache) for ids in prompts]
    stats, blocks_cached = dataclasses.replace(cache.stats), len(cache.index)  # before the together run adds to them
    together = {}

    def read_sharing(step_index, kv, running):
        together.update(sequences=len(running), blocks_shared=kv.shared_blocks(), saved_bytes=kv.saved_bytes(),
                        bytes_held=kv.allocator.num_used * kv.block_bytes())

    run(prompts, cache, max_new_tokens=1, on_step=read_sharing)
    assert together["sequences"] == len(prompts)

    bytes_per_token, flops_per_token = cache.bytes_per_token(), prefill_flops_per_token(model)
    rows = [request_row(label, c, w, expected) for label, c, w, expected in zip(scenario.labels, cold, warm, predicted)]
    cold_ttft = statistics.median(r["cold_ttft_s"] for r in rows)
    warm_ttft = statistics.median(r["warm_ttft_s"] for r in rows[1:])
    assert stats.hit_tokens == sum(r["cached_tokens"] for r in rows)
    return {
        "name": scenario.name, "num_requests": len(rows), "requests": rows,
        "cold_ttft_s": cold_ttft, "warm_ttft_s": warm_ttft, "ttft_reduction": 1 - warm_ttft / cold_ttft,
        "first_warm_ttft_s": rows[0]["warm_ttft_s"],
        "hit_rate": stats.hit_rate, "prompt_tokens": stats.prompt_tokens,
        "tokens_skipped": stats.hit_tokens, "tokens_computed": stats.prompt_tokens - stats.hit_tokens,
        "bytes_per_token": bytes_per_token,
        "kv_bytes_not_recomputed": stats.hit_tokens * bytes_per_token,  # tokens skipped × bytes_per_token
        "prefill_flops_skipped": stats.hit_tokens * flops_per_token,
        "blocks_cached": blocks_cached, "evicted_blocks": stats.evicted_blocks, "block_bytes": cache.block_bytes(),
        "blocks_shared": together["blocks_shared"], "saved_bytes": together["saved_bytes"],
        "bytes_held_together": together["bytes_held"],
        "bytes_without_sharing": together["bytes_held"] + together["saved_bytes"],
        "matches_prediction": all(r["cached_tokens"] == r["predicted_cached_tokens"] for r in rows),
        "token_exact": all(r["tokens_match"] for r in rows),
        "mismatches": [r["label"] for r in rows if not r["tokens_match"]],
    }


def request_row(label: str, cold, warm, predicted_cached: int) -> dict:
    """One request's cold and warm GenerationResults, side by side."""
    prompt_tokens, cached = cold.stats.prompt_tokens, warm.stats.cached_prompt_tokens
    assert cold.stats.cached_prompt_tokens == 0, "a cold run found tokens cached"
    return {"label": label, "prompt_tokens": prompt_tokens, "cached_tokens": cached,
            "predicted_cached_tokens": predicted_cached, "computed_tokens": prompt_tokens - cached,
            "hit_rate": cached / prompt_tokens, "cold_ttft_s": cold.stats.ttft_s, "warm_ttft_s": warm.stats.ttft_s,
            "tokens_match": cold.token_ids == warm.token_ids, "answer": cold.texts[0]}


def pool_blocks(prompts: list[list[int]], reused: list[int], new_tokens: int, block_size: int) -> int:
    """Blocks for every request's uncached tokens and answer, all kept cached afterwards (nothing evicted), plus one
    per request for the together run (its prompt is cached up to the last block)."""
    fresh = sum(blocks_for(len(ids) + new_tokens, block_size) - hit // block_size for ids, hit in zip(prompts, reused))
    return fresh + len(prompts)


def prefill_flops_per_token(model) -> int:
    """2 FLOPs per weight of the layers' matmuls (QKV, output, gate-up, down): the work of one prompt token,
    attention scores and the final logits (one position per prompt) left out."""
    return 2 * sum(p.numel() for p in model.layer_projections())


def _runs(scenario: Scenario) -> int:
    return 1 + 2 * len(scenario) + 1  # warm-up, cold, warm, together


# --- reading and keeping the report ------------------------------------------------------------------------

def print_prefix_report(report: dict) -> None:
    p = report["parameters"]
    print(f"Prefix caching on {report['device']} — {report['dtype']}, block {p['block_size']} tokens, "
          f"{p['new_tokens']} new tokens per request")
    print(f"K/V per token {report['bytes_per_token']:,} B; prefill ≈ {report['prefill_flops_per_token'] / 1e6:.0f} "
          f"MFLOP per token")
    for name in SCENARIOS:
        _print_scenario(report[name], report, p)
    if not report["token_exact"]:
        print(f"\n!!! FAILED: the prefix cache changed the output — warm tokens differ from cold for "
              f"{mismatch_summary(report)}")


def mismatch_summary(report: dict) -> str:
    """'chatbot: <label>, <label>; rag: <label>' for every request whose warm tokens differ from its cold ones."""
    return "; ".join(f"{name}: {', '.join(report[name]['mismatches'])}" for name in SCENARIOS
                     if report[name]["mismatches"])


def _print_scenario(s: dict, report: dict, p: dict) -> None:
    target = report["ttft_reduction_target"]
    verdict = "" if s["name"] != "chatbot" else (" (target ≥ {:.0%}: {})".format(
        target, "met" if s["ttft_reduction"] >= target else "NOT MET"))
    intro = f", system prompt {p['system_prompt_tokens']:,} tokens" if s["name"] == "chatbot" else ""
    print(f"\n{s['name']}: {s['num_requests']} requests{intro}")
    print(f"  TTFT cold {s['cold_ttft_s'] * 1e3:,.0f} ms → warm {s['warm_ttft_s'] * 1e3:,.0f} ms (medians): "
          f"{s['ttft_reduction']:.1%} less{verdict}")
    print(f"  hit rate {s['hit_rate']:.1%}: {s['tokens_skipped']:,} of {s['prompt_tokens']:,} prompt tokens from the "
          f"cache, {s['tokens_computed']:,} computed")
    print(f"  K/V not recomputed: {s['tokens_skipped']:,} tokens × {s['bytes_per_token']:,} B = "
          f"{s['kv_bytes_not_recomputed'] / 1e6:,.1f} MB; prefill skipped ≈ "
          f"{s['prefill_flops_skipped'] / 1e12:.2f} TFLOP")
    print(f"  {s['blocks_cached']} blocks cached, {s['evicted_blocks']} evicted; all {s['num_requests']} at once: "
          f"{s['blocks_shared']} blocks shared, {s['bytes_held_together'] / 1e6:,.1f} MB held instead of "
          f"{s['bytes_without_sharing'] / 1e6:,.1f} MB (saved {s['saved_bytes'] / 1e6:,.1f} MB)")
    exact = "yes" if s["token_exact"] else f"NO — differ for {', '.join(s['mismatches'])}"
    predicted = "yes" if s["matches_prediction"] else "NO"
    print(f"  token-exact (warm == cold): {exact}; cached tokens as predicted: {predicted}")
    print(f"  {'request':<44} {'prompt':>6} {'cached':>6} {'hit':>5} {'cold ms':>8} {'warm ms':>8} {'same':>4}")
    for r in s["requests"]:
        same = "yes" if r["tokens_match"] else "NO"
        print(f"  {r['label'][:44]:<44} {r['prompt_tokens']:>6} {r['cached_tokens']:>6} {r['hit_rate']:>5.0%} "
              f"{r['cold_ttft_s'] * 1e3:>8,.0f} {r['warm_ttft_s'] * 1e3:>8,.0f} {same:>4}")


def save(report: dict, folder: pathlib.Path = RESULTS) -> pathlib.Path:
    """benchmarks/results/prefix_<device>.json"""
    return save_result("prefix", report, folder)
