"""Each kvlab serving knob, one handler a knob: its value → a Row saying how vLLM relates to it (the kinds: same,
differs, implicit, client, kvlab only, none — see kvlab.vllm.args), the vLLM engine arguments or `vllm bench serve`
flags it becomes, and a one-line note. The handlers only describe; kvlab.vllm.args assembles and refuses."""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field

from ..cache import LAYOUT_OPTIONS, QuantizedPagedCache, QuantScheme, check_block_size, make_scheme
from ..checks import positive_int
from ..engine.sampling import check_sampling_args
from ..memory import GiB, kv_bytes_per_token
from ..spec import NgramDrafter, check_drafter_options

KINDS = ("same", "differs", "implicit", "client", "kvlab only", "none")
KV_CACHE_DTYPES = {"int8": "int8_per_token_head", "fp8": "fp8_per_token_head", "int4": "int4_per_token_head"}
VLLM_DTYPE_STORAGE = {"auto": "bfloat16", "int8_per_token_head": "int8", "fp8_per_token_head": "fp8",
                      "int4_per_token_head": "int4"}  # for pool bytes (scales not counted)
DEFAULT_SCHEME = inspect.signature(QuantizedPagedCache).parameters["scheme"].default  # the quantized layout's
NGRAM_DEFAULTS = {name: p.default for name, p in inspect.signature(NgramDrafter).parameters.items()}  # min_n, max_n
NULL_BLOCKS = 1  # vLLM v1's BlockPool takes block 0 as its null block (vllm/v1/core/block_pool.py): never allocated


@dataclass(frozen=True)
class Row:
    knob: str
    value: object
    kind: str  # one of KINDS
    note: str
    engine_args: dict = field(default_factory=dict)  # vLLM engine arguments this knob sets
    bench_flags: tuple[str, ...] = ()  # `vllm bench serve` flags (client-side settings)

    def __post_init__(self) -> None:
        assert self.kind in KINDS, self.kind

    def refusal(self) -> str:
        return f"kvlab's {self.knob}={show_value(self.value)} has no vLLM meaning: {self.note}"


def show_value(value) -> str:
    return repr(value) if isinstance(value, (str, int, float, bool, type(None), dict, list, tuple)) \
        else type(value).__name__


@dataclass(frozen=True)
class Context:
    """What a knob's mapping may need besides its own value."""
    config: dict  # every knob, defaults filled in
    pool_as: str
    gpu_memory_bytes: int | None
    weight_bytes: int | None
    shape: object  # kvlab.memory.ModelShape of the served model


def _cache_name(cache) -> str:
    return cache if isinstance(cache, str) else getattr(cache, "name", type(cache).__name__)


def _quant_scheme(ctx: Context) -> QuantScheme | None:
    """The quantized layout's scheme as kvlab builds it (its default scheme and group filled in, a bad name or group
    refused by make_scheme), or None for an unquantized layout."""
    if _cache_name(ctx.config["cache"]) != "quantized":
        return None
    scheme = ctx.config.get("scheme")
    if isinstance(scheme, QuantScheme):
        return scheme
    return make_scheme(DEFAULT_SCHEME if scheme is None else scheme, ctx.shape.head_dim, ctx.config.get("group_size"))


def _kv_cache_dtype(ctx: Context) -> str:
    scheme = _quant_scheme(ctx)
    return "auto" if scheme is None else KV_CACHE_DTYPES.get(scheme.name, "auto")


def _cache(value, ctx: Context) -> Row:
    name = _cache_name(value)
    if name == "prefix":
        return Row("cache", value, "same", "a pool of blocks found again by a hash chain over their tokens (vLLM: "
                   "sha256 by default, kvlab: blake2b); on by default in vLLM", {"enable_prefix_caching": True})
    if name == "paged":
        return Row("cache", value, "same", "vLLM's pool is always paged; its prefix caching, on by default, is "
                   "turned off", {"enable_prefix_caching": False})
    if name == "quantized":
        return Row("cache", value, "differs", "kvlab's quantized pool keeps no prefix cache, so vLLM's is turned "
                   "off; the KV dtype comes from scheme", {"enable_prefix_caching": False})
    if name in ("none", "contiguous"):
        return Row("cache", value, "none", "vLLM's KV cache is always a paged block pool; kvlab's 'contiguous' "
                   "reserves a row per sequence and 'none' recomputes every step")
    raise ValueError(f"unknown cache {value!r}; kvlab's layouts: {', '.join(LAYOUT_OPTIONS)}")


def _scheme(value, ctx: Context) -> Row:
    scheme = _quant_scheme(ctx)
    if scheme is None:
        return Row("scheme", value, "same", "unquantized K/V in the model's dtype (kvlab: float32 on a CPU, "
                   "bfloat16 on CUDA; vLLM: the checkpoint's, bfloat16)", {"kv_cache_dtype": "auto"})
    if scheme.name == "kivi2":
        return Row("scheme", value, "none", "vLLM has no 2-bit KIVI (keys per channel, values per token); its "
                   "smallest is int4_per_token_head")
    dtype = KV_CACHE_DTYPES[scheme.name]
    if scheme.group_size == scheme.head_dim:
        return Row("scheme", value, "same", f"{dtype}: one scale per token and KV head, computed as the cache is "
                   f"written, as kvlab's {scheme.name} (Triton attention backend)", {"kv_cache_dtype": dtype})
    return Row("scheme", value, "differs", f"{dtype} keeps one scale per token and KV head; kvlab's {scheme.name} one "
               f"per {scheme.group_size} channels — vLLM's is coarser", {"kv_cache_dtype": dtype})


def _group_size(value, ctx: Context) -> Row:
    scheme = _quant_scheme(ctx)  # make_scheme refuses a group size kvlab cannot use
    if scheme is None or scheme.group_size == scheme.head_dim:
        return Row("group_size", value, "implicit", "a scale per token and KV head, as vLLM's per-token-head dtypes")
    return Row("group_size", value, "differs", f"vLLM has no scale groups: one scale per token and KV head, kvlab's "
               f"one per {scheme.group_size} channels (see scheme)")


def _num_blocks(value, ctx: Context) -> Row:
    if value is None:
        return Row("num_blocks", value, "implicit", "kvlab sizes the pool for max_num_seqs of the longest request; "
                   "vLLM for gpu_memory_utilization (0.92) of the GPU's memory")
    positive_int("num_blocks", value)
    if ctx.pool_as == "num_gpu_blocks_override":
        return Row("num_blocks", value, "same", f"the same usable blocks of block_size tokens (the bytes follow each "
                   f"side's KV dtype): vLLM keeps block 0 as a null block, never allocated, so it gets num_blocks + "
                   f"{NULL_BLOCKS}", {"num_gpu_blocks_override": value + NULL_BLOCKS})
    if ctx.gpu_memory_bytes is None or ctx.weight_bytes is None:
        raise ValueError("pool_as='gpu_memory_utilization' needs gpu_memory_bytes and weight_bytes")
    storage = VLLM_DTYPE_STORAGE[_kv_cache_dtype(ctx)]
    pool_bytes = (value + NULL_BLOCKS) * ctx.config["block_size"] * kv_bytes_per_token(ctx.shape, storage)
    share = math.ceil((ctx.weight_bytes + pool_bytes) / ctx.gpu_memory_bytes * 1e4) / 1e4
    if share > 1:
        raise ValueError(f"num_blocks={value} ({pool_bytes / GiB:.1f} GiB) and the weights do not fit "
                         f"gpu_memory_bytes={ctx.gpu_memory_bytes}")
    return Row("num_blocks", value, "differs", "(weights + pool) ÷ GPU memory: vLLM takes activations from the same "
               "share, so its pool comes out smaller; num_gpu_blocks_override is exact",
               {"gpu_memory_utilization": share})


def _same(engine_arg: str, note: str):
    def handler(value, ctx: Context) -> Row:
        check_block_size(value) if engine_arg == "block_size" else positive_int(engine_arg, value)
        return Row(engine_arg, value, "same", note, {engine_arg: value})
    return handler


def _chunked_prefill(value, ctx: Context) -> Row:
    if value is not True:
        raise ValueError(f"chunked_prefill={value!r}: kvlab always feeds a prompt longer than the budget left in "
                         f"chunks; to prefill whole prompts, make max_num_batched_tokens ≥ the longest prompt")
    return Row("chunked_prefill", value, "same", "a prompt longer than the budget left is fed in chunks beside the "
               "decode tokens (vLLM v1's default)", {"enable_chunked_prefill": True})


def _policy(value, ctx: Context) -> Row:
    if value == "continuous":
        return Row("policy", value, "same", "running requests first, then waiting ones first come first served: "
                   "vLLM v1's scheduler", {"scheduling_policy": "fcfs"})
    if value == "static":
        return Row("policy", value, "none", "vLLM has no request-level batching: a finished slot is refilled at the "
                   "next step")
    raise ValueError(f"unknown policy {value!r}; kvlab's: continuous, static")


def _preemption(value, ctx: Context) -> Row:
    if value == "recompute":
        return Row("preemption", value, "implicit", "vLLM v1 preempts only by recompute: the newest running request "
                   "frees its blocks and is prefilled again")
    if value in ("swap", "auto"):
        return Row("preemption", value, "none", "vLLM v1 never swaps a preempted request's blocks out; its "
                   "offloading keeps prefix blocks (see tier)")
    raise ValueError(f"unknown preemption {value!r}; kvlab's: recompute, swap, auto")


def _speculative(value, ctx: Context) -> Row:
    cfg = ctx.config
    if value is None:
        return Row("speculative", value, "implicit", "no speculative decoding (vLLM's default too)")
    if value == "ngram":
        options = NGRAM_DEFAULTS | {k: v for k, v in (cfg.get("speculative_options") or {}).items()
                                    if k in NGRAM_DEFAULTS}
        drafter = NgramDrafter(**options)  # kvlab's own check of min_n, max_n
        spec = {"method": "ngram", "num_speculative_tokens": positive_int("num_speculative_tokens",
                                                                         cfg["num_speculative_tokens"]),
                "prompt_lookup_max": drafter.max_n, "prompt_lookup_min": drafter.min_n}
        return Row("speculative", value, "same", "prompt lookup: the longest match from prompt_lookup_max down to "
                   "prompt_lookup_min, as kvlab's max_n … min_n", {"speculative_config": spec})
    if value == "self":
        return Row("speculative", value, "none", "a draft made of the target's own layers: vLLM's draft_model needs "
                   "a separate small model, EAGLE and MTP a trained head")
    raise ValueError(f"unknown speculative drafter {value!r}; kvlab's: ngram, self")


def _num_speculative_tokens(value, ctx: Context) -> Row:
    positive_int("num_speculative_tokens", value)
    if ctx.config["speculative"] is None:
        return Row("num_speculative_tokens", value, "implicit", "unused without speculative decoding")
    return Row("num_speculative_tokens", value, "same", "speculative_config's num_speculative_tokens")


def _speculative_options(value, ctx: Context) -> Row:
    options = value or {}
    if not isinstance(options, dict):
        raise ValueError(f"speculative_options must be a dict, got {value!r}")
    check_drafter_options(options)
    if options and ctx.config["speculative"] is None:
        raise ValueError(f"speculative_options {sorted(options)} need speculative='ngram' or 'self'")
    if "draft_layers" in options:
        return Row("speculative_options", value, "none", "vLLM cannot draft with some of the target's own layers")
    if not options:
        return Row("speculative_options", value, "implicit", "kvlab's defaults: "
                   + ", ".join(f"{name} {n}" for name, n in NGRAM_DEFAULTS.items()))
    return Row("speculative_options", value, "same", "min_n, max_n: speculative_config's prompt_lookup_min, "
               "prompt_lookup_max")


def _tier(value, ctx: Context) -> Row:
    if value is None:
        return Row("tier", value, "implicit", "no tier below the pool (vLLM offloads nothing by default)")
    nbytes = getattr(value, "capacity_bytes", value)
    if isinstance(nbytes, bool) or not isinstance(nbytes, (int, float)) or not nbytes > 0:
        raise ValueError(f"tier must be a kvlab BlockTier or a size in bytes > 0, got {value!r}")
    return Row("tier", value, "differs", "GiB of CPU memory: vLLM's native offloading copies computed blocks there "
               "and loads them back on a prefix hit; kvlab's tier receives the blocks the pool evicts",
               {"kv_offloading_size": round(nbytes / GiB, 4), "kv_offloading_backend": "native"})


def _seed(value, ctx: Context) -> Row:
    if value is None:
        return Row("seed", value, "implicit", "unseeded sampling")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"seed must be an integer or None, got {value!r}")
    return Row("seed", value, "differs", "seeds vLLM's sampler, another generator than kvlab's: sampled tokens "
               "differ", {"seed": value})


def _sampling_number(knob: str, value) -> None:
    """kvlab's own check (check_sampling_args), after making sure it gets a number to compare."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{knob} must be a number, got {value!r}")
    check_sampling_args(value, 1.0) if knob == "temperature" else check_sampling_args(0.0, value)


def _temperature(value, ctx: Context) -> Row:
    _sampling_number("temperature", value)
    return Row("temperature", value, "client", "a sampling parameter of each request: the benchmark client sends it",
               bench_flags=("--temperature", str(value)))


def _top_p(value, ctx: Context) -> Row:
    _sampling_number("top_p", value)
    flags = () if value == 1.0 else ("--top-p", str(value))
    return Row("top_p", value, "client", "a sampling parameter of each request: the benchmark client sends it",
               bench_flags=flags)


def _stop_at_eos(value, ctx: Context) -> Row:
    if value:
        return Row("stop_at_eos", value, "client", "vLLM stops at EOS too")
    return Row("stop_at_eos", value, "client", "every request generates its max tokens (timed_trace sets it itself)",
               bench_flags=("--ignore-eos",))


def _chat(value, ctx: Context) -> Row:
    if not value:
        return Row("chat", value, "implicit", "prompts sent as they are (/v1/completions)")
    return Row("chat", value, "differs", "the template's tokens are in each prompt's ids and its input_length; the "
               "replay sends ids to /v1/completions, not messages to /v1/chat/completions")


def _clock(value, ctx: Context) -> Row:
    if value is None or type(value).__name__ == "WallClock":
        return Row("clock", value, "implicit", "vLLM's times are wall-clock times")
    return Row("clock", value, "none", "a step clock counts engine steps; vLLM measures the wall clock")


def _kvlab_only(knob: str, note: str, neutral=None):
    def handler(value, ctx: Context) -> Row:
        return Row(knob, value, "implicit" if value is neutral else "kvlab only", note)
    return handler


def _swap_tier(value, ctx: Context) -> Row:
    if value is None:
        return Row("swap_tier", value, "implicit", "no swap tier (vLLM v1 has none)")
    return Row("swap_tier", value, "none", "vLLM v1 never swaps preempted requests out (see preemption)")


def _hash_fn(value, ctx: Context) -> Row:
    if value is None or getattr(value, "__name__", "") == "chain_hash":
        return Row("hash_fn", value, "implicit", "kvlab's blake2b chain; vLLM's --prefix-caching-hash-algo sha256")
    return Row("hash_fn", value, "none", "a Python hash function has no vLLM counterpart (its algorithms: sha256, "
               "sha256_cbor, xxhash, xxhash_cbor)")


HANDLERS = {
    "cache": _cache, "scheme": _scheme, "group_size": _group_size,
    "block_size": _same("block_size", "tokens per block; vLLM's attention backend may accept only some sizes "
                        "(FlashAttention: multiples of 16)"),
    "num_blocks": _num_blocks,
    "max_num_seqs": _same("max_num_seqs", "sequences one step may hold"),
    "max_num_batched_tokens": _same("max_num_batched_tokens", "tokens one step may feed (vLLM's default on a GPU is "
                                    "2,048–16,384; kvlab's 512 suits a CPU)"),
    "chunked_prefill": _chunked_prefill, "policy": _policy, "preemption": _preemption,
    "speculative": _speculative, "num_speculative_tokens": _num_speculative_tokens,
    "speculative_options": _speculative_options, "tier": _tier, "swap_tier": _swap_tier, "seed": _seed,
    "temperature": _temperature, "top_p": _top_p, "stop_at_eos": _stop_at_eos, "chat": _chat, "clock": _clock,
    "progress": _kvlab_only("progress", "a progress bar", neutral=False),
    "on_step": _kvlab_only("on_step", "a hook the lab's widgets read the pool through"),
    "offload_costs": _kvlab_only("offload_costs", "measured costs for preemption='auto'"),
    "backend": _kvlab_only("backend", "kvlab's attention kernels ('torch', 'triton' or 'cpu'); vLLM picks its own "
                           "attention backend"),
    "max_seqs": _kvlab_only("max_seqs", "sizes kvlab's scale tables (vLLM: from max_num_seqs)"),
    "hash_fn": _hash_fn,
}
