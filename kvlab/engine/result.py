"""What generate() returns: the tokens, the text, and how fast it went."""
from __future__ import annotations

from dataclasses import dataclass, field
from statistics import median


@dataclass
class GenerationStats:
    cache: str
    device: str
    batch: int
    prompt_tokens: int  # summed over the batch
    cached_prompt_tokens: int  # of those, found in a prefix cache: not prefilled
    new_tokens: int  # summed over the batch
    ttft_s: float  # prefill: prompt in, first token out
    decode_s: float  # every step after the first token
    decode_tokens: int  # tokens produced by those steps
    step_times_s: list[float] = field(default_factory=list)  # each decode step
    step_context_lens: list[int] = field(default_factory=list)  # longest sequence at each decode step
    weight_bytes_read_per_step: list[int] = field(default_factory=list)  # weights read by each decode step
    kv_bytes_read_per_step: list[int] = field(default_factory=list)  # K/V read by each decode step
    speculation: object = None  # kvlab.spec.SpecStats when speculative decoding ran

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else float("nan")

    @property
    def weight_bytes_per_step(self) -> float:
        """Mean weight bytes one decode step reads: all weights once, as 4-/8-bit blocks when a CPU step runs a
        few rows (kvlab.model.projection), else in float32."""
        steps = self.weight_bytes_read_per_step
        return sum(steps) / len(steps) if steps else 0.0

    @property
    def bytes_read_per_decode_step(self) -> float:
        """Mean bytes one decode step reads: all weights once + the K/V attention reads."""
        kv = sum(self.kv_bytes_read_per_step) / len(self.kv_bytes_read_per_step) if self.kv_bytes_read_per_step else 0
        return self.weight_bytes_per_step + kv

    @property
    def decode_gb_per_s(self) -> float:
        """Achieved read bandwidth of decode: bytes per step × steps per second."""
        if not self.step_times_s:
            return float("nan")
        return self.bytes_read_per_decode_step / median(self.step_times_s) / 1e9

    def summary(self) -> str:
        reused = (f" ({self.cached_prompt_tokens} of {self.prompt_tokens} prompt tokens from the prefix cache)"
                  if self.cached_prompt_tokens else "")
        return (f"{self.cache} cache on {self.device}: batch {self.batch}, TTFT {self.ttft_s * 1e3:.0f} ms{reused}, "
                f"decode {self.decode_tokens_per_s:.1f} tok/s, {self.bytes_read_per_decode_step / 1e6:.0f} MB read "
                f"per decode step ({self.decode_gb_per_s:.1f} GB/s)")


@dataclass
class GenerationResult:
    prompt_token_ids: list[list[int]]
    token_ids: list[list[int]]  # generated tokens only, one list per prompt
    texts: list[str]
    finish_reasons: list[str]  # "eos" or "length"
    stats: GenerationStats

    def __repr__(self) -> str:
        return f"GenerationResult(texts={self.texts!r}, stats={self.stats.summary()!r})"
