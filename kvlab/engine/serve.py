"""serve(): replay a list of requests — each with its own arrival time and output length — through the engine.

    result = kvlab.serve(model, tokenizer, [kvlab.Request("Hi", 16), kvlab.Request("Tell me", 32, arrival_s=0.5)],
                         cache="prefix", max_num_seqs=4, max_num_batched_tokens=256)
    result.outputs[0].ttft_s, result.metrics()["tpot_p99_s"], result.steps[3].prefill

build_engine() makes the same engine without running it, for a widget that steps it.
"""
from __future__ import annotations

from ..cache import KVCache, check_cache_options, make_cache
from ..checks import positive_int
from .engine import Engine, encode_prompt
from .request import Request

DEFAULT_MAX_NUM_SEQS = 8
DEFAULT_MAX_NUM_BATCHED_TOKENS = 512  # vLLM uses 2048–8192 on a GPU; a 2-core CPU prefills ~600 tokens a second


def build_engine(model, tokenizer, requests=(), cache: str | KVCache = "prefix", num_blocks: int | None = None,
                 block_size: int = 16, max_num_seqs: int = DEFAULT_MAX_NUM_SEQS,
                 max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS, policy: str = "continuous",
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None, chat: bool = False,
                 stop_at_eos: bool = True, clock=None, on_step=None, preemption: str = "recompute", swap_tier=None,
                 offload_costs=None, speculative=None, num_speculative_tokens: int = 4,
                 speculative_options: dict | None = None, **cache_options) -> Engine:
    """An engine with `requests` queued (Request objects or dicts), every argument checked before anything is made.

    The cache is made for the requests: "contiguous" reserves max_num_seqs rows of the longest request, a paged
    layout gets `num_blocks` blocks (default: room for max_num_seqs of the longest request at once).
    preemption: "recompute", "swap" (K/V to `swap_tier`, by default a tier as large as the pool: see Engine) or "auto".
    speculative: "ngram" | "self" — num_speculative_tokens drafts per decoding sequence and step, verified
    together (kvlab.spec); speculative_options: min_n, max_n (ngram), draft_layers (self)."""
    requests = [Request.of(r, i) for i, r in enumerate(requests)]
    positive_int("max_num_seqs", max_num_seqs)
    cfg = model.config
    ids = [encode_prompt(tokenizer, r.prompt, chat, cfg, i) for i, r in enumerate(requests)]
    longest = max((len(p) + r.max_new_tokens - 1 for p, r in zip(ids, requests)), default=1)
    if not isinstance(cache, KVCache):
        options = dict(cache_options)
        if cache in ("paged", "prefix", "quantized"):
            options["block_size"] = block_size
            if num_blocks is not None:
                options["num_blocks"] = num_blocks
        elif num_blocks is not None:
            raise ValueError(f"num_blocks={num_blocks!r} sizes a block pool; the {cache!r} layout has none")
        check_cache_options(cache, options)
        cache = make_cache(cache, cfg, model.device, model.dtype, max_batch=max_num_seqs,
                           max_len=min(longest, cfg.context_len), **options)
    elif cache_options or num_blocks is not None:
        raise ValueError(f"cache options only apply to a cache named by a string, not to a cache object")
    engine = Engine(model, tokenizer, cache, max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                    policy=policy, temperature=temperature, top_p=top_p, seed=seed, chat=False,
                    stop_at_eos=stop_at_eos, clock=clock, on_step=on_step, preemption=preemption, swap_tier=swap_tier,
                    offload_costs=offload_costs, speculative=speculative, num_speculative_tokens=num_speculative_tokens,
                    speculative_options=speculative_options)
    for prompt_ids, request in zip(ids, requests):
        engine.add_request(Request(prompt_ids, request.max_new_tokens, request.arrival_s))
    engine.chat = chat  # later add_request calls with text apply the template too
    return engine


def serve(model, tokenizer, requests, cache: str | KVCache = "prefix", num_blocks: int | None = None,
          block_size: int = 16, max_num_seqs: int = DEFAULT_MAX_NUM_SEQS,
          max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS, policy: str = "continuous",
          temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None, chat: bool = False,
          stop_at_eos: bool = True, clock=None, progress: bool = False, on_step=None, preemption: str = "recompute",
          swap_tier=None, offload_costs=None, speculative=None, num_speculative_tokens: int = 4,
          speculative_options: dict | None = None, **cache_options):
    """Run every request to completion → ServeResult (outputs in submission order, the step log, metrics)."""
    if not requests:
        raise ValueError("requests is empty")
    engine = build_engine(model, tokenizer, requests, cache=cache, num_blocks=num_blocks, block_size=block_size,
                          max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens, policy=policy,
                          temperature=temperature, top_p=top_p, seed=seed, chat=chat, stop_at_eos=stop_at_eos,
                          clock=clock, on_step=on_step, preemption=preemption, swap_tier=swap_tier,
                          offload_costs=offload_costs, speculative=speculative,
                          num_speculative_tokens=num_speculative_tokens, speculative_options=speculative_options,
                          **cache_options)
    try:
        return engine.run(progress=progress)
    finally:
        engine.abandon()


__all__ = ["serve", "build_engine"]
