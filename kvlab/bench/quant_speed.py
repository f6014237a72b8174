"""Decode attention over a quantized pool against the same problem in bf16: time, bytes moved, GB/s.

Decode is bandwidth-bound, so a pool that is 0.52× the bytes (int8) should take about 0.52× the time, and
0.28× (int4, groups of 32) about 0.28× — if dequantizing in registers is free. The targets at long context:
int8 ≤ 0.55× and int4 ≤ 0.30× the bf16 kernel's time.

Bytes: the bf16 kernel's decode_bytes; the quantized kernel's quant_decode_bytes (codes + scales + the
kivi2 full-precision tail + query, output and block tables).
On CUDA: the compiled kernels, `triton.testing.do_bench` (median), Llama-3-8B shapes, inputs made on the GPU.
On a CPU: the torch reference paths at small sizes (gather, dequantize, attend) — their times say how slow a
dequantized copy is on a CPU, nothing about the kernels' speed.
"""
from __future__ import annotations

import time

import torch

from kvlab.cache.quantization import make_scheme, supports_float8
from kvlab.cache.quantized import QuantizedPool
from kvlab.kernels import decode_bytes, paged_decode_attention, paged_decode_reference
from kvlab.kernels.quant_decode import quant_decode_attention, quant_decode_bytes, quant_decode_reference
from kvlab.kernels.quant_store import quantize_key_blocks, quantize_store

from ..progress import with_progress
from .roofs import device_label, measure_copy_bandwidth
from .timers import device_timer

LLAMA3_8B = dict(num_q_heads=32, num_kv_heads=8, head_dim=128)
CPU_SHAPES = dict(num_q_heads=9, num_kv_heads=3, head_dim=64)  # SmolLM2's
TARGETS = {"int8": 0.55, "int4": 0.30}  # time vs bf16 at long context, on a GPU


def quantized_pool(scheme, k: torch.Tensor, v: torch.Tensor) -> QuantizedPool:
    """Quantize full pools k, v [num_blocks, block_size, Hkv, D] with the store kernels (CUDA) or their
    references (CPU) into a QuantizedPool."""
    num_blocks, block_size, heads, dim = k.shape
    device = k.device
    pool = QuantizedPool.zeros(scheme, num_blocks, block_size, heads, device)
    slots = torch.arange(num_blocks * block_size, device=device)
    flat_k, flat_v = k.reshape(-1, heads, dim), v.reshape(-1, heads, dim)
    if device.type == "cuda":
        store, seal = quantize_store, quantize_key_blocks
    else:
        from kvlab.kernels.quant_store import quantize_key_blocks_reference, quantize_store_reference
        store, seal = quantize_store_reference, quantize_key_blocks_reference
    if scheme.keys_per_channel:
        blocks = torch.arange(num_blocks, device=device, dtype=torch.int32)
        seal(scheme, flat_k, pool.k_codes, pool.k_scale, pool.k_min, blocks, blocks * block_size)
    else:
        store(scheme, flat_k, pool.k_codes, pool.k_scale, pool.k_min, slots)
    store(scheme, flat_v, pool.v_codes, pool.v_scale, pool.v_min, slots)
    return pool


def run(device: torch.device, schemes=("int8", "fp8", "int4", "kivi2"), batches=None, contexts=None,
        block_size: int = 16, progress: bool = True) -> dict:
    gpu = device.type == "cuda"
    shapes = LLAMA3_8B if gpu else CPU_SHAPES
    batches = batches or ([1, 8, 32] if gpu else [1, 4])
    contexts = contexts or ([4096, 16384, 32768] if gpu else [256, 1024])
    dtype = torch.bfloat16 if gpu else torch.float32
    elem = torch.finfo(dtype).bits // 8
    hq, hkv, dim = shapes["num_q_heads"], shapes["num_kv_heads"], shapes["head_dim"]
    timer = device_timer(device)
    copy = measure_copy_bandwidth(device)
    usable = [s for s in schemes if s != "fp8" or supports_float8(device)]
    rows = []
    cases = [(b, c) for b in batches for c in contexts]
    for batch, context in with_progress(cases, progress, "quantized decode benchmark", "case"):
        blocks_per_seq = -(-context // block_size)
        num_blocks = batch * blocks_per_seq
        g = torch.Generator(device=device).manual_seed(0)
        k = torch.randn(num_blocks, block_size, hkv, dim, device=device, generator=g).to(dtype)
        v = torch.randn(num_blocks, block_size, hkv, dim, device=device, generator=g).to(dtype)
        tables = torch.randperm(num_blocks, device=device, generator=g).view(batch, blocks_per_seq).to(torch.int32)
        lens = torch.full((batch,), context, dtype=torch.int32, device=device)
        query = torch.randn(batch, hq, dim, device=device, generator=g).to(dtype)
        if gpu:
            base_s = timer(lambda: paged_decode_attention(query, k, v, tables, lens, check=False))
        else:
            base_s = timer(lambda: paged_decode_reference(query, k, v, tables, lens))
        base_bytes = decode_bytes(batch, hq, hkv, dim, [context] * batch, elem, block_size)
        rows.append(_row("bf16" if gpu else "fp32", None, batch, context, base_bytes, base_s, base_s, copy.gb_per_s))
        seqs = torch.arange(batch, dtype=torch.int32, device=device)
        for name in usable:
            scheme = make_scheme(name, dim, device=device)
            pool = quantized_pool(scheme, k, v)
            full = lens if not scheme.keeps_recent else (lens - 1) // block_size * block_size
            stage_k = stage_v = None
            recent = torch.zeros_like(lens)
            if scheme.keeps_recent:  # each row's newest block, full precision
                stage_k = torch.randn(batch * block_size, hkv, dim, device=device, generator=g).to(dtype)
                stage_v = torch.randn(batch * block_size, hkv, dim, device=device, generator=g).to(dtype)
                recent = seqs * block_size
            args = (scheme, query, pool, tables, seqs, lens, full.to(torch.int32), recent.to(torch.int32), stage_k, stage_v)
            attend = quant_decode_attention if gpu else quant_decode_reference
            seconds = timer(lambda: attend(*args))
            moved = quant_decode_bytes(scheme, hq, hkv, [context] * batch, block_size, elem, full.tolist())
            rows.append(_row(name, scheme.group_size, batch, context, moved, seconds, base_s, copy.gb_per_s))
            del pool, args
        del k, v
    return {"device": device_label(device), "date": time.strftime("%Y-%m-%d"), "dtype": str(dtype)[6:],
            "shapes": shapes, "block_size": block_size, "copy_gb_s": copy.gb_per_s,
            "path": "triton compiled" if gpu else "torch reference paths (CPU: these times say nothing about the kernels)",
            "targets": TARGETS if gpu else {}, "rows": rows}


def _row(scheme, group, batch, context, moved, seconds, base_s, copy_gb_s) -> dict:
    gb_s = moved / seconds / 1e9
    return {"scheme": scheme, "group_size": group, "batch": batch, "context": context, "bytes_moved": moved,
            "seconds": seconds, "gb_s": gb_s, "fraction_of_copy": gb_s / copy_gb_s, "time_vs_baseline": seconds / base_s}


def print_speed(report: dict) -> None:
    print(f"{report['device']} — {report['path']}, {report['dtype']}, copy bandwidth measured {report['copy_gb_s']:.0f} GB/s")
    print(f"{'scheme':<6} {'batch':>5} {'context':>7} {'MB moved':>9} {'µs':>9} {'GB/s':>7} {'of copy':>7} {'time vs base':>12}")
    for r in report["rows"]:
        target = report["targets"].get(r["scheme"])
        verdict = "" if target is None else (" ✓" if r["time_vs_baseline"] <= target else f" ✗ (target ≤ {target})")
        print(f"{r['scheme']:<6} {r['batch']:>5} {r['context']:>7} {r['bytes_moved'] / 1e6:>9.2f} {r['seconds'] * 1e6:>9.1f} "
              f"{r['gb_s']:>7.1f} {r['fraction_of_copy']:>7.0%} {r['time_vs_baseline']:>11.2f}×{verdict}")
