"""CLAIMS.md 6–10, memory: bytes per token, the copied snippet, Llama-2-13B at batch 8, "many gigabytes", MHA/GQA/MQA.

The byte counts of other models come from kvlab.memory's formula; what is measured is that the formula equals
the bytes a real cache allocates (SmolLM2's, after a real prefill, and a Llama-3-8B-shaped one), and the time of
decode attention with fewer KV heads."""
from __future__ import annotations

import statistics

import torch

from kvlab.bench.gqa import time_decode
from kvlab.cache import ContiguousCache
from kvlab.engine import generate
from kvlab.memory import GiB, PRESETS, format_bytes, kv_bytes_per_token, kv_bytes_per_token_per_layer, kv_cache_bytes, \
    max_context_for_budget, with_kv_heads

from .ledger import Lab, holds, holds_only_when, measures, not_measurable, wrong_by

LLAMA3 = PRESETS["Llama-3-8B"]


def measured_bytes_per_token(lab: Lab) -> dict:
    """Bytes per token of SmolLM2's real cache after a real prefill, and of a Llama-3-8B-shaped cache."""
    def measure():
        model = lab.model
        prompt = "A KV cache keeps the keys and values of every token it has seen"
        cache = ContiguousCache(model.config, model.device, model.dtype, max_batch=1, max_len=64)
        generate(lab.model, lab.tokenizer, prompt, max_new_tokens=4, cache=cache, stop_at_eos=False)
        held = sum(t.numel() * t.element_size() for t in cache.k + cache.v)  # the slab as allocated
        llama = ContiguousCache(LLAMA3, "cpu", torch.bfloat16, max_batch=1, max_len=4096)
        llama_bytes = sum(t.numel() * t.element_size() for t in llama.k + llama.v)
        del llama
        return dict(smol_bytes_per_token=held // 64, smol_formula=kv_bytes_per_token(model.config, model.dtype),
                    llama_4k_bytes=llama_bytes, llama_4k_formula=kv_cache_bytes(LLAMA3, 4096))
    return lab.shared("bytes_per_token", measure)


@measures(6, "01_why_kv_cache.ipynb")
def per_token_formula(lab: Lab):
    m = measured_bytes_per_token(lab)
    per_layer = kv_bytes_per_token_per_layer(LLAMA3)
    at_4k, at_128k = kv_cache_bytes(LLAMA3, 4096), kv_cache_bytes(LLAMA3, 131072)
    evidence = (f"SmolLM2's real cache holds {m['smol_bytes_per_token']:,} B a token (formula "
                f"{m['smol_formula']:,}); a Llama-3-8B-shaped bf16 cache for 4K tokens allocates "
                f"{format_bytes(m['llama_4k_bytes'])} (formula {format_bytes(at_4k)}); so {per_layer:,} B a token a "
                f"layer, and 128K tokens → {format_bytes(at_128k)}")
    facts = dict(m, per_layer=per_layer, at_128k=at_128k)
    exact = m["smol_bytes_per_token"] == m["smol_formula"] and m["llama_4k_bytes"] == at_4k
    if exact and per_layer == 4096 and at_4k == 512 * 2**20 and at_128k == 16 * GiB:
        return holds(evidence + " (binary units: MiB, GiB)", **facts)
    return wrong_by(max(per_layer, 4096) / min(per_layer, 4096), evidence, **facts)


SNIPPET_GB = {2048: 0.03, 8192: 0.13, 32768: 0.50, 131072: 2.00}


@measures(7, "01_why_kv_cache.ipynb")
def copied_snippet(lab: Lab):
    measured_bytes_per_token(lab)  # the formula is the one checked against real caches in claim 6
    actual = {n: kv_cache_bytes(LLAMA3, n) / GiB for n in SNIPPET_GB}
    factor = statistics.median(actual[n] / SNIPPET_GB[n] for n in SNIPPET_GB)
    causes = {"one KV head instead of 8": LLAMA3.num_kv_heads, "one layer instead of 32": LLAMA3.num_layers,
              "K or V, not both": 2, "1-byte numbers": 2}
    cause = min(causes, key=lambda c: abs(causes[c] - factor))
    shown = " / ".join(f"{actual[n]:.2f}" for n in SNIPPET_GB)
    evidence = (f"Llama-3-8B bf16 at 2K / 8K / 32K / 128K tokens: {shown} GiB against the snippet's "
                f"{' / '.join(f'{v:.2f}' for v in SNIPPET_GB.values())}; the snippet is {factor:.1f}× low, "
                f"as if it counted {cause}")
    return wrong_by(factor, evidence, "too small", actual_gib=actual, snippet_factor=factor, cause=cause)


@measures(8, "01_why_kv_cache.ipynb")
def llama2_13b_batch8(lab: Lab):
    shape = PRESETS["Llama-2-13B"]
    total = kv_cache_bytes(shape, 4096, batch=8)
    off = total / 26e9
    evidence = (f"2 × {shape.num_layers} layers × {shape.num_kv_heads} KV heads (MHA) × {shape.head_dim} × 2 B = "
                f"{kv_bytes_per_token(shape):,} B a token × 4,096 × 8 = {total / 1e9:.1f} GB ({total / GiB:.1f} GiB)")
    if 0.9 <= off <= 1.1:
        return holds(evidence, total_bytes=total, ratio=off)
    return wrong_by(max(off, 1 / off), evidence, total_bytes=total, ratio=off)


@measures(9, "01_why_kv_cache.ipynb")
def many_gigabytes(lab: Lab):
    m = measured_bytes_per_token(lab)
    smol_full = m["smol_formula"] * lab.model.config.context_len
    gib_context = max_context_for_budget(LLAMA3, GiB) + 1
    evidence = (f"SmolLM2's whole {lab.model.config.context_len:,}-token context holds {format_bytes(smol_full)} "
                f"({lab.model.dtype}); Llama-3-8B passes 1 GiB for one request at {gib_context:,} tokens and holds "
                f"{format_bytes(kv_cache_bytes(LLAMA3, 131072))} at 128K")
    return holds_only_when(f"the model is large and the context long (Llama-3-8B: from ~{gib_context // 1024}K "
                           f"tokens a request); never for SmolLM2", evidence, smol_full_context_bytes=smol_full,
                           llama_gib_at_tokens=gib_context)


@measures(10, "07_gqa.ipynb")
def mha_gqa_mqa(lab: Lab):
    sizes = {heads: kv_cache_bytes(with_kv_heads(LLAMA3, heads), 32768) / GiB for heads in (32, 8, 1)}
    cfg = lab.model.config
    context = lab.size(1024, 8192)
    times = lab.shared("gqa_times", lambda: {h: time_decode(lab.device, 4, context, cfg.num_heads, h, cfg.head_dim, 16,
                                                            lab.model.dtype) for h in (cfg.num_heads, cfg.num_kv_heads, 1)})
    mha, gqa, mqa = (times[h] for h in (cfg.num_heads, cfg.num_kv_heads, 1))
    evidence = (f"Llama-3-8B at 32K: {sizes[32]:.1f} / {sizes[8]:.1f} / {sizes[1]:.2f} GiB (MHA / GQA-8 / MQA); "
                f"SmolLM2-shaped decode attention (batch 4, {context} tokens) {mha * 1e3:.2f} / {gqa * 1e3:.2f} / "
                f"{mqa * 1e3:.2f} ms with {cfg.num_heads} / {cfg.num_kv_heads} / 1 KV heads "
                f"({mha / gqa:.1f}× for {cfg.num_heads // cfg.num_kv_heads}× fewer bytes)")
    facts = dict(gib=sizes, attention_ms={h: t * 1e3 for h, t in times.items()})
    if abs(sizes[32] - 16) < 0.01 and abs(sizes[8] - 4) < 0.01 and abs(sizes[1] - 0.5) < 0.01:
        return holds(evidence + "; the quality half needs models trained with each head count (this lab has one)",
                     **facts)
    return not_measurable("the sizes differ from the claim's and quality needs models trained per head count",
                          evidence, **facts)
