"""Speculative decoding on the real model, measured beside CLAIMS.md 22 ("2–3× faster decoding", "it helps less
for creative text", "k tokens for the cost of about one decode step").

1. layer sweep — the self-draft's layer subset: α (greedy, k = 4) over the prompts for a few candidates, and the
   weight bytes each reads per draft token against the target's.
2. speed — per prompt (input-grounded and open-ended, kvlab.spec.prompts), per drafter and k: decode tokens/s
   against plain greedy decoding on the same engine (medians of `repeats` runs after a warm-up), the tokens
   (identical, or the run fails), α, tokens per target pass against (1 − α^(k+1)) / (1 − α), and the split of
   the time between drafting and verifying.
3. verify cost — one forward pass of 1 … T new tokens over a cached context: time against one decode step,
   and the width from which it stops costing about one step on this device.
Times are wall-clock medians; each beside the bytes its pass reads. The printed report: kvlab.bench.spec_report.
"""
from __future__ import annotations

import os
import pathlib
import statistics
import time

import torch

from .. import traces
from ..cache import make_cache
from ..engine.generate import generate
from ..engine.runner import forward_pass, sync
from ..spec import draft_model, expected_tokens_per_pass, layer_candidates
from ..spec.prompts import spec_prompts
from .results import RESULTS, merge_sizes, save_result
from .roofs import device_label
from .serve import _clean
from .spec_report import CLAIM, claims, failures, print_report  # noqa: F401 (re-exported: this module's API)

CPU_SIZES = dict(new_tokens=48, ks=(1, 2, 3, 4, 5, 6, 7, 8), sweep_k=4, sweep_tokens=32, context=256,
                 widths=(1, 2, 3, 5, 9, 17, 33, 65), repeats=2)
GPU_SIZES = dict(new_tokens=128, ks=(1, 2, 3, 4, 5, 6, 7, 8), sweep_k=4, sweep_tokens=64, context=4096,
                 widths=(1, 2, 3, 5, 9, 17, 33, 65, 129, 257), repeats=3)


SWEEP_PROMPTS = ("quote a passage", "write a poem")  # one grounded, one open-ended


def default_sizes(device) -> dict:
    return dict(GPU_SIZES if torch.device(device).type == "cuda" else CPU_SIZES)


# --- 1. the self-draft's layers ----------------------------------------------------------------------------------

def layer_sweep(model, tokenizer, prompts: dict, k: int, new_tokens: int) -> dict:
    """α and draft bytes per token of each candidate subset, greedy, summed over the prompts."""
    rows = []
    for name, layers in layer_candidates(model.config.num_layers).items():
        proposed = accepted = 0
        for _, prompt in prompts.values():
            stats = generate(model, tokenizer, prompt, max_new_tokens=new_tokens, cache="paged", stop_at_eos=False,
                             speculative="self",
                             num_speculative_tokens=k, speculative_options={"draft_layers": layers}).stats.speculation
            proposed, accepted = proposed + stats.proposed, accepted + stats.accepted
        rows.append(dict(name=name, layers=list(layers), num_layers=len(layers),
                         weight_bytes=draft_model(model, layers).weight_bytes(), alpha=accepted / max(proposed, 1)))
    best = max(rows, key=lambda r: r["alpha"] * model.weight_bytes() / r["weight_bytes"])
    return dict(k=k, new_tokens=new_tokens, target_weight_bytes=model.weight_bytes(), rows=rows, best=best["name"])


# --- 2. speed ----------------------------------------------------------------------------------------------------

def speed(model, tokenizer, prompts: dict, drafters: dict, ks, new_tokens: int, repeats: int, say=print) -> dict:
    """Per prompt: plain greedy decode tok/s, then per drafter (name → speculative_options) and k."""
    rows = []
    for prompt_name, (kind, prompt) in prompts.items():
        def timed(**spec):
            runs = [generate(model, tokenizer, prompt, max_new_tokens=new_tokens, cache="paged", stop_at_eos=False,
                             **spec) for _ in range(repeats + 1)][1:]  # the first warms up
            return statistics.median(r.stats.decode_tokens / r.stats.decode_s for r in runs), runs[-1]

        plain_tok_s, plain = timed()
        say(f"  {prompt_name}: plain {plain_tok_s:.1f} tok/s", flush=True)
        for drafter, options in drafters.items():
            for k in ks:
                tok_s, run = timed(speculative=drafter, num_speculative_tokens=k, speculative_options=options)
                s = run.stats.speculation
                alpha = s.acceptance_rate
                rows.append(dict(
                    prompt=prompt_name, kind=kind, drafter=drafter, k=k, plain_tok_s=plain_tok_s, tok_s=tok_s,
                    speedup=tok_s / plain_tok_s, same_tokens=run.token_ids == plain.token_ids,
                    proposed=s.proposed, accepted=s.accepted, alpha=alpha, tokens_per_pass=s.tokens_per_pass,
                    iid_tokens_per_pass=expected_tokens_per_pass(alpha, k) if s.proposed else None,
                    acceptance_by_position=s.acceptance_by_position(), draft_s=s.draft_s, verify_s=s.verify_s,
                    decode_s=run.stats.decode_s))
            best = max((r for r in rows if r["prompt"] == prompt_name and r["drafter"] == drafter),
                       key=lambda r: r["speedup"])
            say(f"    {drafter}: best k={best['k']} {best['speedup']:.2f}× (α {best['alpha'] or 0:.2f})", flush=True)
    return dict(new_tokens=new_tokens, ks=list(ks), rows=rows)


# --- 3. the verify pass against k + 1 ---------------------------------------------------------------------------

def verify_cost(model, tokenizer, context: int, widths, repeats: int = 5) -> dict:
    """One pass of T new tokens after `context` cached ones (T − 1 of them drafts, rolled back after each pass),
    every position's logits: median time against T = 1 (a decode step)."""
    widths = sorted(set(widths) | {1})
    ids = traces.text_ids(tokenizer, context + max(widths))
    cache = make_cache("paged", model.config, model.device, model.dtype, 1, context + max(widths))
    cache.add_sequence(0, context + max(widths))
    forward_pass(model, cache, [0], [ids[:context]])
    rows = []
    for width in widths:
        new = ids[context:context + width]

        def one_pass():
            forward_pass(model, cache, [0], [new], [width - 1])
            cache.rollback(0, context)

        times = []
        for i in range(repeats + 1):
            sync(model.device)
            start = time.perf_counter()
            one_pass()
            sync(model.device)
            if i:
                times.append(time.perf_counter() - start)
        rows.append(dict(width=width, time_s=statistics.median(times),
                         weight_bytes=model.weight_bytes(rows=width, head_rows=width)))
    base = rows[0]["time_s"]
    for row in rows:
        row["relative"] = row["time_s"] / base
    flat_until = max((r["width"] for r in rows if r["relative"] <= 1.5), default=1)
    return dict(context=context, rows=rows, flat_until=flat_until)


# --- all of it ---------------------------------------------------------------------------------------------------

def run(model, tokenizer, progress: bool = True, **sizes) -> dict:
    start, load_before = time.perf_counter(), os.getloadavg()[0]
    sizes = merge_sizes(default_sizes(model.device), sizes)
    say = print if progress else (lambda *a, **k: None)
    prompts = spec_prompts(tokenizer)
    report = {"device": device_label(model.device), "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
              "dtype": str(model.dtype).replace("torch.", ""), "prompts": {n: k for n, (k, _) in prompts.items()},
              "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()}}
    say("layer sweep …", flush=True)
    sweep_prompts = {name: prompts[name] for name in SWEEP_PROMPTS}
    report["layer_sweep"] = layer_sweep(model, tokenizer, sweep_prompts, sizes["sweep_k"], sizes["sweep_tokens"])
    best = next(r for r in report["layer_sweep"]["rows"] if r["name"] == report["layer_sweep"]["best"])
    say("speed …", flush=True)
    drafters = {"ngram": None, "self": {"draft_layers": best["layers"]}}
    report["speed"] = speed(model, tokenizer, prompts, drafters, sizes["ks"], sizes["new_tokens"], sizes["repeats"],
                            say)
    say("verify cost …", flush=True)
    report["verify_cost"] = verify_cost(model, tokenizer, sizes["context"], sizes["widths"], sizes["repeats"] + 3)
    report["same_tokens"] = all(r["same_tokens"] for r in report["speed"]["rows"])
    report["claims"] = claims(report)
    report["runtime_s"] = time.perf_counter() - start
    report["load_average"] = {"before": load_before, "after": os.getloadavg()[0], "cpus": os.cpu_count()}
    return _clean(report)


def save(report: dict, folder: pathlib.Path = RESULTS) -> pathlib.Path:
    """benchmarks/results/spec_<device>.json"""
    return save_result("spec", report, folder)
