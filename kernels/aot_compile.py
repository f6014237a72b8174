"""Compiling what kvlab.kernels.aot recorded: one job per distinct compile, built by `triton.compile` for a GPU
target on this CPU (Triton's wheel bundles ptxas), and one row per job of what the compiled code says.

Triton's own JIT binder specializes the recorded arguments as it would at run time (types, divisibility by 16,
integers equal to 1), once per autotune config (`bind`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import multiprocessing
import os
import pathlib
import time
from concurrent.futures import ProcessPoolExecutor
from unittest import mock

import torch
import triton
from triton._C.libtriton import get_cache_invalidating_env_vars
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.cache import get_cache_key
from triton.runtime.jit import create_function_from_signature

from .aot_launches import FAMILIES, MODELS, Case, Launch, Shape, _dtype, _scheme, recorded_launches
from .aot_ptx import narrow_outer_strides, read_ptx, read_ptxas_log
from .aot_targets import compute_capability


# --- jobs: one per distinct compile -------------------------------------------------------------------------
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


# --- compiling ----------------------------------------------------------------------------------------------
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
            "config": job.config, "dtype": job.shape.dtype, "head_dim": job.shape.head_dim, "group": job.shape.group,
            "scale_group": scale_group,
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

