"""A self-draft: the target's own weights running only some of its layers (embedding, those layers, the final
norm and the lm_head) — a cheap draft model made from the one model the lab has. No weight is copied: the draft
shares the target's tensors. It reads about len(layers) / num_layers of the layer weights per token, and keeps
its K/V in a paged cache of its own, rolled back to what the sequence really holds before each proposal.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from ..cache import PoolExhausted, blocks_for, make_cache
from ..engine.runner import forward_pass
from ..engine.sampling import sampling_probs
from ..model.llama import LlamaModel
from .draft import Draft


def draft_model(model, layers) -> LlamaModel:
    """The target with only `layers` (sorted, distinct indices into model.layers), sharing its weights."""
    layers = check_layers(layers, model.config.num_layers)
    config = replace(model.config, num_layers=len(layers))
    draft = LlamaModel(config, model.embed, [model.layers[i] for i in layers], model.final_norm, model.lm_head)
    draft.fused_decode = model.fused_decode  # the target's decode path, fused or the Python reference
    return draft


def check_layers(layers, num_layers: int) -> tuple[int, ...]:
    try:
        layers = tuple(layers)
    except TypeError:
        raise ValueError(f"draft layers must be a list of layer indices, got {layers!r}") from None
    if not layers:
        raise ValueError("draft layers is empty: a self-draft needs at least one layer")
    bad = [i for i in layers if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"draft layer {bad[0]!r} is outside the model's layers 0..{num_layers - 1}")
    if list(layers) != sorted(set(layers)):
        raise ValueError(f"draft layers must be distinct and in order, got {list(layers)}")
    return layers


def every_other_layer(num_layers: int) -> tuple[int, ...]:
    return tuple(range(0, num_layers, 2))


def skip_middle_fifth(num_layers: int) -> tuple[int, ...]:
    """Every layer but a fifth of them just past the middle (SmolLM2: 24 of 30, skipping 12–17)."""
    start, count = num_layers // 2 - num_layers // 10, num_layers // 5
    return tuple(i for i in range(num_layers) if not start <= i < start + count)


def layer_candidates(num_layers: int) -> dict[str, tuple[int, ...]]:
    """The self-draft subsets the benchmark's sweep measures α over, by name."""
    third, start, count = num_layers // 3, num_layers // 2 - num_layers // 10, num_layers // 5
    return {
        "every other layer": every_other_layer(num_layers),
        f"first {num_layers - third}": tuple(range(num_layers - third)),
        f"skip the middle {third}": tuple(range(third)) + tuple(range(2 * third, num_layers)),
        "drop every third": tuple(i for i in range(num_layers) if i % 3 != 1),
        f"skip {count} after the first {start}": skip_middle_fifth(num_layers),
    }


# the sweep's choice on SmolLM2 (benchmarks/results/spec_cpu-x86-64-2-threads.json): α 0.22 at k = 4, where every
# other layer, the first 20, or the middle third skipped drafted almost nothing the target accepted (α ≤ 0.04)
default_draft_layers = skip_middle_fifth


class SelfDrafter:
    name = "self"

    def __init__(self, model, layers, num_blocks: int, block_size: int = 16, temperature: float = 0.0,
                 top_p: float = 1.0, generator: torch.Generator | None = None):
        self.layers = check_layers(layers, model.config.num_layers)
        self.model = draft_model(model, self.layers)
        self.cache = make_cache("paged", self.model.config, model.device, model.dtype, 1, block_size,
                                block_size=block_size, num_blocks=num_blocks)
        self.temperature, self.top_p, self.generator = temperature, top_p, generator
        self.fed: dict[int, list[int]] = {}  # seq_id → the tokens whose K/V the draft cache holds

    def weight_bytes(self) -> int:
        """Weight bytes one draft token reads (the target's: model.weight_bytes())."""
        return self.model.weight_bytes()

    def propose(self, requests: list[tuple[int, list[int], int]]) -> dict[int, Draft]:
        """requests: (seq_id, token ids so far, k) → seq_id → k drafts, each drawn from the draft model (argmax,
        or sampled from its distribution q when temperature > 0). One catch-up pass feeds each sequence the
        tokens its draft cache lacks, then k − 1 one-token passes."""
        feed, wanted = {}, {}
        for seq_id, ids, k in requests:
            start = self._rewind(seq_id, ids, k)
            if start is not None:
                feed[seq_id], wanted[seq_id] = ids[start:], k
        tokens = {s: [] for s in feed}
        probs = {s: [] for s in feed}
        while feed:
            seq_ids = list(feed)
            try:
                logits, _, _ = forward_pass(self.model, self.cache, seq_ids, [feed[s] for s in seq_ids])  # [B, V]
            except PoolExhausted:  # the draft pool is full: these sequences get no drafts this step
                for s in seq_ids:
                    self.forget(s)
                    tokens[s] = []
                break
            chosen = self._choose(logits, probs, seq_ids)
            for s, token in zip(seq_ids, chosen):
                self.fed[s] += feed.pop(s)
                tokens[s].append(token)
                if len(tokens[s]) < wanted[s]:
                    feed[s] = [token]
        return {s: Draft(t, torch.stack(probs[s]) if probs[s] else None) for s, t in tokens.items() if t}

    def _choose(self, logits: torch.Tensor, probs: dict, seq_ids: list[int]) -> list[int]:
        if self.temperature == 0:
            return logits.argmax(dim=-1).tolist()
        q = sampling_probs(logits, self.temperature, self.top_p)  # [B, V]
        for s, row in zip(seq_ids, q):
            probs[s].append(row)
        return torch.multinomial(q.cpu(), 1, generator=self.generator).squeeze(-1).tolist()

    def _rewind(self, seq_id: int, ids: list[int], k: int) -> int | None:
        """Roll the draft cache back to the longest prefix it shares with `ids` (keeping ≥ 1 token to feed);
        the index of the first token to feed, or None when the sequence cannot fit the draft pool."""
        if blocks_for(len(ids) + k, self.cache.block_size) > self.cache.allocator.num_blocks:
            self.forget(seq_id)
            return None
        if seq_id not in self.fed:
            self.cache.add_sequence(seq_id, len(ids) + k)
            self.fed[seq_id] = []
        fed, keep = self.fed[seq_id], 0
        while keep < min(len(fed), len(ids) - 1) and fed[keep] == ids[keep]:
            keep += 1
        self.cache.rollback(seq_id, keep)
        del fed[keep:]
        return keep

    def forget(self, seq_id: int) -> None:
        if seq_id in self.fed:
            self.cache.free_sequence(seq_id)
            del self.fed[seq_id]
