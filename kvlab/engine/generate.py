"""generate(): a fixed batch of prompts, all arriving at once, run through the serving engine to the end.

A thin client of kvlab.engine.engine — the one place where a step is formed. Every prompt is admitted in the
first step (one prefill pass), then every running sequence decodes one token per step; a sequence leaves the
batch when it finishes. With cache="none" each step feeds the whole sequence again.
"""
from __future__ import annotations

from ..cache import KVCache, make_cache
from ..checks import positive_int
from ..progress import progress_bar
from .clock import WallClock
from .engine import Engine, encode_prompt
from .request import Request
from .result import GenerationResult, GenerationStats
from .runner import forward_step  # noqa: F401  (the block-table lab steps its own sequences through it)
from .sampling import check_sampling_args


def prepare_prompts(tokenizer, prompts, chat: bool, context_len: int, vocab_size: int) -> list[list[int]]:
    """Text, a list of texts, or lists of token ids → token id lists (chat template applied on request)."""
    if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
        prompts = [prompts]
    if not prompts:
        raise ValueError("prompts is empty")
    config = _Limits(context_len, vocab_size)
    return [encode_prompt(tokenizer, prompt, chat, config, index) for index, prompt in enumerate(prompts)]


class _Limits:
    def __init__(self, context_len: int, vocab_size: int):
        self.context_len, self.vocab_size = context_len, vocab_size


def generate(model, tokenizer, prompts, max_new_tokens: int = 64, cache: str | KVCache = "contiguous",
             temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None, chat: bool = False,
             stop_at_eos: bool = True, stop_token_ids: list[int] | None = None, progress: bool = False,
             num_samples: int = 1, on_step=None, speculative=None, num_speculative_tokens: int = 4,
             speculative_options: dict | None = None, **cache_options) -> GenerationResult:
    """Generate up to `max_new_tokens` for each prompt through the named cache layout.

    prompts: a string, a list of strings (a ragged batch), or token id lists. Greedy unless temperature > 0
    (then top-p sampling, reproducible with `seed`). chat=True wraps each prompt in the model's chat template.
    num_samples > 1: parallel sampling — each prompt is prefilled once, then forked into that many sequences
    (the cache must fork: "paged" copies the partly filled block at once, "prefix" shares it until one writes);
    the result lists the samples of prompt 0 first, then those of prompt 1, and so on.
    cache: a layout's name ("none", "contiguous", "paged", "prefix", "quantized"), made for this call, or a
    KVCache object that outlives it — a prefix cache keeps the blocks of earlier calls and reuses their prefixes.
    cache_options go to a named layout (paged, prefix: block_size, num_blocks, backend). A pool too small for
    the whole batch preempts (recompute) rather than fails; one too small for a single sequence is refused.
    on_step(step_index, cache, running_seq_ids): called after every step, before finished sequences are freed —
    a figure can read the cache's public state there (block tables, pool occupancy).
    speculative: "ngram" (prompt lookup) or "self" (some of the model's own layers as the draft): each step a
    sequence gets up to num_speculative_tokens drafts, verified in one pass — greedy output is plain greedy's,
    sampled output plain sampling's distribution (kvlab.spec). speculative_options: min_n, max_n (ngram),
    draft_layers (self). result.stats.speculation: drafts proposed / accepted, α, tokens per pass.
    """
    positive_int("max_new_tokens", max_new_tokens)
    samples = positive_int("num_samples", num_samples)
    check_sampling_args(temperature, top_p)
    cfg = model.config
    prompt_ids = prepare_prompts(tokenizer, prompts, chat, cfg.context_len, cfg.vocab_size)
    longest = max(len(p) for p in prompt_ids)
    max_len = min(longest + max_new_tokens, cfg.context_len)
    batch = len(prompt_ids) * samples
    kv = _cache_for(cache, cfg, model, batch, max_len, cache_options)
    # a sequence stops at the context's end: the answer is cut there ("length")
    new_tokens = [max(1, min(max_new_tokens, cfg.context_len - len(ids))) for ids in prompt_ids]
    budget = sum((len(ids) + n) * samples for ids, n in zip(prompt_ids, new_tokens))  # never the limit here
    engine = Engine(model, tokenizer, kv, max_num_seqs=batch, max_num_batched_tokens=budget, policy="continuous",
                    temperature=temperature, top_p=top_p, seed=seed, stop_at_eos=stop_at_eos,
                    stop_token_ids=stop_token_ids, clock=WallClock(), on_step=on_step, speculative=speculative,
                    num_speculative_tokens=num_speculative_tokens, speculative_options=speculative_options)
    for ids, n in zip(prompt_ids, new_tokens):
        engine.add_request(Request(ids, n), num_samples=samples)
    bar = progress_bar(max_new_tokens, progress, "generating", "step")
    try:
        while engine.has_unfinished():
            engine.step()
            if bar is not None:
                bar.update(1)
    finally:
        engine.abandon()  # also after an error: a cache object must not keep them
        if bar is not None:
            bar.close()
    result = engine.result()
    stats = _stats(result, kv, model)
    stats.speculation = result.speculation
    return GenerationResult([o.prompt_token_ids for o in result.outputs], result.token_ids, result.texts,
                            result.finish_reasons, stats)


def _stats(result, kv: KVCache, model) -> GenerationStats:
    """The first step is the prefill (TTFT); the later ones decode."""
    steps = result.steps
    parents = list({o.request_index: o for o in reversed(result.outputs)}.values())  # each prompt's first sample
    stats = GenerationStats(cache=kv.name, device=str(model.device), batch=len(result.outputs),
                            prompt_tokens=sum(len(o.prompt_token_ids) for o in parents),
                            cached_prompt_tokens=sum(o.cached_prompt_tokens for o in parents),
                            new_tokens=result.output_tokens, ttft_s=steps[0].end_s, decode_s=0.0, decode_tokens=0)
    for step in steps[1:]:
        stats.decode_s += step.wall_s
        stats.decode_tokens += step.tokens_out
        stats.step_times_s.append(step.wall_s)
        stats.step_context_lens.append(step.context_len)
        stats.kv_bytes_read_per_step.append(step.kv_bytes_read)
        stats.weight_bytes_read_per_step.append(step.weight_bytes_read)
    return stats


def _cache_for(cache, cfg, model, batch: int, max_len: int, options: dict) -> KVCache:
    if not isinstance(cache, KVCache):
        return make_cache(cache, cfg, model.device, model.dtype, max_batch=batch, max_len=max_len, **options)
    if options:
        raise ValueError(f"cache options {sorted(options)} only apply to a cache named by a string, not to a cache object")
    if cache.lengths:
        raise ValueError(f"the cache object still holds sequences {sorted(cache.lengths)}: free them first")
    if cache.device != model.device or cache.dtype != model.dtype:
        raise ValueError(f"the cache holds {cache.dtype} on {cache.device}, the model runs {model.dtype} on {model.device}")
    return cache
