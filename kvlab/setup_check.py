"""Does the lab run here? The checks notebook 00 runs live: device and mode, the model's load time, the C++ CPU
kernel, the Triton kernels (interpreted on a CPU, compiled on a GPU), each against its plain-torch reference.

Each check returns a Check — passed (True / False / None for "not here", with the reason), what it found and how
long it took — and never raises: a failure is a row of the table that says what to do.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import time
import traceback

import torch


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    passed: bool | None  # None: does not apply on this machine (the detail says why)
    detail: str
    seconds: float

    @property
    def mark(self) -> str:
        return {True: "✓", False: "✗", None: "–"}[self.passed]


def _timed(name: str, fn) -> Check:
    start = time.perf_counter()
    try:
        passed, detail = fn()
    except Exception as error:  # a check reports, it does not stop the notebook
        passed, detail = False, f"{type(error).__name__}: {error} ({traceback.format_exc(limit=1).splitlines()[-1]})"
    return Check(name, passed, detail, time.perf_counter() - start)


def device_check(device: torch.device) -> Check:
    def run():
        threads = torch.get_num_threads()
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            return True, (f"GPU mode: {props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability "
                          f"{props.major}.{props.minor}; torch {torch.__version__}")
        gpu = "no CUDA device" if not torch.cuda.is_available() else "CUDA available but not chosen"
        return True, (f"CPU mode: {platform.machine()}, {threads} threads, {os.cpu_count()} cores; {gpu}; torch "
                      f"{torch.__version__}")
    return _timed("device and mode", run)


def model_check(load, device: torch.device) -> tuple[Check, object, object]:
    """`load()` → (model, tokenizer), timed; a token's greedy continuation shows it is the real model."""
    loaded = {}

    def run():
        start = time.perf_counter()
        loaded["model"], loaded["tokenizer"] = load()
        seconds = time.perf_counter() - start
        model = loaded["model"]
        size = f"{model.weight_bytes() / 1e6:.0f} MB of weights a decode step reads, " if hasattr(model, "weight_bytes") else ""
        return True, (f"SmolLM2-135M-Instruct loaded in {seconds:.1f} s ({size}{model.dtype}, on {device}); a cold "
                      f"first load also dequantizes the GGUF file into ~/.cache/kvlab")
    check = _timed("model", run)
    return check, loaded.get("model"), loaded.get("tokenizer")


def cpu_kernel_check() -> Check:
    def run():
        from kvlab.kernels.cpu_gemv import cpu_gemv, gemv_reference, load_gemv

        if load_gemv() is None:
            return False, ("not built: no C++ compiler or ninja here, or KVLAB_CPU_GEMV=0. The lab still runs, but "
                           "CPU decoding is about 4× slower; install g++ and run `make install` again")
        g = torch.Generator().manual_seed(0)
        x, w = torch.randn(3, 577, generator=g), torch.randn(131, 577, generator=g)  # odd shapes on purpose
        error = (cpu_gemv(x, w) - gemv_reference(x, w)).abs().max().item()
        return error < 1e-3, f"built; x[3×577] @ W[131×577]ᵀ matches torch to {error:.1e}"
    return _timed("C++ CPU kernel (cpu_gemv)", run)


def triton_check(device: torch.device) -> Check:
    """The paged decode kernel on odd shapes against its torch oracle: compiled on a GPU, interpreted on a CPU."""
    def run():
        from kvlab.kernels import paged_decode_attention, paged_decode_reference

        g = torch.Generator(device="cpu").manual_seed(0)
        batch, q_heads, kv_heads, dim, block, blocks = 3, 6, 2, 32, 16, 9
        query = torch.randn(batch, q_heads, dim, generator=g)
        k_pool, v_pool = (torch.randn(blocks, block, kv_heads, dim, generator=g) for _ in range(2))
        tables = torch.randperm(blocks, generator=g)[:batch * 3].reshape(batch, 3).to(torch.int32)
        lens = torch.tensor([1, 17, 45], dtype=torch.int32)
        args = [t.to(device) for t in (query, k_pool, v_pool, tables, lens)]
        start = time.perf_counter()
        out = paged_decode_attention(*args)
        seconds = time.perf_counter() - start
        error = (out.float().cpu() - paged_decode_reference(query, k_pool, v_pool, tables, lens)).abs().max().item()
        how = ("compiled for this GPU" if device.type == "cuda"
               else "run by Triton's interpreter (on a CPU its time says nothing about speed)")
        return error < 1e-3, (f"paged decode attention, GQA 6:2, contexts 1/17/45 over scattered blocks: {how}, "
                              f"{seconds:.2f} s; matches the torch reference to {error:.1e}")
    return _timed("Triton kernels", run)


def gpu_compiled_check(device: torch.device) -> Check:
    if device.type != "cuda":
        return Check("compiled GPU kernels", None, "no GPU here: the kernels run interpreted; on a GPU machine "
                     "they compile (this check then runs them)", 0.0)

    def run():
        from kvlab.kernels import store_kv, store_kv_reference

        import triton

        g = torch.Generator(device="cpu").manual_seed(1)
        k, v = (torch.randn(5, 2, 64, generator=g) for _ in range(2))
        slots = torch.tensor([0, 3, 17, 18, 40])
        k_pool, v_pool, k_ref, v_ref = (torch.zeros(4, 16, 2, 64) for _ in range(4))
        gpu_pools = [k_pool.to(device), v_pool.to(device)]
        store_kv(k.to(device), v.to(device), *gpu_pools, slots.to(device))
        store_kv_reference(k, v, k_ref, v_ref, slots)
        same = torch.equal(gpu_pools[0].cpu(), k_ref) and torch.equal(gpu_pools[1].cpu(), v_ref)
        target = triton.runtime.driver.active.get_current_target()
        return same, (f"store_kv compiled by Triton {triton.__version__} for {target.backend} sm_{target.arch} and "
                      f"equal to its reference: {same}")
    return _timed("compiled GPU kernels", run)


def setup_table(checks: list[Check]) -> str:
    """The checks as an HTML table (the notebook displays it)."""
    import html

    rows = "".join(f"<tr><td style='text-align:center'>{c.mark}</td><td>{html.escape(c.name)}</td>"
                   f"<td style='text-align:left'>{html.escape(c.detail)}</td><td>{c.seconds:.1f} s</td></tr>"
                   for c in checks)
    return ("<table><tr><th></th><th>check</th><th style='text-align:left'>what it found</th><th>time</th></tr>"
            f"{rows}</table>")
