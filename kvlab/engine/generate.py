"""The generation loop: prefill the prompts, then decode one token per sequence per step.

Each step feeds every running sequence the tokens its cache does not hold yet — the whole prompt first,
then one token; with cache="none" that is the whole sequence every time.
"""
from __future__ import annotations

import time

import torch

from ..cache import KVCache, make_cache
from ..checks import positive_int
from ..progress import progress_bar
from .result import GenerationResult, GenerationStats
from .sampling import check_sampling_args, sample_next


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prepare_prompts(tokenizer, prompts, chat: bool, context_len: int, vocab_size: int) -> list[list[int]]:
    """Text, a list of texts, or lists of token ids → token id lists (chat template applied on request)."""
    if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
        prompts = [prompts]
    if not prompts:
        raise ValueError("prompts is empty")
    token_lists = []
    for index, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            ids = tokenizer.encode(tokenizer.apply_chat_template(prompt) if chat else prompt)
        else:
            ids = [int(t) for t in prompt]
            bad = [t for t in ids if not 0 <= t < vocab_size]
            if bad:
                raise ValueError(f"prompt {index} has token id {bad[0]}, outside the vocabulary 0..{vocab_size - 1}")
        if not ids:
            raise ValueError(f"prompt {index} is empty")
        if len(ids) > context_len:
            raise ValueError(f"prompt {index} has {len(ids)} tokens, longer than the model's context of {context_len}")
        token_lists.append(ids)
    return token_lists


def generate(model, tokenizer, prompts, max_new_tokens: int = 64, cache: str | KVCache = "contiguous",
             temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None, chat: bool = False,
             stop_at_eos: bool = True, stop_token_ids: list[int] | None = None, progress: bool = False,
             num_samples: int = 1, on_step=None, **cache_options) -> GenerationResult:
    """Generate up to `max_new_tokens` for each prompt through the named cache layout.

    prompts: a string, a list of strings (a ragged batch), or token id lists. Greedy unless temperature > 0
    (then top-p sampling, reproducible with `seed`). chat=True wraps each prompt in the model's chat template.
    num_samples > 1: parallel sampling — each prompt is prefilled once, then forked into that many sequences
    (the cache must fork: "paged" copies the partly filled block at once, "prefix" shares it until one writes);
    the result lists the samples of prompt 0 first, then those of prompt 1, and so on.
    cache: a layout's name ("none", "contiguous", "paged", "prefix"), made for this call, or a KVCache object
    that outlives it — a prefix cache keeps the blocks of earlier calls and reuses their prompts' prefixes.
    cache_options go to a named layout (paged, prefix: block_size, num_blocks, backend).
    on_step(step_index, cache, running_seq_ids): called after every step, before finished sequences are freed —
    a figure can read the cache's public state there (block tables, pool occupancy).
    """
    positive_int("max_new_tokens", max_new_tokens)
    samples = positive_int("num_samples", num_samples)
    check_sampling_args(temperature, top_p)
    cfg = model.config
    prompt_ids = prepare_prompts(tokenizer, prompts, chat, cfg.context_len, cfg.vocab_size)
    longest = max(len(p) for p in prompt_ids)
    max_len = min(longest + max_new_tokens, cfg.context_len)
    kv = _cache_for(cache, cfg, model, len(prompt_ids) * samples, max_len, cache_options)
    if samples > 1 and not hasattr(kv, "fork"):
        raise ValueError(f"num_samples={samples} forks each prompt's cache, which the {kv.name!r} layout cannot do; "
                         f"use cache='paged' or cache='prefix'")
    stops = set(stop_token_ids if stop_token_ids is not None else [tokenizer.eos_token_id]) if stop_at_eos else set()
    generator = torch.Generator().manual_seed(seed) if seed is not None else None

    # sequence id p·samples + k is sample k of prompt p: prompt + generated tokens
    sequences: list[list[int]] = [list(prompt_ids[i // samples]) for i in range(len(prompt_ids) * samples)]
    running = [p * samples for p in range(len(prompt_ids))]  # the forks join after the prefill step
    finish = ["length"] * len(sequences)
    stats = GenerationStats(cache=kv.name, device=str(model.device), batch=len(sequences),
                            prompt_tokens=sum(map(len, prompt_ids)), cached_prompt_tokens=0, new_tokens=0,
                            ttft_s=0.0, decode_s=0.0, decode_tokens=0)
    bar = progress_bar(max_new_tokens, progress, "generating", "step")
    start = time.perf_counter()  # TTFT counts the prefix lookup too
    try:
        for seq_id in running:
            max_tokens = min(len(sequences[seq_id]) + max_new_tokens, cfg.context_len)
            stats.cached_prompt_tokens += kv.add_sequence(seq_id, max_tokens, sequences[seq_id])
        for step_index in range(max_new_tokens):
            step_start = time.perf_counter()
            logits, kv_bytes_read, weight_bytes_read = forward_step(model, kv, sequences, running)
            if step_index == 0 and samples > 1:
                running = _fork_samples(kv, sequences, running, samples)
                logits = logits.repeat_interleave(samples, dim=0)  # [B · samples, vocab]: one draw per sample
            next_ids = sample_next(logits, temperature, top_p, generator).tolist()
            _sync(model.device)
            elapsed = time.perf_counter() - step_start
            if step_index == 0:
                stats.ttft_s = time.perf_counter() - start
            else:
                stats.decode_s += elapsed
                stats.decode_tokens += len(running)
                stats.step_times_s.append(elapsed)
                stats.step_context_lens.append(max(len(sequences[s]) for s in running))
                stats.kv_bytes_read_per_step.append(kv_bytes_read)
                stats.weight_bytes_read_per_step.append(weight_bytes_read)
            if on_step is not None:
                on_step(step_index, kv, list(running))
            for seq_id, token in zip(list(running), next_ids):
                sequences[seq_id].append(token)
                stats.new_tokens += 1
                at_limit = len(sequences[seq_id]) >= cfg.context_len
                if token in stops or at_limit:
                    finish[seq_id] = "eos" if token in stops else "length"
                    running.remove(seq_id)
                    kv.free_sequence(seq_id)
            if bar is not None:
                bar.update(1)
            if not running:
                break
    finally:
        for seq_id in range(len(sequences)):  # also after an error: a cache object must not keep them
            if seq_id in kv.lengths:
                kv.free_sequence(seq_id)
        if bar is not None:
            bar.close()

    prompts_per_sample = [prompt_ids[i // samples] for i in range(len(sequences))]
    generated = [seq[len(prompt):] for seq, prompt in zip(sequences, prompts_per_sample)]
    texts = [tokenizer.decode([t for t in ids if t not in stops]) for ids in generated]
    return GenerationResult(prompts_per_sample, generated, texts, finish, stats)


def _fork_samples(kv, sequences: list[list[int]], running: list[int], samples: int) -> list[int]:
    """After the prefill step: sequence p·samples forks into p·samples + 1 … p·samples + samples − 1."""
    for parent in running:
        for child in range(parent + 1, parent + samples):
            kv.fork(parent, child)
    return [parent + k for parent in running for k in range(samples)]


def forward_step(model, kv, sequences: list[list[int]], running: list[int]) -> tuple[torch.Tensor, int, int]:
    """Feed each running sequence its uncached tokens → (next-token logits [B, vocab], K/V bytes attention read,
    weight bytes the step read)."""
    new_tokens = [sequences[s][kv.num_cached(s):] for s in running]
    width = max(map(len, new_tokens))
    input_ids = torch.zeros(len(running), width, dtype=torch.int64)
    for row, tokens in enumerate(new_tokens):
        input_ids[row, : len(tokens)] = torch.tensor(tokens)
    step = kv.begin_step(running, [len(t) for t in new_tokens], new_tokens)
    try:
        logits = model.forward(input_ids.to(model.device), kv)
    except BaseException:
        kv.abort_step()
        raise
    kv_bytes_read = kv.kv_bytes_read(step)
    kv.end_step()
    return logits, kv_bytes_read, model.weight_bytes(rows=input_ids.numel(), head_rows=len(running))


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
