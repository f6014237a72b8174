"""What kvlab.kernels.aot compiles: the lab's own launches, recorded on meta tensors, over a covering set of shapes.

A compile is made from a real launch: the lab's entry point (paged_decode_attention, …) runs on meta tensors with
the kernel swapped for a recorder (`recorded_launches`). `covering_set` lists the shapes: every value of each
parameter at least once with the others at common values, plus the SmolLM2-135M and Llama-3-8B shapes.
"""
from __future__ import annotations

import contextlib
import dataclasses
from unittest import mock

import torch
import triton

from kvlab.cache.quantization import GROUP_SIZES, SCHEMES, make_scheme
from kvlab.cache.quantized import QuantizedPool
from kvlab.memory import PRESETS

from . import paged_decode, paged_prefill, quant_decode, quant_store
from ._common import MAX_BLOCK_SIZE, POOL_DTYPES, SUPPORTED_HEAD_DIMS, KernelPair, Launcher
from .aot_targets import SMALLEST_SHARED, TARGETS
from .store_kv import store_kv as store_kv_rows

MODELS = ("SmolLM2-135M", "Llama-3-8B")  # the shapes the lab runs, in bfloat16 (kvlab.model's CUDA dtype)


# --- what a launch compiles ---------------------------------------------------------------------------------
@dataclasses.dataclass
class Launch:
    kernel: triton.JITFunction
    args: tuple
    kwargs: dict
    configs: list | None  # the autotune configs (None: launched as it is)


@contextlib.contextmanager
def recorded_launches():
    """Inside, kvlab's kernels are not launched: each launch on a non-CPU device (meta tensors) is recorded."""
    launches: list[Launch] = []

    class Recorder:
        def __init__(self, kernel, configs):
            self.kernel, self.configs = kernel, configs

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append(Launch(self.kernel, args, kwargs, self.configs))

    def autotuned(launcher, device, interpreter_config):
        return Recorder(launcher.kernel.compiled, launcher.configs), {}

    with mock.patch.object(Launcher, "__call__", autotuned), \
            mock.patch.object(KernelPair, "for_device", lambda pair, device: Recorder(pair.compiled, None)):
        yield launches


@dataclasses.dataclass(frozen=True)
class Shape:
    """The sizes that choose a compiled variant. The defaults are the common values: Llama-3-8B in bfloat16."""
    dtype: str = "bfloat16"
    head_dim: int = 128
    block_size: int = 16
    num_kv_heads: int = 8
    group: int = 4  # query heads per KV head
    num_splits: int = 1
    context: int = 4096  # the block table's capacity in tokens
    scheme: str = "int8"
    scheme_group: int = 0  # 0: the scheme's default

    def label(self, base: Shape) -> str:
        changed = [f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                   if getattr(self, f.name) != getattr(base, f.name)]
        return " ".join(changed) or "common"


def _meta(*shape, dtype=torch.int32):
    return torch.empty(shape, device="meta", dtype=dtype)


def _dtype(s: Shape) -> torch.dtype:
    return getattr(torch, s.dtype)


def _quant_pool(s: Shape, scheme) -> QuantizedPool:
    return QuantizedPool.zeros(scheme, 64, s.block_size, s.num_kv_heads, "meta", recent_slots=4,
                               recent_dtype=_dtype(s))


def _scheme(s: Shape):
    return make_scheme(s.scheme, s.head_dim, s.scheme_group or None)


def launch_decode(s: Shape) -> None:
    batch, blocks = 4, -(-s.context // s.block_size)
    query = _meta(batch, s.num_kv_heads * s.group, s.head_dim, dtype=_dtype(s))
    pool = _meta(64, s.block_size, s.num_kv_heads, s.head_dim, dtype=_dtype(s))
    paged_decode.paged_decode_attention(query, pool, pool, _meta(batch, blocks), _meta(batch),
                                        num_splits=s.num_splits, check=False)


def launch_combine(s: Shape) -> None:
    if s.num_splits == 1:  # nothing to combine
        return
    out = _meta(4, s.num_kv_heads * s.group, s.head_dim, dtype=_dtype(s))
    partial, lse, _ = paged_decode.split_scratch(out, s.num_splits)
    paged_decode.combine_splits(partial, lse, out)


def launch_prefill(s: Shape) -> None:
    batch, blocks = 2, -(-s.context // s.block_size)
    query = _meta(batch, 64, s.num_kv_heads * s.group, s.head_dim, dtype=_dtype(s))
    pool = _meta(64, s.block_size, s.num_kv_heads, s.head_dim, dtype=_dtype(s))
    paged_prefill.paged_prefill_attention(query, pool, pool, _meta(batch, blocks), _meta(batch), _meta(batch),
                                          check=False)


def launch_quant_decode(s: Shape) -> None:
    scheme, rows, blocks = _scheme(s), 4, -(-s.context // s.block_size)
    pool = _quant_pool(s, scheme)
    stage = _meta(rows * s.block_size, s.num_kv_heads, s.head_dim, dtype=_dtype(s))
    quant_decode.quant_decode_attention(scheme, _meta(rows, s.num_kv_heads * s.group, s.head_dim, dtype=_dtype(s)),
                                        pool, _meta(rows, blocks), *[_meta(rows)] * 4, stage, stage,
                                        num_splits=s.num_splits)


def launch_quant_store(s: Shape) -> None:
    scheme = _scheme(s)
    pool = _quant_pool(s, scheme)
    quant_store.quantize_store(scheme, _meta(16, s.num_kv_heads, s.head_dim, dtype=_dtype(s)), pool.v_codes,
                               pool.v_scale, pool.v_min, _meta(16))


def launch_key_blocks(s: Shape) -> None:
    scheme = _scheme(s)
    pool = _quant_pool(s, scheme)
    quant_store.quantize_key_blocks(scheme, _meta(4 * s.block_size, s.num_kv_heads, s.head_dim, dtype=_dtype(s)),
                                    pool.k_codes, pool.k_scale, pool.k_min, _meta(4), _meta(4))


def launch_store_kv(s: Shape) -> None:
    rows = _meta(16, s.num_kv_heads, s.head_dim, dtype=_dtype(s))
    pool = _meta(64, s.block_size, s.num_kv_heads, s.head_dim, dtype=_dtype(s))
    store_kv_rows(rows, rows, pool, pool, _meta(16, dtype=torch.int64), check=False)


# --- the covering set ----------------------------------------------------------------------------------------
def axis_values() -> dict[str, list]:
    """Every value each parameter can take, from the tables the launchers use."""
    return {
        "dtype": [str(d).removeprefix("torch.") for d in POOL_DTYPES],
        "head_dim": list(SUPPORTED_HEAD_DIMS),
        "block_size": [1 << k for k in range(MAX_BLOCK_SIZE.bit_length())],
        # every padded group size (decode pads the group to a power of two ≥ 16) and the known models' groups
        "group": sorted({1 << k for k in range(paged_prefill.MAX_GROUP.bit_length())}
                        | {m.num_heads // m.num_kv_heads for m in PRESETS.values()}),
        "num_splits": [1 << k for k in range(paged_decode.MAX_SPLITS.bit_length())],
        "num_kv_heads": sorted({m.num_kv_heads for m in PRESETS.values()}),
        "scheme": list(SCHEMES),  # each at its default group
        "int4_group": [g for g in GROUP_SIZES if g <= Shape.head_dim],  # the group sets both scales and packing
        # a table of one column (stride 1: specialized), one not a multiple of 16 columns, Llama-3's 128K
        "context": [1, 100, PRESETS["Llama-3-8B"].context_len],
    }


@dataclasses.dataclass(frozen=True)
class Family:
    launch: object
    axes: tuple[str, ...]
    base: Shape = Shape()
    max_group: int | None = None


FAMILIES = {
    "decode": Family(launch_decode, ("dtype", "head_dim", "block_size", "group", "num_splits", "context")),
    "combine": Family(launch_combine, ("dtype", "head_dim", "num_splits"), Shape(num_splits=2)),
    "prefill": Family(launch_prefill, ("dtype", "head_dim", "block_size", "group", "context"),
                      max_group=paged_prefill.MAX_GROUP),
    "quant_decode": Family(launch_quant_decode, ("dtype", "head_dim", "block_size", "group", "num_splits", "scheme",
                                                 "int4_group", "context")),
    "quant_store": Family(launch_quant_store, ("dtype", "head_dim", "block_size", "scheme", "int4_group")),
    "key_blocks": Family(launch_key_blocks, ("dtype", "head_dim", "block_size"), Shape(scheme="kivi2")),
    "store_kv": Family(launch_store_kv, ("dtype", "head_dim", "block_size", "num_kv_heads")),
}


@dataclasses.dataclass(frozen=True)
class Case:
    family: str
    shape: Shape
    label: str
    targets: tuple[str, ...]
    all_configs: bool  # every autotune config, or the first (the common one)


def covering_set(targets: tuple[str, ...] = TARGETS) -> list[Case]:
    """Each family: each axis through every value with the others at the common values, on the first target
    with the first autotune config (the schemes on every target: fp8 needs sm_89); the model shapes with every
    autotune config on every target; the largest head with every config where shared memory is smallest."""
    values, cases = axis_values(), []
    for name, family in FAMILIES.items():
        base = family.base
        for axis in family.axes:
            for value in values[axis]:
                if axis == "int4_group":
                    shape = dataclasses.replace(base, scheme="int4", scheme_group=value)
                else:
                    shape = dataclasses.replace(base, **{axis: value})
                if family.max_group and shape.group > family.max_group:
                    continue
                if shape != base:
                    on = targets if axis == "scheme" else targets[:1]
                    cases.append(Case(name, shape, shape.label(base), on, False))
        for model in MODELS:
            m = PRESETS[model]
            shape = dataclasses.replace(base, head_dim=m.head_dim, num_kv_heads=m.num_kv_heads,
                                        group=m.num_heads // m.num_kv_heads)
            cases.append(Case(name, shape, model, targets, True))
        widest = dataclasses.replace(base, head_dim=max(SUPPORTED_HEAD_DIMS))
        on = tuple(t for t in targets if t == SMALLEST_SHARED)
        if on:
            cases.append(Case(name, widest, widest.label(base), on, True))
    return cases

