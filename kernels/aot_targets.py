"""The GPUs kvlab.kernels.aot compiles for, their shared-memory limits, and whether the bundled ptxas builds for one."""
from __future__ import annotations

import functools
import re
import subprocess

import triton

TARGETS = ("sm_80", "sm_89", "sm_90")  # A100; L4 / L40S / RTX 4090; H100 / H200
# The most shared memory one block may use (opt-in): CUDA C++ Programming Guide, "Technical Specifications per
# Compute Capability" — 163 KB on 8.0, 99 KB on 8.6 / 8.9, 227 KB on 9.0 (what Triton compares at launch).
SHARED_LIMIT_BYTES = {80: 163 * 1024, 89: 99 * 1024, 90: 227 * 1024}
SMALLEST_SHARED = min(TARGETS, key=lambda t: SHARED_LIMIT_BYTES[int(t[3:])])


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
