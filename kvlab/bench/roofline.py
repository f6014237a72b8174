"""Where the real model's steps sit on this device's roofline: every point a measured time.

A point is one piece of work with its FLOP and bytes counted and its time measured (median after a warm-up):
  arithmetic intensity = FLOP / bytes,  achieved = FLOP / seconds  (and bytes / seconds in GB/s).

  model step (prefill of T tokens, or one decode token, for B sequences), through a contiguous cache:
    FLOP  = 2 · B·T · (layer weights)  +  2 · B · (lm_head weights)          the matmuls (logits of the last token)
          + 4 · L · Hq · D · Σ keys each query sees                          attention: QKᵀ and PV
    bytes = every weight once  +  K/V read by attention  +  K/V written      (activations left out: small here)
  decode attention alone (the model's head shape, B sequences of `context` tokens):
    FLOP  = 4 · B · Hq · context · D,  bytes = kernels.decode_bytes (all K/V once + queries + outputs)

Decode reads all weights for 2 FLOP per weight per sequence: ~0.5 FLOP/byte in float32 at batch 1, far left of
the ridge point, so its time is bytes / bandwidth. Prefill multiplies the same weights by T tokens: T times the
intensity, up against the compute roof. Batching decode moves it right: B sequences share one read of the weights.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from kvlab.cache import ContiguousCache
from kvlab.checks import positive_int
from kvlab.kernels import decode_bytes

from .timers import median_seconds


@dataclass(frozen=True)
class Point:
    label: str
    kind: str  # "prefill", "decode" or "attention"
    batch: int
    tokens: int  # new tokens per sequence in the step (prefill: T; decode and attention: 1)
    context: int  # tokens per sequence attended over at the end of the step
    flops: float
    bytes: float
    seconds: float
    weights: str = ""  # "GGUF blocks" when the step's layers read the file's 4-/8-bit blocks, else "" (the dtype)

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes

    @property
    def flops_per_s(self) -> float:
        return self.flops / self.seconds

    @property
    def gb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e9

    @property
    def seconds_per_token(self) -> float:
        return self.seconds / (self.batch * self.tokens)

    def as_dict(self) -> dict:
        return asdict(self) | {"intensity": self.intensity, "flops_per_s": self.flops_per_s, "gb_per_s": self.gb_per_s,
                               "seconds_per_token": self.seconds_per_token}


def layer_weight_count(model) -> int:
    return sum(p.numel() for p in model.layer_projections())


def default_sizes(device: torch.device) -> tuple[list[int], list[int], int]:
    """(batches, decode-attention contexts, prefill length) that `run` measures by default: small on a CPU,
    large on a GPU."""
    if torch.device(device).type == "cuda":
        return [1, 4, 16, 64], [1024, 4096, 16384], 1024
    return [1, 2, 4, 8], [128, 512, 2048], 128


def step_flops(model, batch: int, cached: int, new: int) -> int:
    """FLOP of one forward step: `batch` sequences each holding `cached` tokens get `new` more."""
    cfg = model.config
    keys_seen = sum(cached + i + 1 for i in range(new))  # causal: query i sees the cache and new tokens 0..i
    attention = 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim * keys_seen
    return batch * (2 * new * layer_weight_count(model) + 2 * model.lm_head.numel() + attention)


def step_bytes(model, cache: ContiguousCache, batch: int, cached: int, new: int) -> int:
    """Bytes of one forward step: weights once (as the path for batch · new rows reads them: on a CPU, a decode
    step reads the GGUF blocks unless model.decode_reads_blocks is off), K/V read (the whole span per sequence),
    K/V written."""
    per_token = cache.bytes_per_token()
    return model.weight_bytes(rows=batch * new, head_rows=batch) + batch * (cached + new) * per_token + batch * new * per_token


def _weights_read(model, rows: int) -> str:
    """"GGUF blocks" when products of `rows` rows read the blocks (kvlab.model.projection), else ""."""
    return "GGUF blocks" if any(p.reads_blocks and p.uses_kernel(rows) for p in model.layer_projections()) else ""


def _label(text: str, weights: str) -> str:
    return f"{text}, {weights}" if weights else text


def _token_ids(model, batch: int, length: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)  # the values do not change the time; a fixed seed keeps runs alike
    return torch.randint(3, model.config.vocab_size, (batch, length), generator=g).tolist()


def _forward(model, cache, seq_ids: list[int], tokens: list[list[int]]) -> None:
    cache.begin_step(seq_ids, [len(t) for t in tokens], tokens)
    model.forward(torch.tensor(tokens, device=model.device), cache)
    cache.end_step()


def measure_prefill(model, batch: int, prompt_len: int, repeats: int = 3) -> Point:
    """Median time of prefilling `batch` fresh sequences of `prompt_len` tokens (the first token's step)."""
    positive_int("batch", batch)
    positive_int("prompt_len", prompt_len)
    cache = ContiguousCache(model.config, model.device, model.dtype, max_batch=batch, max_len=prompt_len)
    tokens = _token_ids(model, batch, prompt_len, seed=prompt_len)
    seq_ids = list(range(batch))

    def prefill():
        for s in seq_ids:
            cache.add_sequence(s, prompt_len)
        try:
            _forward(model, cache, seq_ids, tokens)
        finally:
            for s in seq_ids:
                cache.free_sequence(s)

    with torch.inference_mode():
        seconds = median_seconds(prefill, model.device, warmup=1, repeats=repeats)
    weights = _weights_read(model, batch * prompt_len)
    return Point(_label(f"prefill, batch {batch}, {prompt_len} tokens", weights), "prefill", batch, prompt_len,
                 prompt_len, step_flops(model, batch, 0, prompt_len), step_bytes(model, cache, batch, 0, prompt_len),
                 seconds, weights)


def measure_decode(model, batch: int, context: int, repeats: int = 5) -> Point:
    """Median time of one decode step (one new token for each of `batch` sequences holding `context` tokens)."""
    positive_int("batch", batch)
    positive_int("context", context)
    steps = repeats + 1  # the warm-up step too; each step adds a token, so the context grows by < 1 %
    if context + steps > model.config.context_len:
        raise ValueError(f"context {context} + {steps} decode steps exceeds the model's {model.config.context_len} tokens")
    cache = ContiguousCache(model.config, model.device, model.dtype, max_batch=batch, max_len=context + steps)
    seq_ids = list(range(batch))
    next_tokens = _token_ids(model, batch, steps, seed=context + 1)
    with torch.inference_mode():
        for s in seq_ids:
            cache.add_sequence(s, context + steps)
        _forward(model, cache, seq_ids, _token_ids(model, batch, context, seed=context))  # the context, prefilled
        columns = iter(range(steps))

        def decode_step():
            column = next(columns)
            _forward(model, cache, seq_ids, [[row[column]] for row in next_tokens])

        seconds = median_seconds(decode_step, model.device, warmup=1, repeats=repeats)
    mid = context + steps // 2  # the context the timed steps attended over, on average
    weights = _weights_read(model, batch)
    return Point(_label(f"decode, batch {batch}, context {context}", weights), "decode", batch, 1, mid,
                 step_flops(model, batch, mid - 1, 1), step_bytes(model, cache, batch, mid - 1, 1), seconds, weights)


def measure_attention(model, batch: int, context: int, block_size: int = 16) -> Point:
    """Decode attention alone at the model's head shape (query heads, KV heads, head dim), in its dtype."""
    from .gqa import time_decode

    positive_int("batch", batch)
    positive_int("context", context)
    cfg = model.config
    seconds = time_decode(model.device, batch, context, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, block_size,
                          model.dtype)
    elem = torch.empty((), dtype=model.dtype).element_size()
    moved = decode_bytes(batch, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, [context] * batch, elem, block_size)
    flops = 4 * batch * cfg.num_heads * context * cfg.head_dim
    return Point(f"decode attention, batch {batch}, context {context}", "attention", batch, 1, context, flops, moved,
                 seconds)


def latency_throughput(model, tokenizer, batches: list[int], prompt_len: int = 32, new_tokens: int = 8) -> list[dict]:
    """TTFT and decode tokens/s (summed over the batch) of real greedy generation at each batch size."""
    from kvlab.engine import generate

    rows = []
    for batch in batches:
        positive_int("batch", batch)
        prompts = _token_ids(model, batch, prompt_len, seed=batch)
        generate(model, tokenizer, prompts, max_new_tokens=2, stop_at_eos=False)  # warm-up at this shape
        stats = generate(model, tokenizer, prompts, max_new_tokens=new_tokens, stop_at_eos=False).stats
        rows.append({"batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens, "ttft_s": stats.ttft_s,
                     "decode_tokens_per_s": stats.decode_tokens_per_s,
                     "step_s": stats.decode_s / max(1, len(stats.step_times_s))})
    return rows


def run(model, tokenizer, batches: list[int], contexts: list[int], prompt_len: int, new_tokens: int = 8,
        progress: bool = False) -> dict:
    """Everything notebook 06 draws, measured on this device: the roofs, prefill and decode steps of the model,
    decode attention at every (batch, context), and TTFT / tokens/s per batch. A dict that save_result writes."""
    from kvlab.progress import progress_bar

    from .roofs import device_label, device_roofs

    roofs = device_roofs(model.device)
    work = 2 + len(batches) + len(batches) * len(contexts) + 1
    bar = progress_bar(work, progress, "measuring", "point")
    points = []
    try:
        for measure, args in ([(measure_prefill, (1, prompt_len)), (measure_prefill, (max(batches), prompt_len))]
                              + [(measure_decode, (b, min(contexts))) for b in batches]
                              + [(measure_attention, (b, c)) for b in batches for c in contexts]):
            points.append(measure(model, *args))
            if bar is not None:
                bar.update(1)
        rows = latency_throughput(model, tokenizer, batches, prompt_len=prompt_len, new_tokens=new_tokens)
        if bar is not None:
            bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return {"device": device_label(model.device), "date": time.strftime("%Y-%m-%d"), "dtype": str(model.dtype)[6:],
            "decode_weights": "GGUF blocks" if model.decode_reads_blocks else str(model.dtype)[6:],
            "roofs": {"copy": asdict(roofs.copy), "matmul": asdict(roofs.matmul)},
            "points": [p.as_dict() for p in points], "batch_rows": rows}


def points_of(report: dict, kind: str | None = None) -> list[Point]:
    """The report's points (of one kind) back as Point objects."""
    names = Point.__dataclass_fields__
    return [Point(**{k: v for k, v in p.items() if k in names}) for p in report["points"] if kind in (None, p["kind"])]


def roofs_of(report: dict):
    from .roofs import CopyBandwidth, MatmulThroughput, Roofs

    return Roofs(CopyBandwidth(**report["roofs"]["copy"]), MatmulThroughput(**report["roofs"]["matmul"]))


def print_roofline(report: dict) -> None:
    roofs = roofs_of(report)
    print(f"{report['device']}, {report['dtype']}: copy {roofs.copy.gb_per_s:.1f} GB/s, {roofs.matmul.dtype} matmul "
          f"{roofs.matmul.flops_per_s / 1e12:.3g} TFLOP/s, ridge {roofs.ridge_flop_per_byte:.1f} FLOP/byte; "
          f"decode reads the {report.get('decode_weights', report['dtype'])} weights")
    print(f"{'step':<42} {'ms':>9} {'FLOP/B':>8} {'GFLOP/s':>9} {'GB/s':>7} {'ms/token':>9}")
    for p in points_of(report):
        print(f"{p.label:<42} {p.seconds * 1e3:>9.3f} {p.intensity:>8.2f} {p.flops_per_s / 1e9:>9.1f} "
              f"{p.gb_per_s:>7.1f} {p.seconds_per_token * 1e3:>9.3f}")
    print(f"{'batch':>5} {'TTFT ms':>9} {'decode tok/s':>13}")
    for r in report["batch_rows"]:
        print(f"{r['batch']:>5} {r['ttft_s'] * 1e3:>9.1f} {r['decode_tokens_per_s']:>13.1f}")
