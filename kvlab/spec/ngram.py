"""Prompt lookup (n-gram) drafting: the tokens that followed the most recent earlier occurrence of the last n
tokens, tried for n = max_n down to min_n (as vLLM's ngram proposer and HF's prompt-lookup decoding do).

No model, no cache: it costs a scan of the context, and it proposes only where the output repeats the context —
a summary quoting its passage, an edit of given code. Its draft distribution q is one-hot on each proposed token.
"""
from __future__ import annotations

from .draft import Draft


class NgramDrafter:
    name = "ngram"

    def __init__(self, min_n: int = 1, max_n: int = 3):
        for what, n in (("min_n", min_n), ("max_n", max_n)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{what} must be a whole number ≥ 1, got {n!r}")
        if min_n > max_n:
            raise ValueError(f"min_n={min_n} is larger than max_n={max_n}")
        self.min_n, self.max_n = min_n, max_n

    def propose(self, requests: list[tuple[int, list[int], int]]) -> dict[int, Draft]:
        """requests: (seq_id, token ids so far, at most k drafts) → seq_id → its Draft (no entry: no match)."""
        drafts = {}
        for seq_id, ids, k in requests:
            tokens = lookup(ids, k, self.min_n, self.max_n)
            if tokens:
                drafts[seq_id] = Draft(tokens, None)
        return drafts

    def forget(self, seq_id: int) -> None:
        """Nothing to forget: the drafter keeps no state."""


def lookup(ids: list[int], k: int, min_n: int, max_n: int) -> list[int]:
    """Up to k tokens that followed the most recent earlier occurrence of ids' last n tokens (largest n first)."""
    for n in range(min(max_n, len(ids) - 1), min_n - 1, -1):
        pattern = ids[-n:]
        for start in range(len(ids) - n - 1, -1, -1):  # the most recent occurrence before the suffix itself
            if ids[start:start + n] == pattern:
                return ids[start + n:start + n + k]
    return []
