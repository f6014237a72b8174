"""Cache vs no cache, measured on the real model: per-step decode time against sequence length.

Without a cache, step t runs the model over all t tokens (O(t) work per step, O(n²) in total);
with one, every step runs one token and reads t cached K/V rows (O(1) compute per step plus a small read).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from ..engine import generate
from ..progress import progress_bar


@dataclass
class PathTiming:
    cache: str
    context_lens: list[int]  # sequence length at each decode step
    step_s: list[float]  # median over repeats of each decode step
    ttft_s: float  # median prefill time
    kv_bytes_read: list[int]  # K/V read by each step
    weight_bytes_read: list[int]  # weights read by each step

    def total_s(self, steps: int) -> float:
        """Prefill plus the first `steps` decode steps."""
        return self.ttft_s + sum(self.step_s[:steps])

    def bytes_read(self, step: int) -> int:
        return self.weight_bytes_read[step] + self.kv_bytes_read[step]


@dataclass
class CacheVsRecompute:
    prompt_tokens: int
    new_tokens: int
    repeats: int
    paths: dict[str, PathTiming] = field(default_factory=dict)

    def speedup_at(self, steps: int, slow: str = "none", fast: str = "contiguous") -> float:
        """Total-time speedup of generating up to decode step `steps` (all measured, nothing extrapolated)."""
        return self.paths[slow].total_s(steps) / self.paths[fast].total_s(steps)


def measure_cache_vs_recompute(model, tokenizer, prompt: str, new_tokens: int, repeats: int = 3,
                               caches: tuple[str, ...] = ("none", "contiguous"), progress: bool = False) -> CacheVsRecompute:
    """Generate `new_tokens` (EOS ignored) `repeats` times per cache; keep the median time of every step."""
    if repeats < 1:
        raise ValueError(f"repeats must be ≥ 1, got {repeats}")
    result = CacheVsRecompute(prompt_tokens=len(tokenizer.encode(prompt)), new_tokens=new_tokens, repeats=repeats)
    bar = progress_bar(len(caches) * (repeats + 1), progress, "measuring", "run")
    for cache in caches:
        generate(model, tokenizer, prompt, max_new_tokens=min(4, new_tokens), cache=cache, stop_at_eos=False)  # warm-up
        bar and bar.update(1)
        runs = []
        for _ in range(repeats):
            runs.append(generate(model, tokenizer, prompt, max_new_tokens=new_tokens, cache=cache, stop_at_eos=False).stats)
            bar and bar.update(1)
        first = runs[0]
        result.paths[cache] = PathTiming(
            cache=cache,
            context_lens=first.step_context_lens,
            step_s=[statistics.median(r.step_times_s[i] for r in runs) for i in range(len(first.step_times_s))],
            ttft_s=statistics.median(r.ttft_s for r in runs),
            kv_bytes_read=first.kv_bytes_read_per_step,
            weight_bytes_read=first.weight_bytes_read_per_step,
        )
    bar and bar.close()
    return result
