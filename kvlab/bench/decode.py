"""Paged decode attention against the roof: bytes moved ÷ time, next to the copy bandwidth measured in the same run.

One decode step of attention must read every cached K and V byte once:
    bytes ≈ 2 · Σ context_len · kv_heads · head_dim · elem  (+ query, output and block tables: small)
so its figure of merit is achieved GB/s against the device's measured copy bandwidth. The baseline is what a
user would pick: torch `scaled_dot_product_attention` (GQA enabled) over a contiguous [B, Hkv, S, D] cache.

On CUDA: the compiled Triton kernel, timed with `triton.testing.do_bench` (median), bf16, Llama-3-8B shapes.
On a CPU: SmolLM2's heads, float32, three contenders taking turns (host-clock medians after warm-up): SDPA over
the contiguous cache, kvlab's C++ kernel reading the blocks in place (kvlab.kernels.cpu_paged_attention: the
paged cache's CPU default, the "paged" row), and the torch path that gathers the blocks into a contiguous copy
first (backend "torch", the "gather" row) — which moves the K/V three times and so overstates what paging costs.
"""
from __future__ import annotations

import math
import pathlib
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from kvlab.cache.attention import attend_reference
from kvlab.kernels import cpu_paged_attention, decode_bytes

from ..progress import with_progress
from .results import RESULTS, save_result
from .roofs import device_label, measure_copy_bandwidth
from .timers import alternating_medians

LLAMA3_8B = dict(num_q_heads=32, num_kv_heads=8, head_dim=128)
SMOLLM2 = dict(num_q_heads=9, num_kv_heads=3, head_dim=64)


@dataclass
class DecodeCase:
    batch: int
    context: int
    block_size: int
    num_splits: int
    bytes_moved: int
    paged_s: float  # the paged cache's own decode kernel: Triton on CUDA, the C++ kernel on a CPU
    sdpa_s: float
    copy_gb_s: float
    gather_s: float | None = None  # CPU: the torch path, gather the blocks then attend (None on CUDA)

    @property
    def paged_gb_s(self) -> float:
        return self.bytes_moved / self.paged_s / 1e9

    def row(self) -> dict:
        out = asdict(self)
        out.update(paged_gb_s=self.paged_gb_s, fraction_of_copy=self.paged_gb_s / self.copy_gb_s,
                   sdpa_gb_s=self.bytes_moved / self.sdpa_s / 1e9, paged_over_sdpa_time=self.paged_s / self.sdpa_s)
        if self.gather_s is not None:
            out.update(gather_gb_s=self.bytes_moved / self.gather_s / 1e9,
                       gather_over_sdpa_time=self.gather_s / self.sdpa_s)
        return out


def make_inputs(batch: int, context: int, block_size: int, num_q_heads: int, num_kv_heads: int, head_dim: int,
                dtype: torch.dtype, device: torch.device, seed: int = 0):
    """A paged pool with shuffled block tables, and the same K/V as a contiguous [B, Hkv, S, D] cache, all drawn
    on `device` by a generator there (a GPU-sized pool is never filled on the host and copied over)."""
    device = torch.device(device)
    g = torch.Generator(device=device).manual_seed(seed)
    blocks_per_seq = math.ceil(context / block_size)
    num_blocks = batch * blocks_per_seq
    pool_shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_pool = torch.randn(pool_shape, generator=g, device=device, dtype=dtype)
    v_pool = torch.randn(pool_shape, generator=g, device=device, dtype=dtype)
    tables = torch.randperm(num_blocks, generator=g, device=device).view(batch, blocks_per_seq).to(torch.int32)
    context_lens = torch.full((batch,), context, dtype=torch.int32, device=device)
    query = torch.randn(batch, num_q_heads, head_dim, generator=g, device=device, dtype=dtype)
    k_contig = k_pool[tables.long()].reshape(batch, -1, num_kv_heads, head_dim)[:, :context].transpose(1, 2).contiguous()
    v_contig = v_pool[tables.long()].reshape(batch, -1, num_kv_heads, head_dim)[:, :context].transpose(1, 2).contiguous()
    return query, k_pool, v_pool, tables, context_lens, k_contig, v_contig  # contig: [B, Hkv, S, D]


def sdpa_decode(query: torch.Tensor, k_contig: torch.Tensor, v_contig: torch.Tensor) -> torch.Tensor:
    """The baseline: SDPA over a contiguous cache. query [B, Hq, D] → [B, Hq, D]."""
    out = F.scaled_dot_product_attention(query.unsqueeze(2), k_contig, v_contig,
                                         enable_gqa=query.shape[1] != k_contig.shape[1])
    return out.squeeze(2)


def torch_paged_decode(query, k_pool, v_pool, tables, context_lens):
    """The CPU path, as PagedCache(backend='torch') runs it: gather each sequence's blocks, then the reference
    attention (kvlab.cache.attention) with the new token at position context_len - 1. query [B, Hq, D] → [B, Hq, D]."""
    batch = query.shape[0]
    k = k_pool[tables.long()].reshape(batch, -1, *k_pool.shape[2:])  # [B, max_blocks · block_size, Hkv, D]
    v = v_pool[tables.long()].reshape(batch, -1, *v_pool.shape[2:])
    lens = context_lens.long()
    return attend_reference(query.unsqueeze(1), k, v, (lens - 1)[:, None], lens).squeeze(1)


def cpu_contenders(query, k_pool, v_pool, tables, lens, k_contig, v_contig) -> dict:
    """What the CPU benchmark times, by name: SDPA over the contiguous cache, the C++ kernel over the pool in place
    (where the extension loads), the torch gather path."""
    fns = {"sdpa": lambda: sdpa_decode(query, k_contig, v_contig)}
    if cpu_paged_attention.available():
        fns["kernel"] = lambda: cpu_paged_attention.cpu_paged_decode_attention(query, k_pool, v_pool, tables, lens,
                                                                               check=False)  # as the cache calls it
    fns["gather"] = lambda: torch_paged_decode(query, k_pool, v_pool, tables, lens)
    return fns


def run(device: torch.device, batches, contexts, block_size: int, dtype: torch.dtype, memory_fraction: float = 0.35,
        progress: bool = True, rounds: int = 9) -> dict:
    shapes = LLAMA3_8B if device.type == "cuda" else SMOLLM2
    elem = torch.finfo(dtype).bits // 8
    copy = measure_copy_bandwidth(device)
    budget = (torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 4 * 2**30) * memory_fraction
    cases, skipped = [], []
    combos = [(b, c) for b in batches for c in contexts]
    for batch, context in with_progress(combos, progress, "decode benchmark", "case"):
        kv_bytes = 2 * batch * context * shapes["num_kv_heads"] * shapes["head_dim"] * elem
        if 2 * kv_bytes > budget:  # paged pool + contiguous copy
            skipped.append({"batch": batch, "context": context, "why": f"needs {2 * kv_bytes / 2**30:.1f} GiB"})
            continue
        inputs = make_inputs(batch, context, block_size, dtype=dtype, device=device, **shapes)
        query, k_pool, v_pool, tables, lens, k_contig, v_contig = inputs
        moved = decode_bytes(batch, shapes["num_q_heads"], shapes["num_kv_heads"], shapes["head_dim"],
                             [context] * batch, elem, block_size)
        if device.type == "cuda":
            import triton

            from kvlab.kernels import choose_num_splits, paged_decode_attention

            splits = choose_num_splits(batch, shapes["num_kv_heads"], context, device)
            paged_s = triton.testing.do_bench(
                lambda: paged_decode_attention(query, k_pool, v_pool, tables, lens, check=False), return_mode="median") / 1e3
            sdpa_s = triton.testing.do_bench(lambda: sdpa_decode(query, k_contig, v_contig), return_mode="median") / 1e3
            gather_s = None
        else:
            fns = cpu_contenders(*inputs)
            # a few calls a turn where one call is short, so that each turn is long next to the clock's overhead
            seconds = alternating_medians(fns, warmup=2, rounds=rounds, calls_per_round=max(1, 2**21 // moved))
            kernel_path = "kernel" in fns
            del fns
            splits = cpu_paged_attention.cpu_splits(batch, context) if kernel_path else 1
            paged_s, sdpa_s = seconds["kernel" if kernel_path else "gather"], seconds["sdpa"]
            gather_s = seconds["gather"] if kernel_path else None
        cases.append(DecodeCase(batch, context, block_size, splits, moved, paged_s, sdpa_s, copy.gb_per_s, gather_s))
        del inputs, query, k_pool, v_pool, tables, lens, k_contig, v_contig  # free before the next, larger case
    if device.type == "cuda":
        path = "triton compiled"
    elif cpu_paged_attention.available():
        path = f"C++ kernel in place ({cpu_paged_attention.simd_path()}) and torch gather (CPU: no Triton timing)"
    else:
        path = "torch gather (CPU; the C++ kernel is not available here)"
    return {
        "device": device_label(device), "date": time.strftime("%Y-%m-%d"), "dtype": str(dtype).replace("torch.", ""),
        "shapes": shapes, "path": path, "threads": torch.get_num_threads(), "copy_gb_s": copy.gb_per_s,
        "torch": torch.__version__, "cases": [c.row() for c in cases], "skipped": skipped,
    }


def save(report: dict, folder: pathlib.Path = RESULTS) -> pathlib.Path:
    """benchmarks/results/decode_<device>.json"""
    return save_result("decode", report, folder)


def print_table(report: dict) -> None:
    print(f"{report['device']} — {report['path']}, {report['dtype']}, copy bandwidth measured {report['copy_gb_s']:.0f} GB/s")
    gather = any("gather_s" in c and c["gather_s"] is not None for c in report["cases"])
    print(f"{'batch':>5} {'context':>7} {'splits':>6} {'MB moved':>9} {'SDPA µs':>8} {'GB/s':>6} {'paged µs':>9} "
          f"{'GB/s':>6} {'of copy':>7} {'paged/SDPA':>10}" + (f" {'gather µs':>9} {'GB/s':>6} {'gather/SDPA':>11}" if gather else ""))
    for c in report["cases"]:
        line = (f"{c['batch']:>5} {c['context']:>7} {c['num_splits']:>6} {c['bytes_moved'] / 1e6:>9.1f} "
                f"{c['sdpa_s'] * 1e6:>8.1f} {c['sdpa_gb_s']:>6.1f} {c['paged_s'] * 1e6:>9.1f} {c['paged_gb_s']:>6.1f} "
                f"{c['fraction_of_copy']:>7.0%} {c['paged_over_sdpa_time']:>10.2f}")
        if gather and c.get("gather_s") is not None:
            line += f" {c['gather_s'] * 1e6:>9.1f} {c['gather_gb_s']:>6.1f} {c['gather_over_sdpa_time']:>11.2f}"
        print(line)
    for s in report["skipped"]:
        print(f"skipped batch {s['batch']} × context {s['context']}: {s['why']}")
