"""Run one engine step through the model: a forward pass over the cache for the sequences the scheduler chose.

A cache step is right-padded ([B, T]), so a prefill chunk and decode tokens in one pass would pad every
decode row to the chunk's width. An engine step therefore runs two passes: the one-token rows (decode, and
prefill chunks of a single token) together, then the longer chunks together.
"""
from __future__ import annotations

import torch

from ..cache import KVCache


def forward_pass(model, cache: KVCache, seq_ids: list[int], new_tokens: list[list[int]],
                 tentative: list[int] | None = None) -> tuple[torch.Tensor, int, int]:
    """begin_step → model.forward → end_step (abort_step on error) for `new_tokens` of each sequence →
    (logits of each row's last new token [B, vocab], K/V bytes attention read, weight bytes the pass read).
    tentative (speculation): per row, how many of its last tokens are drafts — then every position's logits
    come back, [B, T, vocab]."""
    width = max(map(len, new_tokens))
    input_ids = torch.zeros(len(seq_ids), width, dtype=torch.int64)  # [B, T], right-padded
    for row, tokens in enumerate(new_tokens):
        input_ids[row, : len(tokens)] = torch.tensor(tokens)
    step = cache.begin_step(seq_ids, [len(t) for t in new_tokens], new_tokens, tentative)
    every_position = tentative is not None
    try:
        logits = model.forward(input_ids.to(model.device), cache, all_positions=every_position)
    except BaseException:
        cache.abort_step()
        raise
    kv_bytes_read = cache.kv_bytes_read(step)
    cache.end_step()
    head_rows = input_ids.numel() if every_position else len(seq_ids)
    return logits, kv_bytes_read, model.weight_bytes(rows=input_ids.numel(), head_rows=head_rows)


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


def verify_pass(model, cache: KVCache, rows) -> tuple[dict[int, torch.Tensor], int, int]:
    """rows: (sequence, drafts) of decoding sequences → the target's logits at its last token and at each draft,
    [1 + len(drafts), vocab] by seq_id (one pass for all rows), K/V bytes read, weight bytes read."""
    seq_ids = [s.seq_id for s, _ in rows]
    tokens = [s.token_ids[cache.num_cached(s.seq_id):] + list(drafts) for s, drafts in rows]
    assert all(len(t) == 1 + len(d) for t, (_, d) in zip(tokens, rows)), "verify rows must be decoding"
    logits, kv, weights = forward_pass(model, cache, seq_ids, tokens, [len(d) for _, d in rows])  # [B, T, V]
    return {s: logits[row, :len(t)] for row, (s, t) in enumerate(zip(seq_ids, tokens))}, kv, weights


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
