"""Swap or recompute? The cost model behind preemption="auto", fed by numbers measured on this device.

A preempted sequence holding n tokens can come back two ways:
* recompute: prefill its n tokens again — about n × (prefill seconds per token);
* swap: copy its blocks (n rounded up to whole blocks × bytes per token) to the tier and back —
  bytes / (tier write bandwidth) + bytes / (tier read bandwidth).
"auto" picks the cheaper one per sequence and says why; the step log keeps the reason. Recompute grows a little
faster than linearly with n (attention over the context), so a linear per-token cost measured at one chunk
length slightly favours recompute for long sequences: the benchmark (kvlab.bench.offload) measures both curves.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from ..cache import blocks_for

PREEMPTION_MODES = ("recompute", "swap", "auto")


@dataclass(frozen=True)
class OffloadCosts:
    tier_write_gb_s: float  # pool → tier, measured
    tier_read_gb_s: float  # tier → pool, measured (checksums included)
    prefill_s_per_token: float  # the model's prefill time per token, measured

    def swap_s(self, nbytes: int) -> float:
        return nbytes / (self.tier_write_gb_s * 1e9) + nbytes / (self.tier_read_gb_s * 1e9)

    def recompute_s(self, num_tokens: int) -> float:
        return num_tokens * self.prefill_s_per_token


@dataclass(frozen=True)
class PreemptionChoice:
    seq_id: int
    mode: str  # "swap" or "recompute"
    reason: str


def choose_preemption(preemption: str, cache, seq_id: int, costs: OffloadCosts | None) -> PreemptionChoice:
    """How to preempt `seq_id` under `preemption` ("recompute", "swap" or "auto"), and why."""
    if preemption == "recompute":
        return PreemptionChoice(seq_id, "recompute", "preemption='recompute'")
    if not getattr(cache, "can_swap", False):
        return PreemptionChoice(seq_id, "recompute", f"the {cache.name!r} layout cannot swap")
    if preemption == "swap":
        return PreemptionChoice(seq_id, "swap", "preemption='swap'")
    tokens = cache.num_cached(seq_id)
    nbytes = blocks_for(tokens, cache.block_size) * cache.block_bytes()
    swap_s, recompute_s = costs.swap_s(nbytes), costs.recompute_s(tokens)
    mode = "swap" if swap_s < recompute_s else "recompute"
    return PreemptionChoice(seq_id, mode, f"{tokens} tokens: swapping {nbytes / 2**20:.2f} MiB out and in "
                                          f"≈ {swap_s * 1e3:.2f} ms vs recomputing ≈ {recompute_s * 1e3:.2f} ms")


def measure_tier_bandwidth(tier, block_bytes: int, num_blocks: int = 16, repeats: int = 3,
                           device="cpu") -> tuple[float, float]:
    """(write GB/s, read GB/s) of `tier`: the median of `repeats` batched puts and gets of `num_blocks` blocks
    (bytes moved each way: num_blocks × block_bytes) from and back to `device`, where the pool lives."""
    from .runner import sync

    device = torch.device(device)
    count = max(1, min(num_blocks, tier.num_free))
    data = torch.randint(0, 256, (count, block_bytes), dtype=torch.uint8, device=device)  # [n, block_bytes]

    def timed(fn) -> float:
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - start

    writes, reads = [], []
    for _ in range(repeats + 1):  # the first round warms up (page faults on a fresh file)
        slots = []
        writes.append(timed(lambda: slots.extend(tier.put(data))))
        reads.append(timed(lambda: tier.get(slots).to(device)))
        tier.free(slots)
    nbytes = count * block_bytes
    return nbytes / statistics.median(writes[1:]) / 1e9, nbytes / statistics.median(reads[1:]) / 1e9


def measure_prefill_s_per_token(model, num_tokens: int = 64, repeats: int = 3) -> float:
    """The model's prefill time per token: the median of `repeats` prefills of `num_tokens` tokens."""
    from ..cache import make_cache
    from .runner import sync

    ids = torch.arange(num_tokens, device=model.device)[None] % model.config.vocab_size  # [1, T]
    times = []
    for _ in range(repeats + 1):
        cache = make_cache("contiguous", model.config, model.device, model.dtype, max_batch=1, max_len=num_tokens)
        cache.add_sequence(0, num_tokens)
        start = time.perf_counter()
        cache.begin_step([0], [num_tokens])
        with torch.no_grad():
            model.forward(ids, cache)
        cache.end_step()
        sync(model.device)
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[repeats // 2] / num_tokens


def measure_offload_costs(model, cache, tier) -> OffloadCosts:
    write_gb_s, read_gb_s = measure_tier_bandwidth(tier, cache.block_bytes(), device=cache.device)
    return OffloadCosts(write_gb_s, read_gb_s, measure_prefill_s_per_token(model))
