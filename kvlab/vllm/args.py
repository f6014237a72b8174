"""A kvlab serving configuration as vLLM engine arguments and `vllm serve` flags — knob by knob, with a one-line
note wherever vLLM has no equivalent or means something else.

    mapping = kvlab.vllm.map_config({"cache": "prefix", "num_blocks": 512, "max_num_seqs": 8,
                                     "max_num_batched_tokens": 256})
    mapping.rows              # one Row per kvlab knob: its value, the vLLM argument(s), how they relate, a note
    mapping.engine_args()     # {"enable_prefix_caching": True, "block_size": 16, "num_gpu_blocks_override": 513, …}
    mapping.serve_command()   # "vllm serve HuggingFaceTB/SmolLM2-135M-Instruct --enable-prefix-caching …"
    kvlab.vllm.flag("policy", "static")   # ValueError: vLLM always batches continuously

A configuration is a dict of kvlab.serve's keyword arguments (cache, num_blocks, block_size, max_num_seqs,
max_num_batched_tokens, policy, preemption, speculative, …, the cache layout's options scheme, group_size, tier,
…) plus "chunked_prefill"; a knob it leaves out takes kvlab's default, so the table always covers every knob.
How each row relates to vLLM (Row.kind):
  same        the vLLM argument means what the kvlab knob means;
  differs     mapped to the nearest vLLM argument, whose meaning differs as the note says;
  implicit    vLLM does this with no argument (kvlab's default is vLLM's only behaviour);
  client      a per-request setting: a `vllm bench serve` flag (bench_flags), not a server one;
  kvlab only  instrumentation of the lab (progress bars, clocks, hooks): nothing is served differently;
  none        vLLM cannot do it: engine_args(), serve_flags() and flag() refuse it, naming knob and value.

The names are vLLM's EngineArgs fields as of 2026 (vllm/config/cache.py, scheduler.py, speculative.py): the
per-token-head KV dtypes (int8/fp8/int4_per_token_head) came with vLLM PR #38378 and #38854 and run on its Triton
attention backend; `kv_offloading_size` is GiB of CPU memory for KV blocks (`cpu_offload_gb` is for weights).
The test suite parses these flags with vLLM's own parser where vLLM is installed.
"""
from __future__ import annotations

import argparse
import inspect
import json
import shlex
from dataclasses import dataclass

from ..cache import LAYOUT_OPTIONS, check_cache_options
from ..checks import positive_int
from ..memory import resolve_shape
from .knobs import HANDLERS, Context, Row, show_value

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the checkpoint kvlab's GGUF file was made from
POOL_AS = ("num_gpu_blocks_override", "gpu_memory_utilization")

# vLLM engine argument → its type on the command line (flag: --name-with-dashes; bools: --x / --no-x)
ENGINE_ARG_TYPES = {
    "enable_prefix_caching": bool, "block_size": int, "num_gpu_blocks_override": int,
    "gpu_memory_utilization": float, "max_num_seqs": int, "max_num_batched_tokens": int,
    "enable_chunked_prefill": bool, "scheduling_policy": str, "kv_cache_dtype": str, "speculative_config": dict,
    "kv_offloading_size": float, "kv_offloading_backend": str, "seed": int, "dtype": str, "max_model_len": int,
}
ROW_ORDER = ("cache", "block_size", "num_blocks", "scheme", "group_size", "max_num_seqs", "max_num_batched_tokens",
             "chunked_prefill", "policy", "preemption", "speculative", "num_speculative_tokens",
             "speculative_options", "tier", "swap_tier", "seed", "temperature", "top_p", "stop_at_eos", "chat")
NOT_KNOBS = ("model", "tokenizer", "requests")  # arguments of kvlab.serve that are not serving settings
EXTRA_KNOBS = {"chunked_prefill": True}  # not a kvlab.serve argument: kvlab always chunks


def to_flags(engine_args: dict) -> list[str]:
    """Engine arguments as `vllm serve` flags: --block-size 16, --enable-prefix-caching / --no-enable-prefix-caching,
    --speculative-config '{"method": …}' (JSON)."""
    flags = []
    for name, value in engine_args.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, dict):
            flags += [flag, json.dumps(value, separators=(",", ":"))]
        else:
            flags += [flag, str(value)]
    return flags


def flags_parser() -> argparse.ArgumentParser:
    """A parser of exactly the flags this module writes, built from ENGINE_ARG_TYPES (what is not given is absent)."""
    parser = argparse.ArgumentParser(prog="vllm serve", add_help=False, argument_default=argparse.SUPPRESS)
    for name, kind in ENGINE_ARG_TYPES.items():
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction)
        else:
            parser.add_argument(flag, type=json.loads if kind is dict else kind)
    return parser


def parse_flags(flags: list[str]) -> dict:
    """`vllm serve` flags (as written by to_flags) → engine arguments."""
    return vars(flags_parser().parse_args(flags))


# --- the knobs ------------------------------------------------------------------------------------------------

def knob_defaults() -> dict:
    """Every kvlab serving knob with its default: kvlab.serve's keyword arguments, the paged layouts' options, and
    chunked_prefill."""
    from ..engine import serve

    params = inspect.signature(serve).parameters
    knobs = {name: p.default for name, p in params.items()
             if name not in NOT_KNOBS and p.kind is not inspect.Parameter.VAR_KEYWORD}
    options = {name: None for layout in LAYOUT_OPTIONS.values() for name in layout if name not in knobs}
    every = knobs | options | EXTRA_KNOBS
    ordered = [k for k in ROW_ORDER if k in every] + [k for k in every if k not in ROW_ORDER]
    return {k: every[k] for k in ordered}


# --- the mapping ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VllmMapping:
    rows: tuple[Row, ...]
    model: str
    extra_args: dict  # engine arguments that are no kvlab knob: dtype, max_model_len

    @property
    def refused(self) -> list[Row]:
        """Rows vLLM cannot serve (kind "none")."""
        return [r for r in self.rows if r.kind == "none"]

    def row(self, knob: str) -> Row:
        for r in self.rows:
            if r.knob == knob:
                return r
        raise ValueError(f"unknown kvlab knob {knob!r}; the knobs are {', '.join(r.knob for r in self.rows)}")

    def _check(self) -> None:
        if self.refused:
            raise ValueError("; ".join(r.refusal() for r in self.refused))

    def engine_args(self) -> dict:
        """vLLM EngineArgs fields (ValueError naming every knob vLLM cannot serve)."""
        self._check()
        args = {}
        for r in self.rows:
            args |= r.engine_args
        return args | self.extra_args

    def serve_flags(self) -> list[str]:
        return to_flags(self.engine_args())

    def serve_command(self) -> str:
        return shlex.join(["vllm", "serve", self.model, *self.serve_flags()])

    def bench_flags(self) -> list[str]:
        """The client-side settings as `vllm bench serve` flags (temperature, top_p, --ignore-eos)."""
        self._check()
        return [f for r in self.rows for f in r.bench_flags]

    def table(self) -> list[dict]:
        """The rows as plain dicts (knob, kvlab value, vLLM flags, kind, note), for a notebook's table."""
        return [{"kvlab knob": r.knob, "kvlab value": show_value(r.value),
                 "vLLM": " ".join(to_flags(r.engine_args) + list(r.bench_flags)) or "—", "kind": r.kind,
                 "note": r.note}
                for r in self.rows]


def _check_layout_options(config: dict) -> None:
    """kvlab's own refusal of a layout option the chosen layout does not take (group_size for the prefix cache):
    the options config sets, beside block_size and num_blocks, which kvlab.serve takes for every layout."""
    serve_args = ("block_size", "num_blocks")
    options = {name: value for name, value in config.items() if value is not None and name not in serve_args
               and any(name in layout for layout in LAYOUT_OPTIONS.values())}
    cache = config.get("cache", knob_defaults()["cache"])
    if isinstance(cache, str):
        check_cache_options(cache, options)
    elif options:
        raise ValueError(f"cache options {sorted(options)} only apply to a cache named by a string, not to a cache "
                         f"object")


def map_config(config: dict | None = None, model: str = MODEL, pool_as: str = "num_gpu_blocks_override",
               gpu_memory_bytes: int | None = None, weight_bytes: int | None = None, dtype: str | None = None,
               max_model_len: int | None = None, shape="SmolLM2-135M") -> VllmMapping:
    """Every kvlab knob (config's value, else kvlab's default) mapped to vLLM. pool_as: how num_blocks becomes a
    vLLM pool size — "num_gpu_blocks_override" (exact: num_blocks + 1, for vLLM's null block) or
    "gpu_memory_utilization" (needs gpu_memory_bytes and weight_bytes, positive byte counts). dtype, max_model_len:
    passed on to vLLM as they are. shape: the served model's attention shape (a kvlab.memory preset name or
    ModelShape), for pool bytes and the head size. ValueError naming an unknown knob or a value kvlab itself would
    refuse; a knob vLLM cannot serve is a row of kind "none" (engine_args refuses)."""
    config = dict(config or {})
    defaults = knob_defaults()
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        raise ValueError(f"unknown kvlab knobs {unknown}; the knobs are {', '.join(defaults)}")
    if pool_as not in POOL_AS:
        raise ValueError(f"unknown pool_as {pool_as!r}; choose one of {', '.join(POOL_AS)}")
    for name, nbytes in (("gpu_memory_bytes", gpu_memory_bytes), ("weight_bytes", weight_bytes)):
        if nbytes is not None:
            positive_int(name, nbytes)
    _check_layout_options(config)
    full = defaults | config
    ctx = Context(full, pool_as, gpu_memory_bytes, weight_bytes, resolve_shape(shape))
    rows = tuple(HANDLERS[knob](full[knob], ctx) for knob in defaults)
    extra = {"dtype": dtype} if dtype is not None else {}
    if max_model_len is not None:
        extra["max_model_len"] = positive_int("max_model_len", max_model_len)
    return VllmMapping(rows, model, extra)


def flag(knob: str, value, **options) -> list[str]:
    """The `vllm serve` flags of one kvlab knob at `value` ([] where vLLM needs none). ValueError naming the knob
    and value when it has no vLLM meaning, or is a client-side or lab-only setting with no server flag."""
    if knob not in knob_defaults():
        raise ValueError(f"unknown kvlab knob {knob!r}; the knobs are {', '.join(knob_defaults())}")
    row = map_config({knob: value}, **options).row(knob)
    if row.kind == "none":
        raise ValueError(row.refusal())
    if row.kind in ("client", "kvlab only"):
        raise ValueError(f"kvlab's {knob}={show_value(value)} has no `vllm serve` flag: {row.note}")
    return to_flags(row.engine_args)
