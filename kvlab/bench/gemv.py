"""One decode step's matrix-vector products on the real model's weights, through F.linear and through
kvlab.kernels.cpu_gemv: the same bytes, two streaming speeds.

Bytes per pass: every projection weight once (model.weight_bytes() minus the norms), timed as a median
after a warm-up; GB/s = bytes / time, set beside the device's measured copy bandwidth.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kvlab.kernels.cpu_gemv import cpu_gemv, load_gemv

from .roofs import device_roofs
from .timers import median_seconds


def model_projections(model) -> list[torch.Tensor]:
    """Every weight matrix one forward pass multiplies by, in order: [out, in] each."""
    return [p.weight for p in model.layer_projections() + [model.lm_head]]


def run(model, repeats: int = 5) -> dict:
    """Median time of one pass over all of the model's products with a 1-row x, per implementation."""
    weights = model_projections(model)
    inputs = {w.shape[1]: torch.randn(1, w.shape[1], device=model.device, dtype=model.dtype) for w in weights}
    nbytes = sum(w.numel() * w.element_size() for w in weights)
    ways = {"F.linear (MKL; what HF runs)": lambda: [F.linear(inputs[w.shape[1]], w) for w in weights]}
    if model.device.type == "cpu" and model.dtype == torch.float32 and load_gemv() is not None:
        ways["kvlab cpu_gemv"] = lambda: [cpu_gemv(inputs[w.shape[1]], w) for w in weights]
    with torch.inference_mode():
        seconds = {name: median_seconds(fn, model.device, warmup=1, repeats=repeats) for name, fn in ways.items()}
    copy = device_roofs(model.device).copy.gb_per_s
    return {"products": len(weights), "bytes": nbytes, "copy_gb_s": copy,
            "ways": {name: {"seconds": s, "gb_s": nbytes / s / 1e9, "fraction_of_copy": nbytes / s / 1e9 / copy}
                     for name, s in seconds.items()}}


def print_gemv(report: dict) -> None:
    print(f"{report['products']} matrix-vector products, {report['bytes'] / 1e6:.0f} MB of weights per pass; "
          f"measured copy bandwidth {report['copy_gb_s']:.1f} GB/s")
    for name, way in report["ways"].items():
        print(f"  {name:32s} {way['seconds'] * 1e3:7.1f} ms  {way['gb_s']:5.1f} GB/s  {way['fraction_of_copy']:4.0%} of copy")
