"""One decode step's matrix-vector products on the real model's weights: through F.linear and kvlab's CPU kernel
on the float32 weights (the same bytes, two streaming speeds), and through the kernel on the GGUF file's own
Q4_1/Q8_0 blocks (the same weights in 5.6× fewer bytes).

Bytes per pass: every projection weight once, as that way reads it (float32: 4 B a weight; the blocks: their
size), timed as a median after a warm-up; GB/s = bytes / time, set beside the device's measured copy bandwidth.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kvlab.kernels.cpu_gemv import cpu_gemv, cpu_gemv_blocks, load_gemv

from .roofs import device_roofs
from .timers import median_seconds


def run(model, repeats: int = 5) -> dict:
    """Median time of one pass over all of the model's products with a 1-row x, per way of computing them."""
    projections = model.projections()
    inputs = {p.in_features: torch.randn(1, p.in_features, device=model.device, dtype=model.dtype) for p in projections}
    float_bytes = sum(p.numel() * p.element_size() for p in projections)
    ways = {"F.linear (MKL; what HF runs)": (float_bytes, lambda: [F.linear(inputs[p.in_features], p.weight)
                                                                   for p in projections])}
    if model.device.type == "cpu" and model.dtype == torch.float32 and load_gemv() is not None:
        ways["kvlab cpu_gemv, float32"] = (float_bytes, lambda: [cpu_gemv(inputs[p.in_features], p.weight)
                                                                 for p in projections])
        if model.can_read_blocks:
            block_bytes = sum(p.blocks.numel() for p in projections)
            ways["kvlab cpu_gemv, GGUF blocks"] = (block_bytes, lambda: [
                cpu_gemv_blocks(inputs[p.in_features], p.blocks, p.block_format) for p in projections])
    with torch.inference_mode():
        seconds = {name: median_seconds(fn, model.device, warmup=1, repeats=repeats) for name, (_, fn) in ways.items()}
    copy = device_roofs(model.device).copy.gb_per_s
    return {"products": len(projections), "bytes": float_bytes, "copy_gb_s": copy,
            "ways": {name: {"seconds": seconds[name], "bytes": nbytes, "gb_s": nbytes / seconds[name] / 1e9,
                            "fraction_of_copy": nbytes / seconds[name] / 1e9 / copy}
                     for name, (nbytes, _) in ways.items()}}


def print_gemv(report: dict) -> None:
    print(f"{report['products']} matrix-vector products per pass; measured copy bandwidth {report['copy_gb_s']:.1f} GB/s")
    for name, way in report["ways"].items():
        print(f"  {name:30s} {way['bytes'] / 1e6:5.0f} MB {way['seconds'] * 1e3:7.1f} ms  {way['gb_s']:5.1f} GB/s  "
              f"{way['fraction_of_copy']:4.0%} of copy")
