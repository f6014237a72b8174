"""Speculative decoding: a drafter proposes k tokens, the target verifies them in one pass over its cache.

    drafter = make_drafter("ngram", model, cache, k=4)      # or "self": some of the target's own layers
    kvlab.generate(model, tokenizer, prompt, speculative="ngram", num_speculative_tokens=4)

The engine (kvlab.engine.engine) reserves k lookahead slots per decoding sequence, asks the drafter, runs the
target over [last token, drafts] with every position's logits, accepts (kvlab.spec.accept) and rolls the cache
back past the rejected drafts (KVCache.rollback).
"""
from __future__ import annotations

from ..cache import blocks_for
from .accept import accept_greedy, accept_sampled
from .draft import Draft, SpecRow, SpecStats, expected_tokens_per_pass
from .ngram import NgramDrafter, lookup
from .self_draft import (SelfDrafter, check_layers, default_draft_layers, draft_model, every_other_layer,
                         layer_candidates)

DRAFTERS = ("ngram", "self")
DRAFTER_OPTIONS = ("min_n", "max_n", "draft_layers")  # make_drafter's: min_n, max_n (ngram), draft_layers (self)


def check_drafter_options(options: dict) -> None:
    """ValueError naming every option make_drafter does not take (a misspelt `max_m`)."""
    unknown = sorted(set(options) - set(DRAFTER_OPTIONS))
    if unknown:
        raise ValueError(f"unknown speculative options {unknown}; they are min_n, max_n (ngram), draft_layers (self)")


def make_drafter(name, model, cache, k: int, temperature: float = 0.0, top_p: float = 1.0, generator=None,
                 min_n: int = 1, max_n: int = 3, draft_layers=None):
    """A drafter by name ("ngram" | "self"), or a drafter object passed through. The self-draft's pool has as many
    blocks as the target's (a contiguous target: rows × max_len worth); its layers by default: default_draft_layers
    (the benchmark's sweep chose them)."""
    if not isinstance(name, str):
        return name
    if name == "ngram":
        return NgramDrafter(min_n, max_n)
    if name == "self":
        layers = default_draft_layers(model.config.num_layers) if draft_layers is None else draft_layers
        block_size = getattr(cache, "block_size", 16)
        num_blocks = (cache.allocator.num_blocks if hasattr(cache, "allocator")
                      else cache.max_batch * blocks_for(cache.max_len, block_size))
        return SelfDrafter(model, layers, num_blocks, block_size, temperature, top_p, generator)
    raise ValueError(f"unknown speculative drafter {name!r}; choose one of {', '.join(DRAFTERS)}")


__all__ = ["DRAFTERS", "DRAFTER_OPTIONS", "check_drafter_options",
           "make_drafter", "NgramDrafter", "SelfDrafter", "Draft", "SpecRow", "SpecStats",
           "accept_greedy", "accept_sampled", "expected_tokens_per_pass", "lookup", "check_layers", "draft_model",
           "every_other_layer", "default_draft_layers", "layer_candidates"]
