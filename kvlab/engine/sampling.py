"""Choosing the next token from logits: greedy, or temperature + top-p (nucleus) with a seeded generator."""
from __future__ import annotations

import torch


def sampling_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """logits [..., vocab] → the distribution sampling draws from [..., vocab]: softmax(logits / T), cut to the
    smallest set of tokens whose mass reaches top_p, renormalised."""
    probs = _nucleus(logits, temperature, top_p)
    return probs / probs.sum(dim=-1, keepdim=True)


def _nucleus(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """softmax(logits / T) with the tokens outside the top_p nucleus zeroed (not renormalised)."""
    assert temperature > 0, "greedy decoding has no distribution to sample"
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass strictly above each token
        sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)  # keep the smallest set reaching top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return probs


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    """logits: [B, vocab] float32 → next token ids [B]. temperature 0 means greedy (argmax)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = _nucleus(logits, temperature, top_p)  # multinomial normalises
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


def check_sampling_args(temperature: float, top_p: float) -> None:
    if not temperature >= 0:
        raise ValueError(f"temperature must be ≥ 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
