"""Run one engine step through the model: a forward pass over the cache for the sequences the scheduler chose.

A cache step is right-padded ([B, T]), so a prefill chunk and decode tokens in one pass would pad every
decode row to the chunk's width. An engine step therefore runs two passes: the one-token rows (decode, and
prefill chunks of a single token) together, then the longer chunks together.
"""
from __future__ import annotations

import torch

from ..cache import KVCache


def forward_pass(model, cache: KVCache, seq_ids: list[int], new_tokens: list[list[int]]) -> tuple[torch.Tensor, int, int]:
    """begin_step → model.forward → end_step (abort_step on error) for `new_tokens` of each sequence →
    (logits of each row's last new token [B, vocab], K/V bytes attention read, weight bytes the pass read)."""
    width = max(map(len, new_tokens))
    input_ids = torch.zeros(len(seq_ids), width, dtype=torch.int64)  # [B, T], right-padded
    for row, tokens in enumerate(new_tokens):
        input_ids[row, : len(tokens)] = torch.tensor(tokens)
    step = cache.begin_step(seq_ids, [len(t) for t in new_tokens], new_tokens)
    try:
        logits = model.forward(input_ids.to(model.device), cache)
    except BaseException:
        cache.abort_step()
        raise
    kv_bytes_read = cache.kv_bytes_read(step)
    cache.end_step()
    return logits, kv_bytes_read, model.weight_bytes(rows=input_ids.numel(), head_rows=len(seq_ids))


def forward_step(model, cache: KVCache, sequences: list[list[int]], running: list[int]) -> tuple[torch.Tensor, int, int]:
    """Feed each running sequence every token its cache does not hold yet (one pass)."""
    return forward_pass(model, cache, running, [sequences[s][cache.num_cached(s):] for s in running])


def run_chunks(model, cache: KVCache, chunks) -> tuple[dict[int, torch.Tensor], int, int]:
    """chunks: (sequence, new tokens) pairs → (logits [vocab] by seq_id, K/V bytes read, weight bytes read)."""
    singles = [(s, n) for s, n in chunks if n == 1]
    longer = [(s, n) for s, n in chunks if n > 1]
    logits_by_seq: dict[int, torch.Tensor] = {}
    kv_bytes = weight_bytes = 0
    for group in (singles, longer):
        if not group:
            continue
        seq_ids = [s.seq_id for s, _ in group]
        starts = [cache.num_cached(s.seq_id) for s, _ in group]
        tokens = [s.token_ids[start: start + n] for (s, n), start in zip(group, starts)]
        logits, kv, weights = forward_pass(model, cache, seq_ids, tokens)
        logits_by_seq.update(zip(seq_ids, logits))
        kv_bytes, weight_bytes = kv_bytes + kv, weight_bytes + weights
    return logits_by_seq, kv_bytes, weight_bytes


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
