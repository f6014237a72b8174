"""What quantizing the KV cache costs in accuracy, on the real model: perplexity, greedy agreement, memory.

* Perplexity on standard-library docstrings (kvlab.corpus, read at run time): each window is fed in one
  step through the quantized layout, whose attention lets every position see the earlier tokens exactly as
  decoding would (quantized; kivi2: its own block in full precision). exp(mean next-token NLL).
* Greedy agreement with the full-precision cache over fixed prompts: how many generated tokens are identical
  before the first difference (after one, the continuations are different texts, so later matches say little).
* Memory: K/V bytes per token over all layers, against the model's own dtype and against bf16.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from kvlab.cache import PagedCache, QuantizedPagedCache, make_cache, make_scheme
from kvlab.corpus import perplexity_windows
from kvlab.engine.generate import generate

from ..progress import with_progress

AGREEMENT_PROMPTS = (
    "The history of the printing press",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "Explain in simple words why the sky is blue.",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "The three most important things to know about photosynthesis are",
    "Dear hiring manager, I am writing to apply for the position of",
)
DEFAULT_CONFIGS = (("int8", None), ("fp8", None), ("int4", 32), ("int4", 16), ("kivi2", 32))


@dataclass
class SchemeAccuracy:
    scheme: str  # "bf16/fp32 (no quantization)" for the baseline
    group_size: int | None
    bytes_per_token: int
    memory_vs_model_dtype: float
    memory_vs_bf16: float
    perplexity: float
    perplexity_delta: float
    agreement: float  # mean fraction of tokens identical before the first difference
    identical_prompts: int
    first_difference: list[int]  # per prompt: index of the first different token (new_tokens when none)


def quantized_cache(model, scheme: str, group_size: int | None, max_len: int, max_batch: int = 1,
                    block_size: int = 16, backend: str | None = None) -> QuantizedPagedCache:
    return make_cache("quantized", model.config, model.device, model.dtype, max_batch, max_len, block_size=block_size,
                      scheme=scheme, group_size=group_size, backend=backend)


def full_precision_cache(model, max_len: int, max_batch: int = 1, block_size: int = 16) -> PagedCache:
    return make_cache("paged", model.config, model.device, model.dtype, max_batch, max_len, block_size=block_size)


def window_nll(model, ids: list[int], cache) -> torch.Tensor:
    """Next-token negative log-likelihoods [len(ids) − 1] of one window fed in one step through `cache`."""
    cache.add_sequence(0, len(ids))
    try:
        cache.begin_step([0], [len(ids)], [ids])
        logits = model.forward(torch.tensor([ids], device=model.device), cache, all_positions=True)[0]  # [T, vocab]
        cache.end_step()
    finally:
        if cache.current_step is not None:
            cache.abort_step()
        cache.free_sequence(0)
    targets = torch.tensor(ids[1:], device=logits.device)
    return F.cross_entropy(logits[:-1].float(), targets, reduction="none")


def perplexity(model, windows: list[list[int]], make_cache) -> float:
    """exp(mean NLL) over all windows' next tokens; make_cache(max_len) builds an empty cache."""
    nll = torch.cat([window_nll(model, ids, make_cache(len(ids))) for ids in windows])
    return math.exp(nll.mean().item())


def first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def bf16_bytes_per_token(config) -> int:
    return 2 * config.num_layers * config.num_kv_heads * config.head_dim * 2


def measure_scheme(model, tokenizer, scheme: str | None, group_size: int | None, windows, reference_ppl: float,
                   reference_ids: list[list[int]], new_tokens: int, prompts=AGREEMENT_PROMPTS) -> SchemeAccuracy:
    """One scheme's row (scheme=None: the full-precision baseline)."""
    cfg = model.config
    longest = max(len(tokenizer.encode(p)) for p in prompts) + new_tokens
    if scheme is None:
        def make(n):
            return full_precision_cache(model, n)
        bytes_per_token, name = full_precision_cache(model, 16).bytes_per_token(), f"{str(model.dtype)[6:]} (none)"
        ppl, ids = reference_ppl, reference_ids
    else:
        def make(n, batch=1):
            return quantized_cache(model, scheme, group_size, n, max_batch=batch)
        bytes_per_token, name = make(16).bytes_per_token(), scheme
        ppl = perplexity(model, windows, make)
        ids = generate(model, tokenizer, list(prompts), max_new_tokens=new_tokens, stop_at_eos=False,
                       cache=make(longest, len(prompts))).token_ids
    firsts = [first_difference(a, b) for a, b in zip(ids, reference_ids)]
    model_bytes = full_precision_cache(model, 16).bytes_per_token()
    return SchemeAccuracy(
        scheme=name, group_size=None if scheme is None else make_scheme(scheme, cfg.head_dim, group_size).group_size,
        bytes_per_token=bytes_per_token, memory_vs_model_dtype=bytes_per_token / model_bytes,
        memory_vs_bf16=bytes_per_token / bf16_bytes_per_token(cfg), perplexity=ppl,
        perplexity_delta=ppl - reference_ppl, agreement=sum(firsts) / (new_tokens * len(firsts)),
        identical_prompts=sum(f == new_tokens for f in firsts), first_difference=firsts,
    )


def run_accuracy(model, tokenizer, configs=DEFAULT_CONFIGS, num_windows: int = 8, tokens_per_window: int = 256,
                 new_tokens: int = 32, progress: bool = True) -> dict:
    """The baseline and every (scheme, group_size) in `configs`: a report of SchemeAccuracy rows."""
    windows = perplexity_windows(tokenizer, num_windows, tokens_per_window)
    reference_ppl = perplexity(model, windows, lambda n: full_precision_cache(model, n))
    longest = max(len(tokenizer.encode(p)) for p in AGREEMENT_PROMPTS) + new_tokens
    reference_ids = generate(model, tokenizer, list(AGREEMENT_PROMPTS), max_new_tokens=new_tokens, stop_at_eos=False,
                             cache=full_precision_cache(model, longest, len(AGREEMENT_PROMPTS))).token_ids
    rows = [measure_scheme(model, tokenizer, None, None, windows, reference_ppl, reference_ids, new_tokens)]
    for scheme, group in with_progress(list(configs), progress, "quantized KV accuracy", "scheme"):
        rows.append(measure_scheme(model, tokenizer, scheme, group, windows, reference_ppl, reference_ids, new_tokens))
    return {"corpus": f"{num_windows} windows × {tokens_per_window} tokens of standard-library docstrings",
            "prompts": len(AGREEMENT_PROMPTS), "new_tokens": new_tokens, "rows": [asdict(r) for r in rows]}


def print_accuracy(report: dict) -> None:
    print(f"perplexity on {report['corpus']}; greedy agreement over {report['prompts']} prompts × "
          f"{report['new_tokens']} tokens")
    print(f"{'scheme':<16} {'group':>5} {'B/token':>8} {'vs bf16':>7} {'ppl':>8} {'Δppl':>7} {'agree':>6} {'same':>5}")
    for r in report["rows"]:
        group = "-" if r["group_size"] is None else r["group_size"]
        print(f"{r['scheme']:<16} {group:>5} {r['bytes_per_token']:>8} {r['memory_vs_bf16']:>6.2f}× "
              f"{r['perplexity']:>8.3f} {r['perplexity_delta']:>+7.3f} {r['agreement']:>6.0%} "
              f"{r['identical_prompts']:>2}/{report['prompts']}")
