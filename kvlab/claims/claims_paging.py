"""CLAIMS.md 11–15, paging and sharing: reserved rows, PagedAttention's waste, blocks on demand, prefix caching,
copy-on-write — on kvlab's real caches and allocators."""
from __future__ import annotations

from kvlab.bench.fragmentation import compare_layouts
from kvlab.cache import ContiguousCache, PagedCache, PrefixCachedPagedCache
from kvlab.engine import generate
from kvlab.scenarios import chatbot_scenario, parallel_sampling_scenario
from kvlab.workload import chat_trace

from .ledger import Lab, holds, holds_only_when, measures, ratio_text, wrong_by


@measures(11, "02_paged_attention.ipynb")
def reserved_rows(lab: Lab):
    model = lab.model
    context = model.config.context_len
    prompt = lab.tokenizer.encode("Explain in one paragraph why a language model needs a KV cache at all.")
    answer = 100 - len(prompt)
    cache = ContiguousCache(model.config, model.device, model.dtype, max_batch=1, max_len=context)
    seen = {}
    generate(model, lab.tokenizer, [prompt], max_new_tokens=answer, cache=cache, stop_at_eos=False,
             on_step=lambda step, kv, running: seen.update(tokens=kv.num_cached(running[0])))
    empty_here, empty_32k = 1 - seen["tokens"] / context, 1 - seen["tokens"] / 32768
    replay = layouts(lab)
    contiguous, paged = replay["contiguous-max"], replay["paged"]
    evidence = (f"a real {seen['tokens']}-token request in a row reserved for SmolLM2's {context:,}-token context: "
                f"{empty_here:.1%} of the row empty ({empty_32k:.1%} in a 32K row); on a 200-request chat trace in "
                f"one pool, reserving the maximum held {contiguous.mean_concurrency:.1f} requests at once against "
                f"{paged.mean_concurrency:.1f} paged — the batch, and so throughput, stops growing")
    return holds(evidence + " (the 90 % understates it)", empty_share=empty_here, empty_share_32k=empty_32k,
                 concurrency_contiguous=contiguous.mean_concurrency, concurrency_paged=paged.mean_concurrency)


def layouts(lab: Lab):
    return lab.shared("fragmentation", lambda: compare_layouts(chat_trace(200, seed=0), block_size=16))


@measures(12, "03_fragmentation.ipynb")
def paged_waste(lab: Lab):
    replay = layouts(lab)
    contiguous, paged = replay["contiguous-max"], replay["paged"]
    paged_waste, contiguous_waste = 1 - paged.usage, 1 - contiguous.usage
    internal = paged.share_of_reserved("internal")
    more = paged.mean_concurrency / contiguous.mean_concurrency
    faster = contiguous.steps / paged.steps
    evidence = (f"chat trace, same pool, block 16: paged wastes {paged_waste:.1%} of what it reserves (all of it "
                f"internal: the last block's empty tail, {internal:.1%}), reserving the maximum wastes "
                f"{contiguous_waste:.1%}; paged holds {ratio_text(more)} the requests at once and finishes the trace in "
                f"{ratio_text(faster)} fewer steps")
    facts = dict(paged_waste=paged_waste, contiguous_waste=contiguous_waste, internal=internal,
                 concurrency_ratio=more, steps_ratio=faster)
    if paged_waste < 0.04:
        return holds_only_when(f"blocks are small — and only in part: {paged_waste:.1%} waste against "
                               f"{contiguous_waste:.0%}, but {ratio_text(more)} (not 2–4×) the requests held on this "
                               f"trace, and the waste left is internal fragmentation: paging bounds it to under one "
                               f"block a sequence, it does not remove it", evidence, **facts)
    return wrong_by(paged_waste / 0.04, evidence, "the paged waste", **facts)


@measures(13, "02_paged_attention.ipynb")
def blocks_on_demand(lab: Lab):
    """A pool of exactly the two blocks one request needs: the second request can only run on the blocks the
    first freed."""
    model, block, pool = lab.model, 16, 2
    cache = PagedCache(model.config, model.device, model.dtype, num_blocks=pool, block_size=block)
    used, tables = [], []

    def look(step, kv, running):
        used.append((kv.num_cached(running[0]), kv.allocator.num_used))
        tables.append(set(kv.block_tables[running[0]]))

    prompt = lab.tokenizer.encode("Blocks are taken from the pool only when a token needs one")[:13]
    generate(model, lab.tokenizer, [prompt], max_new_tokens=20, cache=cache, stop_at_eos=False, on_step=look)
    first_run, first_blocks = list(used), set().union(*tables)
    free_after = cache.allocator.num_free
    second = generate(model, lab.tokenizer, [prompt], max_new_tokens=20, cache=cache, stop_at_eos=False,
                      on_step=look)
    reused = len(second.token_ids[0]) == 20 and tables[-1] <= first_blocks and cache.allocator.num_free == pool
    grew_at = [tokens for (tokens, n), (_, before) in zip(first_run[1:], first_run) if n > before]
    on_demand = all(n == -(-tokens // block) for tokens, n in first_run)
    evidence = (f"a {len(prompt)}-token prompt, 20 tokens generated, block size {block}, a pool of {pool} blocks: "
                f"blocks in use {first_run[0][1]} → {first_run[-1][1]}, the new block taken at {grew_at} cached tokens "
                f"(one past the block boundary); when it finished {free_after} of {pool} blocks were free, and a second "
                f"request {'ran to the end on the very blocks the first had freed' if reused else 'could not reuse them'}")
    facts = dict(blocks_by_tokens=first_run, grew_at=grew_at, free_after=free_after, reused=reused)
    if on_demand and reused and free_after == pool:
        return holds(evidence, **facts)
    return holds_only_when("the layout allocates lazily and frees at once (this run did not)", evidence, **facts)


@measures(14, "04_prefix_caching.ipynb")
def prefix_ttft(lab: Lab):
    model, tokenizer = lab.model, lab.tokenizer
    chat = chatbot_scenario(tokenizer, num_requests=3)
    first, second = chat.prompt_ids[0], chat.prompt_ids[1]
    system = _common(first, second)  # the system prompt, as the chat template renders it

    def ttft(prompts, cache):
        return [generate(model, tokenizer, [p], max_new_tokens=1, cache=cache).stats.ttft_s for p in prompts]

    def fresh():
        return PrefixCachedPagedCache(model.config, model.device, model.dtype, num_blocks=200, block_size=16)

    ttft([first[:96], first[:112]], fresh())  # warm-up of both paths: a cold prefill, then a prefix hit
    cold = ttft([second], fresh())[0]
    warm = ttft([first, second], fresh())[1]
    cut = 1 - warm / cold
    evidence = (f"the lab's chatbot system prompt: {system:,} tokens; a {len(second):,}-token request's TTFT "
                f"{cold * 1e3:.0f} ms cold, {warm * 1e3:.0f} ms once another request left the prefix in the pool: "
                f"{cut:.0%} less")
    facts = dict(system_tokens=system, cold_ms=cold * 1e3, warm_ms=warm * 1e3, cut=cut, prompt_tokens=len(second))
    lab.memo["chat_cold_ttft_s"] = cold
    if 0.5 <= cut <= 0.9 and 500 <= system <= 2000:
        return holds(evidence, **facts)
    if cut > 0.9:
        return holds_only_when(f"the shared prefix is most of the prompt — then it cuts more than 90 % "
                               f"({cut:.1%} here)", evidence, **facts)
    share = system / len(second)
    return holds_only_when(f"the prefix is long and the device's per-token prefill cost dominates: {cut:.0%} less here "
                           f"although {share:.0%} of the prompt was cached — the new tokens still attend over every "
                           f"cached one, and a step's fixed costs remain", evidence, cached_share=share, **facts)


def _common(a, b) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@measures(15, "04_prefix_caching.ipynb")
def copy_on_write(lab: Lab):
    model, tokenizer = lab.model, lab.tokenizer
    sampling = parallel_sampling_scenario(tokenizer, 4)
    cache = PrefixCachedPagedCache(model.config, model.device, model.dtype, num_blocks=64, block_size=16)
    seen = []
    generate(model, tokenizer, sampling.prompt_ids, max_new_tokens=3, num_samples=4, temperature=0.9, seed=0,
             cache=cache, on_step=lambda step, kv, running: seen.append(kv.shared_blocks()))
    prompt_blocks = len(sampling.prompt_ids) // 16
    partial = len(sampling.prompt_ids) % 16
    evidence = (f"4 samples of a {len(sampling.prompt_ids)}-token prompt ({prompt_blocks} full blocks + {partial} "
                f"tokens): {seen[0]} blocks shared right after the fork, {cache.stats.cow_copies} copy-on-write copies "
                f"when the samples first wrote into the shared partial block, {seen[-1]} still shared at the end")
    facts = dict(shared_after_fork=seen[0], cow_copies=cache.stats.cow_copies, shared_at_end=seen[-1])
    if seen[0] > 0 and cache.stats.cow_copies > 0 and seen[-1] >= prompt_blocks:
        return holds(evidence, **facts)
    return holds_only_when("blocks are full: a partial block is copied on write", evidence, **facts)
