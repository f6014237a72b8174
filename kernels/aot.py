"""Compile kvlab's Triton kernels for real GPUs on a machine without one, and check what the compiled code says.

Triton's wheel bundles NVIDIA's ptxas, so `triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`
builds PTX and a cubin on a CPU. This module compiles a covering set of the configurations the lab can launch
(`covering_set`: every value of each parameter at least once with the others at common values, plus the
SmolLM2-135M and Llama-3-8B shapes) for sm_80, sm_89 and sm_90, and checks each compiled kernel (`problems`):

* the attention products run on the tensor cores (`mma.sync` / `wgmma` in the PTX);
* K/V tiles arrive by wide loads: `cp.async` copies or `ld.global.v2/.v4` of 8 bytes or more (or a thread's
  whole share of a small tile), at least one K and one V tile's bytes per thread of them in the PTX, and the
  narrower loads (block-table entries, scales) carry at most half as many bytes;
* no register spills (ptxas: 0 bytes of spill stores);
* shared memory within the target's per-block limit — or, for an autotune config over it, another config of
  the same launch that fits (the autotuner skips a config that does not fit, and needs one that does);
* each outer-dimension stride (kernels/_common: names ending in b, n or r) is used only widened to int64.
STATED lists where a kernel does not meet a check on purpose, and why; the test asserts that exact state.

A compile is made from a real launch: the lab's own entry point (paged_decode_attention, …) runs on meta
tensors with the kernel swapped for a recorder, and Triton's own JIT binder specializes the recorded arguments
as it would at run time (types, divisibility by 16, integers equal to 1), once per autotune config.

    TRITON_INTERPRET=0 python -m kvlab.kernels.aot            # compile, print the summary, exit 1 on a problem
    TRITON_INTERPRET=0 python -m kvlab.kernels.aot --write    # and rewrite benchmarks/results/gpu_compile_table.*
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import multiprocessing
import os
import pathlib
import re
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from unittest import mock

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton._C.libtriton import get_cache_invalidating_env_vars
from triton.runtime.cache import get_cache_key
from triton.runtime.jit import create_function_from_signature

from kvlab.cache.quantization import GROUP_SIZES, SCHEMES, make_scheme
from kvlab.cache.quantized import QuantizedPool
from kvlab.memory import PRESETS

from . import paged_decode, paged_prefill, quant_decode, quant_store
from .store_kv import store_kv as store_kv_rows
from ._common import MAX_BLOCK_SIZE, POOL_DTYPES, SUPPORTED_HEAD_DIMS, KernelPair, Launcher

TARGETS = ("sm_80", "sm_89", "sm_90")  # A100; L4 / L40S / RTX 4090; H100 / H200
# The most shared memory one block may use (opt-in): CUDA C++ Programming Guide, "Technical Specifications per
# Compute Capability" — 163 KB on 8.0, 99 KB on 8.6 / 8.9, 227 KB on 9.0 (what Triton compares at launch).
SHARED_LIMIT_BYTES = {80: 163 * 1024, 89: 99 * 1024, 90: 227 * 1024}
MODELS = ("SmolLM2-135M", "Llama-3-8B")  # the shapes the lab runs, in bfloat16 (kvlab.model's CUDA dtype)
TABLE = pathlib.Path("benchmarks/results/gpu_compile_table")  # .json (every compile) and .md (the summary)


# --- targets ------------------------------------------------------------------------------------------------
def compute_capability(target: str) -> int:
    """'sm_90' → 90. Raises ValueError naming the value when it is not sm_NN or the installed Triton's ptxas
    cannot build for it."""
    match = re.fullmatch(r"sm_(\d+)", str(target))
    if not match:
        raise ValueError(f"compile target {target!r} is not of the form sm_NN (e.g. sm_80, sm_89, sm_90)")
    capability = int(match.group(1))
    if f"'compute_{capability}'" not in _ptxas_help(capability):
        raise ValueError(f"compile target {target!r}: the ptxas bundled with Triton {triton.__version__} "
                         f"cannot build for it")
    return capability


@functools.lru_cache
def _ptxas_help(capability: int) -> str:
    from triton.backends.nvidia.compiler import get_ptxas
    return subprocess.run([get_ptxas(capability).path, "--help"], capture_output=True, text=True).stdout


# --- what a launch compiles -----------------------------------------------------------------------------------
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


SMALLEST_SHARED = min(TARGETS, key=lambda t: SHARED_LIMIT_BYTES[int(t[3:])])


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


# --- compile jobs -----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Job:
    family: str
    label: str
    shape: Shape
    kernel: triton.JITFunction
    target: str
    config: str
    signature: dict
    constexprs: dict
    attrs: dict
    options: dict
    key: str  # the hash Triton's cache files this compile under


def _config_name(config) -> str:
    if config is None:
        return "-"
    tiles = " ".join(f"{k}={v}" for k, v in config.kwargs.items())
    return f"{tiles} w{config.num_warps} s{config.num_stages}"


def bind(launch: Launch, config, target: str, drop_hints: bool = False):
    """What Triton's JIT would compile for this launch on `target`: (signature, constexprs, attrs, options)."""
    fn, capability = launch.kernel, compute_capability(target)
    backend = make_backend(GPUTarget("cuda", capability, 32))
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = {**launch.kwargs, **(config.all_kwargs() if config is not None else {})}
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    if drop_hints:  # a deliberately broken compile: what the kernel would be without the divisibility hints
        attrs = {k: [] for k in attrs}
    src = ASTSource(fn, signature, constexprs, attrs)
    key = get_cache_key(src, backend, options, env_vars=get_cache_invalidating_env_vars())
    return signature, constexprs, attrs, options.__dict__, hashlib.sha256(key.encode()).hexdigest()


def jobs_for(cases: list[Case]) -> list[Job]:
    """One job per distinct compile (Triton's cache key); a compile two cases share keeps the model's label."""
    jobs: dict[str, Job] = {}
    for case in sorted(cases, key=lambda c: c.label not in MODELS):
        with recorded_launches() as launches:
            FAMILIES[case.family].launch(case.shape)
        for launch in launches:
            configs = [None] if launch.configs is None else launch.configs if case.all_configs else launch.configs[:1]
            for target in case.targets:
                for config in configs:
                    signature, constexprs, attrs, options, key = bind(launch, config, target)
                    jobs.setdefault(key, Job(case.family, case.label, case.shape, launch.kernel, target,
                                             _config_name(config), signature, constexprs, attrs, options, key))
    return list(jobs.values())


# --- compiling and reading the result -------------------------------------------------------------------------
def _result_cache() -> pathlib.Path:
    return pathlib.Path(triton.knobs.cache.dir) / "kvlab_aot"


def compile_job(job: Job) -> dict:
    """Compile one job → what the compiled code says. Triton's cache keeps the compiled kernel, and beside it
    this module keeps ptxas's report (registers, spills), which Triton prints only when it runs ptxas."""
    saved = _result_cache() / f"{job.key}.ptxas"
    log, start = io.StringIO(), time.perf_counter()
    fresh = not saved.exists()
    try:
        with mock.patch.object(triton.knobs.nvidia, "dump_ptxas_log", fresh), \
                mock.patch.object(triton.knobs.compilation, "always_compile", fresh), contextlib.redirect_stdout(log):
            kernel = triton.compile(ASTSource(job.kernel, job.signature, job.constexprs, job.attrs),
                                    target=GPUTarget("cuda", compute_capability(job.target), 32), options=job.options)
    except Exception as error:  # noqa: BLE001 — recorded: a configuration that does not compile is a finding
        last = [line.strip() for line in str(error).splitlines() if line.strip()][-1:] or [""]
        return {"error": f"{type(error).__name__}: {last[0][:300]}"}
    if fresh:
        saved.parent.mkdir(parents=True, exist_ok=True)
        tmp = saved.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(log.getvalue())
        tmp.replace(saved)
    return {"error": None, **read_ptxas_log(saved.read_text()), "shared_bytes": kernel.metadata.shared,
            "num_warps": kernel.metadata.num_warps, **read_ptx(kernel.asm["ptx"]),
            "narrow_outer_strides": narrow_outer_strides(kernel.asm["ttir"], job.signature),
            "compile_seconds": round(time.perf_counter() - start, 2)}


def read_ptxas_log(log: str) -> dict:
    """Registers and spills from `ptxas -v`, which Triton runs on every compile."""
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    assert regs and spills, f"no ptxas -v report in:\n{log[-2000:]}"
    return {"registers": int(regs.group(1)), "stack_bytes": int(spills.group(1)),
            "spill_store_bytes": int(spills.group(2)), "spill_load_bytes": int(spills.group(3))}


_WIDTH = re.compile(r"\.[busf](8|16|32|64)\b")
_VECTOR = re.compile(r"\.v(2|4|8)\b")


def _instruction_bytes(modifiers: str) -> int:
    width = _WIDTH.search(modifiers)
    vector = _VECTOR.search(modifiers)
    return (int(width.group(1)) // 8 if width else 0) * (int(vector.group(1)) if vector else 1)


def read_ptx(ptx: str) -> dict:
    """Tensor-core instructions and the width of every global load, copy and store (bytes per instruction)."""
    loads = Counter(_instruction_bytes(m) for m in re.findall(r"\bld\.global((?:\.[\w:]+)*)", ptx))
    stores = Counter(_instruction_bytes(m) for m in re.findall(r"\bst\.global((?:\.[\w:]+)*)", ptx))
    copies = Counter(int(n, 0) for n in re.findall(r"\bcp\.async\.c[ag]\.shared\.global[\w.:]*\s*\[[^\]]*\],\s*"
                                                    r"\[[^\]]*\],\s*(0x[0-9a-fA-F]+|\d+)", ptx))
    return {"mma": len(re.findall(r"\bmma\.sync\.", ptx)), "wgmma": len(re.findall(r"\bwgmma\.mma_async\.", ptx)),
            "loads": _counter_json(loads), "copies": _counter_json(copies), "stores": _counter_json(stores),
            "tma": len(re.findall(r"\bcp\.async\.bulk\.tensor", ptx))}


def _counter_json(counter: Counter) -> dict[str, int]:
    return {str(k): counter[k] for k in sorted(counter)}


def narrow_outer_strides(ttir: str, signature: dict) -> list[str]:
    """The outer-dimension strides (names ending in b, n or r) that the TTIR uses other than widened to int64."""
    lines = [line for line in ttir.splitlines() if "tt.func" not in line]
    narrow = []
    for name, kind in signature.items():
        if kind != "i32" or not re.fullmatch(r"stride_\w*[bnr]", name):
            continue
        uses = [line for line in lines if re.search(rf"%{name}\b", line)]
        if any(not re.search(rf"arith\.extsi %{name} : i32 to i64", line) for line in uses):
            narrow.append(name)
    return narrow


def compile_all(jobs: list[Job], workers: int = 2) -> list[dict]:
    """Compile every job (`workers` processes; forked, so each sees the parent's kernels) → one row per job."""
    global _JOBS
    _JOBS = jobs
    order = sorted(range(len(jobs)), key=lambda i: -_cost(jobs[i]))  # the slow compiles first
    if workers <= 1:
        results = {i: compile_job(jobs[i]) for i in order}
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            results = dict(zip(order, pool.map(_compile_index, order)))
    return [row(job, results[i]) for i, job in enumerate(jobs)]


_JOBS: list[Job] = []


def _compile_index(i: int) -> dict:
    return compile_job(_JOBS[i])


def _cost(job: Job) -> int:
    return {"prefill": 3, "decode": 3, "quant_decode": 4}.get(job.family, 1)


def row(job: Job, result: dict) -> dict:
    c = job.constexprs
    names = list(job.signature)
    value = {name: c.get((i,)) for i, name in enumerate(names)}
    scale_group = _scheme(job.shape).group_size if job.family == "quant_decode" else None
    return {"family": job.family, "kernel": job.kernel.fn.__name__, "case": job.label, "target": job.target,
            "config": job.config, "dtype": job.shape.dtype, "head_dim": job.shape.head_dim, "scale_group": scale_group,
            "tile_bytes_per_thread": tile_bytes_per_thread(job.family, value, job.shape, result),
            **result}


def tile_bytes_per_thread(family: str, value: dict, shape: Shape, result: dict) -> int | None:
    """Bytes of one K and one V tile a thread must load per loop iteration (attention kernels), else None."""
    if family not in ("decode", "prefill", "quant_decode") or result.get("error"):
        return None
    if value.get("BLOCK_N") is None:  # the combine kernel, recorded with decode
        return None
    threads = 32 * result["num_warps"]
    if family == "quant_decode":
        row_bytes = _scheme(shape).code_bytes
    else:
        row_bytes = value["HEAD_DIM"] * torch.empty(0, dtype=_dtype(shape)).element_size()
    return 2 * value["BLOCK_N"] * row_bytes // threads


# --- checks -------------------------------------------------------------------------------------------------------
ATTENTION = ("decode", "prefill", "quant_decode")


@dataclasses.dataclass(frozen=True)
class Stated:
    """A check a kernel does not meet on purpose (or not yet), with the reason; `applies` picks its rows."""
    check: str
    applies: object
    reason: str


PREFILL_128_ON_4_WARPS = "BLOCK_M=128 BLOCK_N=32 w4 s2"
STATED = [
    Stated("mma", lambda r: r["dtype"] == "float32",
           "float32 pools take full-precision products (DOT_PRECISION 'ieee', kernels/_common.dot_flags): FMA, not "
           "tf32 tensor cores"),
    Stated("compiles", lambda r: r["target"] == "sm_80" and r["case"] == "scheme=fp8" and "fp8e4nv" in r["error"],
           "float8 e4m3 needs compute capability 8.9; kvlab.cache.quantization.make_scheme refuses fp8 there"),
    Stated("narrow_loads", lambda r: r["family"] == "quant_decode" and r["scale_group"] < r["head_dim"],
           "quantized decode with scales in groups (int4, kivi2 values; int8 in groups takes the same path): "
           "the codes arrive by "
           "cp.async copies, but the [BLOCK_N, D] scale tile is gathered by 2-byte loads, each scale once per "
           "channel of its group (L1 hits after the first) — 64 `ld.global.b16` a thread at BLOCK_N=32. Loading "
           "[BLOCK_N, groups] and broadcasting in registers would cut them by the group size"),
    Stated("spills", lambda r: r["family"] in ATTENTION and r["registers"] == 255 and r["spill_store_bytes"] <= 512,
           "at ptxas's 255-register ceiling — the fp32 accumulator of a [BLOCK_M or BLOCK_G, D] tile, the query "
           "tile and the scores share the register file: prefill at head_dim 128, head_dim 256, query groups over "
           "64, float32 quantized decode — up to 512 B go to local memory (L1-cached)"),
    Stated("spills", lambda r: (r["family"], r["head_dim"], r["config"]) == ("prefill", 256, PREFILL_128_ON_4_WARPS),
           "prefill, BLOCK_M=128 on 4 warps at head_dim 256: the accumulator alone is 256 fp32 registers a thread; "
           "KBs spill. The autotuner still times it beside the configs that spill ≤ 236 B: a rule pruning it "
           "(BLOCK_M · D / threads > 128) waits for a GPU to confirm the others are as fast"),
    Stated("spills", lambda r: (r["family"], r["dtype"]) == ("prefill", "float32"),
           "float32 prefill, full-precision FMA products: on sm_80 ptxas keeps 32 registers and a 6 KB stack "
           "(14 KB spilled) for BLOCK_M=64 BLOCK_N=32 — float32 is not the lab's GPU dtype (bfloat16 is)"),
]


def stated(check: str, r: dict) -> Stated | None:
    return next((s for s in STATED if s.check == check and s.applies(r)), None)


def problems(rows: list[dict]) -> list[str]:
    """Every row that fails a check and has no stated reason; [] when all is well."""
    found = []
    for r in rows:
        where = f"{r['kernel']} [{r['case']}] {r['target']} {r['config']}"
        if r["error"]:
            if not stated("compiles", r):
                found.append(f"{where}: does not compile: {r['error']}")
            continue
        for check, message in row_problems(r):
            if not stated(check, r):
                found.append(f"{where}: {message}")
    found += shared_memory_problems(rows)
    return found


def row_problems(r: dict) -> list[tuple[str, str]]:
    out = []
    if r["family"] in ATTENTION and r["tile_bytes_per_thread"] is not None:
        if r["mma"] + r["wgmma"] == 0:
            out.append(("mma", "no tensor-core MMA instruction in the PTX"))
        wide, narrow = wide_bytes(r), narrow_bytes(r)
        if wide < r["tile_bytes_per_thread"]:
            out.append(("wide_loads", f"K/V tiles: {wide} B per thread by wide loads or copies, "
                                      f"{r['tile_bytes_per_thread']} B needed (loads {r['loads']})"))
        if narrow > wide / 2:
            out.append(("narrow_loads", f"{narrow} B per thread by narrow loads beside {wide} B by wide ones "
                                        f"(loads {r['loads']}, copies {r['copies']})"))
    if r["spill_store_bytes"] or r["spill_load_bytes"]:
        out.append(("spills", f"{r['spill_store_bytes']} B spill stores, {r['spill_load_bytes']} B spill loads "
                              f"({r['registers']} registers)"))
    if r["narrow_outer_strides"]:
        out.append(("int64", f"outer strides used in int32: {', '.join(r['narrow_outer_strides'])}"))
    return out


def wide_bytes(r: dict) -> int:
    """Bytes per thread the PTX moves from global memory by wide instructions: 8 bytes or more, or a thread's
    whole share of one tile when that is smaller (a 16-channel int8 tile gives each thread 4 bytes). A static
    count: a pipelined loop's prologue counts too."""
    wide = min(8, r["tile_bytes_per_thread"] // 2)
    return sum(int(n) * k for part in ("loads", "copies") for n, k in r[part].items() if int(n) >= wide)


def narrow_bytes(r: dict) -> int:
    """Bytes per thread of the other global loads and copies (static count, as wide_bytes)."""
    wide = min(8, r["tile_bytes_per_thread"] // 2)
    return sum(int(n) * k for part in ("loads", "copies") for n, k in r[part].items() if int(n) < wide)


def over_shared_limit(r: dict) -> bool:
    return r["shared_bytes"] > SHARED_LIMIT_BYTES[compute_capability(r["target"])]


def shared_memory_problems(rows: list[dict]) -> list[str]:
    """A config over the target's limit is skipped by the autotuner; a launch with no config that fits fails."""
    by_launch: dict[tuple, list[dict]] = {}
    for r in rows:
        if not r["error"]:
            by_launch.setdefault((r["kernel"], r["case"], r["target"]), []).append(r)
    found = []
    for (kernel, case, target), group in by_launch.items():
        if all(over_shared_limit(r) for r in group):
            limit = SHARED_LIMIT_BYTES[compute_capability(target)]
            found.append(f"{kernel} [{case}] {target}: no config fits in {limit} B of shared memory "
                         f"({', '.join(str(r['shared_bytes']) for r in group)} B)")
    return found


# --- the table ------------------------------------------------------------------------------------------------
TABLE_FIELDS = ("family", "kernel", "case", "target", "config", "error", "registers", "stack_bytes",
                "spill_store_bytes", "spill_load_bytes", "shared_bytes", "mma", "wgmma", "loads", "copies", "stores",
                "narrow_outer_strides")


def table_rows(rows: list[dict]) -> list[dict]:
    """The committed rows: what the pinned Triton and ptxas produce, deterministically, sorted."""
    kept = [{k: r.get(k) for k in TABLE_FIELDS} for r in rows]
    return sorted(kept, key=lambda r: (r["family"], r["kernel"], r["case"], r["target"], r["config"]))


def summary_markdown(rows: list[dict], seconds: float | None = None) -> str:
    ok = [r for r in rows if not r["error"]]
    lines = [
        "# kvlab's Triton kernels compiled for real GPUs, on a CPU",
        "",
        f"`python -m kvlab.kernels.aot --write` (Triton {triton.__version__}, its bundled ptxas), "
        f"{len(rows)} compiles of the covering set (kvlab/kernels/aot.py: every value of each parameter with "
        f"the others common on {TARGETS[0]}, the schemes on every target, the {' and '.join(MODELS)} shapes with "
        f"every autotune config on every target, head_dim 256 with every config on {SMALLEST_SHARED}, whose shared "
        "memory is the smallest). "
        "Every row is in gpu_compile_table.json. Shared memory limits per block (opt-in): "
        + ", ".join(f"sm_{cc} {limit // 1024} KB" for cc, limit in SHARED_LIMIT_BYTES.items())
        + " (CUDA C++ Programming Guide, Technical Specifications per Compute Capability).",
        "",
        "| kernel | target | compiles | registers | spill stores (B) | shared memory (B) | MMA "
        "| K/V wide-load bytes / needed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (kernel, target), group in sorted(_groups(ok, ("kernel", "target")).items()):
        regs = [r["registers"] for r in group]
        attention = [r for r in group if r["tile_bytes_per_thread"] is not None]
        mma = f"{sum(1 for r in attention if r['mma'] + r['wgmma'])}/{len(attention)}" if attention else "—"
        ratios = [wide_bytes(r) / r["tile_bytes_per_thread"] for r in attention]
        fraction = f"{min(ratios):.2f}–{max(ratios):.2f}×" if attention else "—"
        lines.append(f"| {kernel} | {target} | {len(group)} | {min(regs)}–{max(regs)} | "
                     f"{max(r['spill_store_bytes'] for r in group)} | {max(r['shared_bytes'] for r in group)} | "
                     f"{mma} | {fraction} |")
    lines += ["", "## The model shapes, every autotune config", "",
              "| kernel | shape | target | config | registers | spill stores (B) | shared (B) | MMA "
              "| wide / needed B |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted((r for r in ok if r["case"] in MODELS),
                    key=lambda r: (r["kernel"], r["case"], r["target"], r["config"])):
        needed = r["tile_bytes_per_thread"]
        lines.append(f"| {r['kernel']} | {r['case']} | {r['target']} | {r['config']} | {r['registers']} | "
                     f"{r['spill_store_bytes']} | {r['shared_bytes']}{' (over)' if over_shared_limit(r) else ''} | "
                     f"{r['mma'] + r['wgmma'] if needed else '—'} | "
                     f"{f'{wide_bytes(r)} / {needed}' if needed else '—'} |")
    lines += ["", "## Stated exceptions", ""]
    for s in STATED:
        hit = [r for r in rows if (s.check == "compiles") == bool(r["error"]) and s.applies(r)]
        lines.append(f"- **{s.check}** ({len(hit)} of the compiles): {s.reason}")
    errors = [r for r in rows if r["error"]]
    if errors:
        lines += ["", "## Compiles that fail", ""]
        lines += [f"- {r['kernel']} [{r['case']}] {r['target']} {r['config']}: {r['error']}" for r in errors]
    if seconds is not None:
        lines += ["", f"Compiled in {seconds:.0f} s."]
    return "\n".join(lines) + "\n"


def _groups(rows, keys):
    out: dict[tuple, list] = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def run(targets: tuple[str, ...] = TARGETS, workers: int = 2) -> list[dict]:
    """Compile the covering set for `targets` → one row per compile (see row)."""
    if not isinstance(paged_decode._paged_decode_kernel.compiled, triton.JITFunction) or \
            os.environ.get("TRITON_INTERPRET") != "0":
        raise RuntimeError("set TRITON_INTERPRET=0 before importing kvlab: the kernels must not be interpreted")
    for target in targets:
        compute_capability(target)
    return compile_all(jobs_for(covering_set(tuple(targets))), workers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite {TABLE}.json and .md")
    parser.add_argument("--json", type=pathlib.Path, help="write every row (with the check inputs) to this file")
    parser.add_argument("--targets", nargs="+", default=list(TARGETS))
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        rows = run(tuple(args.targets), args.workers)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    found = problems(rows)
    if args.json:
        args.json.write_text(json.dumps({"seconds": seconds, "rows": rows, "problems": found}, indent=1))
    if args.write:
        TABLE.with_suffix(".json").write_text(json.dumps({"triton": triton.__version__, "rows": table_rows(rows)},
                                                         indent=1) + "\n")
        TABLE.with_suffix(".md").write_text(summary_markdown(rows))
    print(summary_markdown(rows, seconds))
    print("\n".join(found) if found else f"{len(rows)} compiles, every check passes")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
