"""Verification: which drafts the target accepts, and the token it adds.

Greedy: the longest prefix of the drafts that matches the target's argmax at each position, then the target's
own argmax at the first mismatch (or after the last draft: the bonus token). The output is plain greedy's.

Sampling (Leviathan et al. 2023; Chen et al. 2023): draft x at position i is accepted with probability
min(1, p_i(x) / q_i(x)); at the first rejection the token is drawn from normalise(max(0, p_i − q_i)); if every
draft is accepted the bonus token is drawn from p_{k+1}. Each emitted token is then distributed as p — plain
sampling's distribution — whatever q is. Prompt lookup is the case q = one-hot(x): accept with probability p_i(x),
else draw from p_i with x removed.
"""
from __future__ import annotations

import torch


def accept_greedy(target_logits: torch.Tensor, drafts: list[int]) -> list[int]:
    """target_logits: [n + 1, vocab] at the last accepted token and each of the n drafts → emitted tokens."""
    assert target_logits.shape[0] == len(drafts) + 1, (target_logits.shape, len(drafts))
    choice = target_logits.argmax(dim=-1).tolist()  # [n + 1]
    emitted = []
    for draft, target in zip(drafts, choice):
        if draft != target:
            break
        emitted.append(draft)
    return emitted + [choice[len(emitted)]]


def accept_sampled(p: torch.Tensor, q: torch.Tensor | None, drafts: list[int],
                   generator: torch.Generator | None) -> list[int]:
    """p: [n + 1, vocab] target distributions; q: [n, vocab] draft distributions (None: one-hot on the drafts)
    → emitted tokens (1 ≤ len ≤ n + 1)."""
    assert p.shape[0] == len(drafts) + 1 and (q is None or q.shape[0] == len(drafts))
    p = p.double().cpu()
    q = q.double().cpu() if q is not None else None
    emitted = []
    for i, x in enumerate(drafts):
        q_x = q[i, x] if q is not None else 1.0
        if torch.rand((), generator=generator, dtype=torch.float64) * q_x < p[i, x]:  # u < p(x) / q(x)
            emitted.append(x)
            continue
        residual = (p[i] - q[i]).clamp_min(0) if q is not None else p[i].clone().index_fill_(0, torch.tensor([x]), 0)
        total = residual.sum()
        residual = residual / total if total > 0 else p[i]  # total = 0 only through rounding when p ≈ q
        return emitted + [_draw(residual, generator)]
    return emitted + [_draw(p[len(drafts)], generator)]


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    return int(torch.multinomial(probs, 1, generator=generator))
