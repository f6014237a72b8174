"""MHA, GQA, MQA side by side: the same decode attention with fewer KV heads reads fewer bytes — and takes less time.

One decode step reads every cached K and V byte once: 2 · batch · context · kv_heads · head_dim · elem. Query
heads do not enter that sum. So the same problem (same query heads, head dim, batch and context) with KV heads =
query heads (MHA), query heads / 4 (GQA) and 1 (MQA) moves 1×, ¼× and 1/Hq× the bytes; if decode is
bandwidth-bound, its time follows. SmolLM2's own 9-to-3 grouping is measured beside them.

On CUDA: the compiled paged decode kernel (GQA-native), bf16, Llama-3-8B-like shapes (32 query heads, head
dim 128), do_bench medians. On a CPU: grouped matmuls over a contiguous cache — the query heads of one KV head
as one [group, D] block against that head's K and V, so each K/V byte is read once (torch SDPA with
enable_gqa copies K/V per query head on a CPU, which hides the saving) — at scaled-down shapes, host-clock
medians. Bytes: kernels.decode_bytes.
"""
from __future__ import annotations

import time

import torch

from kvlab.kernels import decode_bytes

from .decode import make_inputs
from .roofs import device_label, device_roofs
from .timers import device_timer

GPU_SHAPE = dict(num_q_heads=32, head_dim=128)  # Llama-3-8B's query heads and head dim
CPU_SHAPE = dict(num_q_heads=16, head_dim=64)
SMOLLM2 = dict(num_q_heads=9, num_kv_heads=3, head_dim=64)


def variants(num_q_heads: int) -> list[tuple[str, int]]:
    """(name, KV heads) of the three ways to share K/V among num_q_heads query heads."""
    assert num_q_heads % 4 == 0, "GQA here groups 4 query heads per KV head"
    return [("MHA", num_q_heads), ("GQA", num_q_heads // 4), ("MQA", 1)]


def grouped_decode(query: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Decode attention that reads each K/V head once for its whole query group.
    query [B, Hq, D]; k, v [B, Hkv, S, D] → [B, Hq, D]."""
    batch, num_q_heads, head_dim = query.shape
    num_kv_heads = k.shape[1]
    q = query.view(batch, num_kv_heads, num_q_heads // num_kv_heads, head_dim)  # [B, Hkv, G, D]
    scores = (q @ k.transpose(-1, -2)) * head_dim ** -0.5  # [B, Hkv, G, S]
    return (scores.softmax(-1) @ v).reshape(batch, num_q_heads, head_dim)


def time_decode(device: torch.device, batch: int, context: int, num_q_heads: int, num_kv_heads: int, head_dim: int,
                block_size: int, dtype: torch.dtype) -> float:
    """Median seconds of one decode step of attention."""
    inputs = make_inputs(batch, context, block_size, num_q_heads, num_kv_heads, head_dim, dtype, device)
    query, k_pool, v_pool, tables, lens, k_contig, v_contig = inputs
    if device.type == "cuda":
        from kvlab.kernels import paged_decode_attention

        return device_timer(device)(lambda: paged_decode_attention(query, k_pool, v_pool, tables, lens, check=False))
    return device_timer(device)(lambda: grouped_decode(query, k_contig, v_contig))


def run(device: torch.device, batch: int | None = None, context: int | None = None, block_size: int = 16) -> dict:
    gpu = device.type == "cuda"
    shape = GPU_SHAPE if gpu else CPU_SHAPE
    batch = batch or (8 if gpu else 4)
    context = context or (16384 if gpu else 2048)
    dtype = torch.bfloat16 if gpu else torch.float32
    elem = torch.finfo(dtype).bits // 8
    roofs = device_roofs(device)
    cases = [(name, shape["num_q_heads"], kv, shape["head_dim"]) for name, kv in variants(shape["num_q_heads"])]
    cases.append(("SmolLM2 (GQA 3:1)", SMOLLM2["num_q_heads"], SMOLLM2["num_kv_heads"], SMOLLM2["head_dim"]))
    rows = []
    for name, hq, hkv, dim in cases:
        seconds = time_decode(device, batch, context, hq, hkv, dim, block_size, dtype)
        moved = decode_bytes(batch, hq, hkv, dim, [context] * batch, elem, block_size)
        kv_bytes = 2 * batch * context * hkv * dim * elem
        rows.append({"variant": name, "num_q_heads": hq, "num_kv_heads": hkv, "head_dim": dim, "kv_bytes": kv_bytes,
                     "bytes_moved": moved, "seconds": seconds, "gb_s": moved / seconds / 1e9,
                     "fraction_of_copy": moved / seconds / 1e9 / roofs.copy.gb_per_s})
    mha = rows[0]
    for row in rows[:3]:
        row["bytes_vs_mha"] = row["kv_bytes"] / mha["kv_bytes"]
        row["time_vs_mha"] = row["seconds"] / mha["seconds"]
    return {"device": device_label(device), "date": time.strftime("%Y-%m-%d"), "dtype": str(dtype)[6:],
            "batch": batch, "context": context, "copy_gb_s": roofs.copy.gb_per_s,
            "path": "triton compiled paged decode" if gpu else "torch grouped matmuls over a contiguous cache (CPU)", "rows": rows}


def print_gqa(report: dict) -> None:
    print(f"{report['device']} — {report['path']}, {report['dtype']}, batch {report['batch']}, context "
          f"{report['context']}, copy bandwidth measured {report['copy_gb_s']:.0f} GB/s")
    print(f"{'variant':<18} {'q heads':>7} {'kv heads':>8} {'KV MB':>8} {'µs':>9} {'GB/s':>7} {'bytes vs MHA':>12} "
          f"{'time vs MHA':>11}")
    for r in report["rows"]:
        ratios = (f"{r['bytes_vs_mha']:>11.3f}× {r['time_vs_mha']:>10.3f}×" if "time_vs_mha" in r else f"{'':>12} {'':>11}")
        print(f"{r['variant']:<18} {r['num_q_heads']:>7} {r['num_kv_heads']:>8} {r['kv_bytes'] / 1e6:>8.1f} "
              f"{r['seconds'] * 1e6:>9.1f} {r['gb_s']:>7.1f} {ratios}")
