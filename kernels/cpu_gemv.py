"""Decode's matrix-vector product on a CPU at memory bandwidth: y = x @ Wᵀ, W [N, K] row-major float32.

A batch-1 decode step multiplies one activation vector by every weight matrix, reading each weight once for
2 FLOP: memory-bound, so its speed is the bandwidth the product reaches. torch's F.linear on a CPU (MKL, what
HF transformers runs) reaches ~11 GB/s on a 2-core EPYC whose plain read reaches ~30 GB/s; this C++ kernel
(cpu_gemv.cpp: rows split across torch's threads, each streamed front to back) reaches ~29 GB/s on the
same 121 products of a SmolLM2 step. `python -m kvlab.bench gemv` measures both on any machine.

Bytes it must move: reads N·K·4 (W, once, for any M) + M·K·4 (x), writes M·N·4 (y).

cpu_gemv_blocks is the same product reading W as the GGUF file stores it (cpu_gemv_ggml.cpp): GGML Q4_1 blocks
(0.625 B a weight) or Q8_0 (1.0625 B), rebuilt to the exact float32 weights in registers. It reads 5.6× fewer
bytes than float32 for SmolLM2; on 2 cores it is then limited by the unpacking, not by the memory.

The same extension holds the paged decode attention kernel for the CPU (cpu_paged_attention.cpp; its wrapper,
reference and bytes are in cpu_paged_attention.py): one build, one switch, one fallback.

It is compiled with torch.utils.cpp_extension (a C++ compiler and ninja; about 30 s on 2 cores, once — 105 s while every
source included torch/extension.h; now only ATen's headers and torch/library.h — then cached under TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions): by `make install` (build_for_install),
or else on first use. Whenever it compiles it says so first and prints the time after; loading a build already
cached prints nothing. Where it cannot be built, `load_gemv` warns once and returns None, and callers fall back
to F.linear. KVLAB_CPU_GEMV=0 switches it off.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import platform
import time
import warnings

import torch

SOURCES = [pathlib.Path(__file__).with_name(name)
           for name in ("cpu_gemv.cpp", "cpu_gemv_ggml.cpp", "cpu_paged_attention.cpp", "cpu_decode_layer.cpp")]
HEADERS = [pathlib.Path(__file__).with_name("cpu_kernels.h")]  # every source includes it: part of the build too
_loaded: dict[str, object] = {}


def gemv_bytes(m: int, n: int, k: int, element_size: int = 4) -> int:
    return (n * k + m * k + m * n) * element_size


def gemv_reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [M, K] @ weight [N, K]ᵀ → [M, N] in plain torch."""
    return x @ weight.t()


# -fopenmp: at::parallel_for is inline, and splits the rows across threads only when the extension is compiled
# with OpenMP (without it, it runs them all on one thread). The extension then uses the libgomp torch has
# already loaded (same soname), so torch's ops and this kernel share one thread pool.
# -fvisibility=hidden: two builds loaded at once (the tests load the AVX2 and plain variants) cannot bind to each
# other's functions.
COMPILE_FLAGS = ["-O3", "-fopenmp", "-fvisibility=hidden",
                 "-march=native" if platform.machine() in ("x86_64", "AMD64") else "-mcpu=native"]
LINK_FLAGS = ["-fopenmp"]


def _build_name(flags: list[str]) -> str:
    """The extension's name carries the sources, the flags and this CPU's features: -march=native code must not
    be reused on another kind of CPU sharing the same home directory."""
    cpu = ""
    if pathlib.Path("/proc/cpuinfo").is_file():
        cpu = next((line for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    key = b"".join(s.read_bytes() for s in SOURCES + HEADERS) + " ".join(flags + LINK_FLAGS + [cpu, platform.machine()]).encode()
    return f"kvlab_cpu_gemv_{hashlib.sha1(key).hexdigest()[:10]}"


BUILDING = "building kvlab's C++ CPU kernel (about 30 s on 2 cores, once)…"


def built_library(name: str) -> pathlib.Path:
    """Where torch.utils.cpp_extension keeps the compiled extension `name`."""
    from torch.utils import cpp_extension

    return pathlib.Path(cpp_extension._get_build_directory(name, verbose=False)) / f"{name}.so"


def needs_compiling(name: str) -> bool:
    """No build of `name` yet, or one older than a source (ninja would compile again)."""
    library = built_library(name)
    return not library.is_file() or library.stat().st_mtime < max(s.stat().st_mtime for s in SOURCES + HEADERS)


def build_gemv(extra_flags: tuple[str, ...] = ()):
    """Compile (or reuse) the extension with COMPILE_FLAGS + extra_flags; a compile is announced before and
    timed after, on stdout (a notebook shows it as the cell's output). The tests build it with
    ("-mno-avx512f",) and ("-mno-avx2", ...) too, so the AVX2 and the plain C++ paths are checked on a CPU that
    has AVX-512."""
    from torch.utils import cpp_extension

    flags = COMPILE_FLAGS + list(extra_flags)
    name = _build_name(flags)
    compiling = needs_compiling(name)
    if compiling:
        print(BUILDING, end=" ", flush=True)
    started = time.perf_counter()
    try:
        # copies: torch appends its own library paths to extra_ldflags in place, which changed LINK_FLAGS, so every
        # later build got a new name and compiled again (the instruction-set variants twice in one test run)
        # is_python_module=False: the library registers torch operators (TORCH_LIBRARY in cpu_gemv.cpp), no pybind
        cpp_extension.load(name, [str(s) for s in SOURCES], extra_cflags=list(flags), extra_ldflags=list(LINK_FLAGS),
                           is_python_module=False, verbose=False)
    except BaseException:
        if compiling:
            print("failed", flush=True)
        raise
    if compiling:
        print(f"built in {time.perf_counter() - started:.0f} s", flush=True)
    return getattr(torch.ops, name)  # the operators the library registered: .gemv, .gemv_q4_1, .paged_decode, …


def load_gemv():
    """The compiled module (.gemv(x, w) on float32 weights; .gemv_q4_1 / .gemv_q8_0 (x, blocks) on the GGUF
    file's blocks; .paged_decode, see cpu_paged_attention.py), or None where it is switched off or cannot be built."""
    if "module" in _loaded:
        return _loaded["module"]
    module = None
    if os.environ.get("KVLAB_CPU_GEMV", "1") != "0":
        try:
            module = build_gemv()
        except Exception as err:  # no compiler, no ninja, a read-only cache: the lab still runs, slower
            warnings.warn(f"kvlab: the CPU matrix-vector kernel could not be built ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}); using F.linear, which decodes about "
                          f"4× slower on a CPU, and the paged cache's torch gather path for decode attention",
                          RuntimeWarning, stacklevel=2)
    _loaded["module"] = module
    return module


def _module():
    module = load_gemv()
    if module is None:
        raise RuntimeError("kvlab's CPU matrix-vector kernel is not available here (see the warning above)")
    return module


def cpu_gemv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [M, K] @ weight [N, K]ᵀ → [M, N], float32 CPU tensors, through the compiled kernel."""
    return _module().gemv(x.contiguous(), weight.contiguous())


# ---- the same product on the GGUF file's own blocks (cpu_gemv_ggml.cpp) ----
BLOCK_SIZE = 32  # weights per GGML block
BLOCK_BYTES = {"Q4_1": 20, "Q8_0": 34}  # Q4_1: fp16 d, fp16 m, 16 B of nibbles; Q8_0: fp16 d, 32 int8


def _check_block_format(block_format: str) -> None:
    if block_format not in BLOCK_BYTES:
        raise ValueError(f"block_format must be one of {sorted(BLOCK_BYTES)}, got {block_format!r}")


def block_row_bytes(block_format: str, k: int) -> int:
    """Bytes of one weight row of k weights stored as blocks."""
    _check_block_format(block_format)
    if k % BLOCK_SIZE:
        raise ValueError(f"a row of {k} weights is not a whole number of {BLOCK_SIZE}-weight blocks")
    return k // BLOCK_SIZE * BLOCK_BYTES[block_format]


def gemv_blocks_bytes(block_format: str, m: int, n: int, k: int) -> int:
    """Reads every block once (for any M) + x, writes y."""
    return n * block_row_bytes(block_format, k) + (m * k + m * n) * 4


def dequantize_reference(blocks: torch.Tensor, block_format: str) -> torch.Tensor:
    """blocks uint8 [N, K/32 · block bytes] → float32 weights [N, K] in plain torch: d·q + m (Q4_1) or d·q (Q8_0),
    q_j for j < 16 the low nibbles and for j ≥ 16 the high nibbles of a Q4_1 block's 16 bytes."""
    n = blocks.shape[0]
    per_block = blocks.reshape(n, -1, BLOCK_BYTES[block_format])  # [N, blocks, bytes]
    d = per_block[..., 0:2].contiguous().view(torch.float16).float()  # [N, blocks, 1]
    if block_format == "Q8_0":
        q = per_block[..., 2:].contiguous().view(torch.int8).float()  # [N, blocks, 32]
        return (d * q).reshape(n, -1)
    m = per_block[..., 2:4].contiguous().view(torch.float16).float()
    nibbles = per_block[..., 4:]  # [N, blocks, 16]
    q = torch.cat([nibbles & 0x0F, nibbles >> 4], dim=-1).float()  # [N, blocks, 32]
    return (d * q + m).reshape(n, -1)


def gemv_blocks_reference(x: torch.Tensor, blocks: torch.Tensor, block_format: str) -> torch.Tensor:
    """x [M, K] @ dequantize(blocks)ᵀ → [M, N] in plain torch."""
    return x @ dequantize_reference(blocks, block_format).t()


def blocks_gemv(block_format: str):
    """The compiled product for one block format: (x [M, K] float32, blocks uint8 [N, K/32 · block bytes]) → [M, N]."""
    _check_block_format(block_format)
    return {"Q4_1": _module().gemv_q4_1, "Q8_0": _module().gemv_q8_0}[block_format]


def cpu_gemv_blocks(x: torch.Tensor, blocks: torch.Tensor, block_format: str) -> torch.Tensor:
    """x [M, K] float32 @ Wᵀ → [M, N], W given as blocks uint8 [N, K/32 · block bytes], through the compiled kernel."""
    block_row_bytes(block_format, x.shape[-1])  # names a bad format or K
    return blocks_gemv(block_format)(x.contiguous(), blocks.contiguous())


def build_for_install() -> None:
    """`make install`'s step: build the kernel now, once and visibly, so that no notebook or test waits for it."""
    if os.environ.get("KVLAB_CPU_GEMV", "1") == "0":
        print("kvlab's C++ CPU kernel: switched off (KVLAB_CPU_GEMV=0)")
    elif not needs_compiling(_build_name(COMPILE_FLAGS)):
        print(f"kvlab's C++ CPU kernel: already built ({built_library(_build_name(COMPILE_FLAGS))})")
    elif load_gemv() is None:
        print("kvlab's C++ CPU kernel: not built (see the warning above); kvlab runs without it, slower")
