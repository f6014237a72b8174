"""Decode's matrix-vector product on a CPU at memory bandwidth: y = x @ Wᵀ, W [N, K] row-major float32.

A batch-1 decode step multiplies one activation vector by every weight matrix, reading each weight once for
2 FLOP: memory-bound, so its speed is the bandwidth the product reaches. torch's F.linear on a CPU (MKL, what
HF transformers runs) reaches ~11 GB/s on a 2-core EPYC whose plain read reaches ~30 GB/s; this C++ kernel
(cpu_gemv.cpp: rows split across torch's threads, each streamed front to back) reaches ~29 GB/s on the
same 121 products of a SmolLM2 step. `python -m kvlab.bench gemv` measures both on any machine.

Bytes it must move: reads N·K·4 (W, once, for any M) + M·K·4 (x), writes M·N·4 (y).

It is compiled on first use with torch.utils.cpp_extension (a C++ compiler and ninja; ~30 s once, then
cached under TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions). Where it cannot be built, `load_gemv`
warns once and returns None, and callers fall back to F.linear. KVLAB_CPU_GEMV=0 switches it off.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import platform
import warnings

import torch

SOURCE = pathlib.Path(__file__).with_name("cpu_gemv.cpp")
_loaded: dict[str, object] = {}


def gemv_bytes(m: int, n: int, k: int, element_size: int = 4) -> int:
    return (n * k + m * k + m * n) * element_size


def gemv_reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [M, K] @ weight [N, K]ᵀ → [M, N] in plain torch."""
    return x @ weight.t()


def _build_name() -> str:
    """The extension's name carries the source and this CPU's flags: -march=native code must not be reused
    on another kind of CPU sharing the same home directory."""
    flags = ""
    if pathlib.Path("/proc/cpuinfo").is_file():
        flags = next((line for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    digest = hashlib.sha1(SOURCE.read_bytes() + flags.encode() + platform.machine().encode()).hexdigest()[:10]
    return f"kvlab_cpu_gemv_{digest}"


def load_gemv():
    """The compiled module (with .gemv(x, w)), or None where it is switched off or cannot be built."""
    if "module" in _loaded:
        return _loaded["module"]
    module = None
    if os.environ.get("KVLAB_CPU_GEMV", "1") != "0":
        try:
            from torch.utils import cpp_extension

            flags = ["-O3", "-fopenmp-simd", "-march=native" if platform.machine() in ("x86_64", "AMD64") else "-mcpu=native"]
            module = cpp_extension.load(_build_name(), [str(SOURCE)], extra_cflags=flags, verbose=False)
        except Exception as err:  # no compiler, no ninja, a read-only cache: the lab still runs, slower
            warnings.warn(f"kvlab: the CPU matrix-vector kernel could not be built ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}); using F.linear, which decodes about "
                          f"2× slower on a CPU", RuntimeWarning, stacklevel=2)
    _loaded["module"] = module
    return module


def cpu_gemv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [M, K] @ weight [N, K]ᵀ → [M, N], float32 CPU tensors, through the compiled kernel."""
    module = load_gemv()
    if module is None:
        raise RuntimeError("kvlab's CPU matrix-vector kernel is not available here (see the warning above)")
    return module.gemv(x.contiguous(), weight.contiguous())
