"""CLAIMS.md 1–5, the cache itself: speed-up, O(n²) vs O(n), what recompute recomputes, prefill vs decode."""
from __future__ import annotations

from kvlab.bench.recompute import measure_cache_vs_recompute
from kvlab.bench.roofline import layer_weight_count, measure_decode, measure_prefill, step_flops
from kvlab.bench.roofs import device_roofs

from .ledger import Lab, holds, holds_only_when, measures, ratio_text

PROMPT = "The history of the printing press begins"


def cache_vs_recompute(lab: Lab):
    """Generate N tokens with no cache (every step reruns the whole sequence) and with a contiguous cache."""
    return lab.shared("cache_vs_recompute", lambda: measure_cache_vs_recompute(
        lab.model, lab.tokenizer, PROMPT, new_tokens=lab.size(32, 384), repeats=lab.size(1, 3)))


@measures(1, "01_why_kv_cache.ipynb")
def speedup(lab: Lab):
    r = cache_vs_recompute(lab)
    none, cached = r.paths["none"], r.paths["contiguous"]
    n, length = r.new_tokens, none.context_lens[-1]
    total, last = r.speedup_at(n), none.step_s[-1] / cached.step_s[-1]
    evidence = (f"{n} tokens after a {r.prompt_tokens}-token prompt: {ratio_text(total)} in total, the last step "
                f"{none.step_s[-1] * 1e3:.0f} ms without vs {cached.step_s[-1] * 1e3:.0f} ms with the cache "
                f"({ratio_text(last)}) at {length} tokens; the recompute step grows with the length, the cached one "
                f"barely moves")
    facts = dict(total_speedup=total, last_step_speedup=last, tokens=n, length=length,
                 step_ms_none=none.step_s[-1] * 1e3, step_ms_cached=cached.step_s[-1] * 1e3)
    if last >= 10:
        return holds(evidence, **facts)
    return holds_only_when(f"sequences are long: {ratio_text(last)} a step at {length} tokens here, growing with "
                           f"the length", evidence, **facts)


@measures(2, "01_why_kv_cache.ipynb")
def quadratic_vs_linear(lab: Lab):
    r = cache_vs_recompute(lab)
    none, cached = r.paths["none"], r.paths["contiguous"]
    model = lab.model
    weights_flops = step_flops(model, 1, 0, 1)
    # the context at which attention over the cache does as much work per token as all the weights
    even = next(t for t in range(1, 10**7, 64) if step_flops(model, 1, t, 1) >= 2 * weights_flops)
    grew_none = none.step_s[-1] / none.step_s[0]
    grew_cached = cached.step_s[-1] / cached.step_s[0]
    a, b = none.context_lens[0], none.context_lens[-1]
    evidence = (f"from {a} to {b} tokens the no-cache step grew {ratio_text(grew_none)} (it reruns every token: "
                f"O(t) a step, O(n²) in all), the cached step {ratio_text(grew_cached)}; but each cached step still "
                f"attends over all t cached keys — O(n²) in all — which here matches the {layer_weight_count(model) / 1e6:.0f}M "
                f"layer weights' work per token at ~{even:,} tokens")
    return holds_only_when(f"the context is short next to ~{even:,} tokens (SmolLM2): with a cache the weights' "
                           f"work is O(n) but attention's stays O(n²)", evidence,
                           grew_none=grew_none, grew_cached=grew_cached, attention_equals_weights_at=even,
                           first_len=a, last_len=b)


@measures(3, "01_why_kv_cache.ipynb")
def recompute_count(lab: Lab):
    r = cache_vs_recompute(lab)
    none = r.paths["none"]
    n, prompt = r.new_tokens, r.prompt_tokens
    rows_none = sum(none.context_lens)  # each no-cache step runs every token of the sequence so far
    rows_cached = prompt + n
    at_200 = sum(prompt + t for t in range(200))
    evidence = (f"measured: {n} generated tokens took {len(none.context_lens)} full passes running {rows_none:,} "
                f"token rows through every layer, against {rows_cached:,} with a cache ({ratio_text(rows_none / rows_cached)}); "
                f"at 200 tokens after this {prompt}-token prompt: {at_200:,} rows instead of {prompt + 200:,}")
    return holds(evidence + " — it holds, and undersells: every pass recomputes the K/V of every earlier token in "
                 "every layer, not just attention", rows_none=rows_none, rows_cached=rows_cached, passes=len(none.context_lens),
                 rows_at_200=at_200)


def roofs(lab: Lab):
    return lab.shared("roofs", lambda: device_roofs(lab.device))


@measures(4, "06_decode_is_bandwidth_bound.ipynb")
def prefill_vs_decode(lab: Lab):
    length = lab.size(128, 2048)
    prefill = lab.shared("prefill", lambda: measure_prefill(lab.model, 1, length))
    decode = lab.shared("decode_1", lambda: measure_decode(lab.model, 1, length))
    roof = roofs(lab)
    ridge = roof.ridge_flop_per_byte
    compute_share = prefill.flops_per_s / roof.matmul.flops_per_s
    bandwidth_share = decode.gb_per_s / roof.copy.gb_per_s
    per_token = decode.seconds_per_token / prefill.seconds_per_token
    evidence = (f"prefill of {length} tokens: {prefill.intensity:.0f} FLOP/byte, {compute_share:.0%} of the measured "
                f"matmul roof, {prefill.seconds_per_token * 1e3:.2f} ms a token; decode: {decode.intensity:.1f} FLOP/byte, "
                f"{bandwidth_share:.0%} of the measured copy bandwidth, {decode.seconds_per_token * 1e3:.1f} ms a token — "
                f"prefill is {ratio_text(per_token)} cheaper per token because it reuses every weight it reads for "
                f"{length} tokens (ridge {ridge:.0f} FLOP/byte)")
    facts = dict(prefill_intensity=prefill.intensity, decode_intensity=decode.intensity, ridge=ridge,
                 per_token_ratio=per_token, compute_share=compute_share, bandwidth_share=bandwidth_share)
    if prefill.intensity > ridge > decode.intensity:
        return holds(evidence, **facts)
    return holds_only_when(f"the prefill is long enough to pass the ridge ({ridge:.0f} FLOP/byte)", evidence, **facts)


@measures(5, "06_decode_is_bandwidth_bound.ipynb")
def throughput_memory_bound(lab: Lab):
    batches, context = lab.size((1, 16), (1, 32, 256)), lab.size(32, 512)
    points = [lab.shared(f"decode_b{b}_c{context}", lambda b=b: measure_decode(lab.model, b, context, repeats=lab.size(2, 5)))
              for b in batches]
    ridge = roofs(lab).ridge_flop_per_byte
    first, last = points[0], points[-1]
    tokens_gain = (last.batch / last.seconds) / (first.batch / first.seconds)
    evidence = (f"decode at batch {first.batch}: {first.seconds * 1e3:.0f} ms a step, {first.intensity:.1f} FLOP/byte; "
                f"batch {last.batch}: {last.seconds * 1e3:.0f} ms, {last.intensity:.1f} FLOP/byte "
                f"({ratio_text(tokens_gain)} the tokens/s for {last.batch}× the tokens); ridge {ridge:.0f} FLOP/byte")
    bound = [p.batch for p in points if p.intensity < ridge]
    facts = dict(ridge=ridge, intensities={p.batch: p.intensity for p in points},
                 step_ms={p.batch: p.seconds * 1e3 for p in points}, tokens_gain=tokens_gain)
    if len(bound) == len(points):
        return holds(evidence + f": every measured batch is below the ridge", **facts)
    crossing = min(p.batch for p in points if p.intensity >= ridge)
    return holds_only_when(f"the batch is small: decode passes the ridge by batch {crossing} here (prefill never "
                           f"was memory-bound)", evidence, **facts)
