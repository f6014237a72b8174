"""The offloaded prefix cache on the chatbot scenario (kvlab.scenarios): chat requests that share a ~1,000-token
system prompt, with other traffic between them (the RAG scenario's requests, another system prompt) through a
prefix-caching pool with room for about one chat request. Each other request evicts much of the system prompt's
blocks (a sequence's tail first). Served twice, one request at a time, as a quiet server would:

* pool only — a chat request reuses the head blocks still in the pool and prefills the rest again;
* pool + tier — the evicted blocks went to a tier below the pool by their chain hash, and come back from it.

Per chat request: TTFT, and how many prompt tokens the pool and the tier served. The tokens must be the same.
"""
from __future__ import annotations

from dataclasses import asdict

from ..cache import BlockTier, blocks_for
from ..scenarios import chatbot_scenario, common_prefix_len, rag_scenario
from .offload import _paged, _prefix_engine, _serve_now, default_tier_kind


def interleaved(tokenizer, chat_requests: int) -> list[tuple[str, str, list[int]]]:
    """(kind, label, prompt ids): chat 1, other 1, chat 2, other 2, …, chat n."""
    chat = chatbot_scenario(tokenizer, chat_requests)
    other = rag_scenario(tokenizer)
    order = []
    for i in range(chat_requests):
        if i:
            j = (i - 1) % len(other)
            order.append(("other", other.labels[j], other.prompt_ids[j]))
        order.append(("chat", chat.labels[i], chat.prompt_ids[i]))
    return order


def chatbot_tier(model, tokenizer, chat_requests: int = 3, new_tokens: int = 8, block_size: int = 16) -> dict:
    """Both runs of `interleaved(...)`: a row per request with its TTFT and hit tokens by source in each."""
    order = interleaved(tokenizer, chat_requests)
    longest = max(len(ids) for _, _, ids in order)
    pool_blocks = blocks_for(longest + new_tokens, block_size)
    tier_blocks = sum(blocks_for(len(ids), block_size) for _, _, ids in order)
    runs = {}
    for name in ("pool", "tier"):
        tier = (BlockTier(_paged(model, 1, block_size).block_bytes(), capacity_blocks=tier_blocks,
                          kind=default_tier_kind(model.device)) if name == "tier" else None)
        engine = _prefix_engine(model, tokenizer, pool_blocks, block_size, longest, tier)
        _serve_now(engine, order[0][2][-block_size - 1:], 1)  # warm-up on a prompt's tail: a prefix of nothing
        rows = []
        for kind, label, ids in order:
            from_tier = engine.cache.stats.tier_hit_tokens
            out = _serve_now(engine, ids, new_tokens)
            from_tier = engine.cache.stats.tier_hit_tokens - from_tier
            rows.append(dict(kind=kind, label=label, prompt_tokens=len(ids), ttft_s=out.ttft_s,
                             pool_hit_tokens=out.cached_prompt_tokens - from_tier, tier_hit_tokens=from_tier,
                             token_ids=out.token_ids))
        runs[name] = dict(rows=rows, tier_stats=asdict(tier.stats) if tier is not None else None)
        if tier is not None:
            tier.close()
    same = all(a["token_ids"] == b["token_ids"] for a, b in zip(runs["pool"]["rows"], runs["tier"]["rows"]))
    return dict(pool_blocks=pool_blocks, block_size=block_size, tier_kind=default_tier_kind(model.device),
                shared_prompt_tokens=_shared_tokens(order), runs=runs, same_tokens=same)


def _shared_tokens(order) -> int:
    chats = [ids for kind, _, ids in order if kind == "chat"]
    return min((common_prefix_len(chats[0], ids) for ids in chats[1:]), default=len(chats[0]))
