"""Timing that can be trusted: warm up, repeat, report the median. Host clock on a CPU, synchronized on CUDA."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def median_seconds(fn: Callable[[], object], device: torch.device | str = "cpu", warmup: int = 1, repeats: int = 5) -> float:
    """Median wall time of fn() over `repeats` runs after `warmup` untimed runs."""
    if repeats < 1:
        raise ValueError(f"repeats must be ≥ 1, got {repeats}")
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def device_timer(device: torch.device | str) -> Callable[[Callable[[], object]], float]:
    """A median timer for `device`: triton.testing.do_bench on CUDA (warm-up, repeats, L2 flush, median), else
    median_seconds with the host clock. Returns seconds."""
    device = torch.device(device)
    if device.type == "cuda":
        import triton

        return lambda fn: triton.testing.do_bench(fn, return_mode="median") / 1e3
    return lambda fn: median_seconds(fn, device, warmup=1, repeats=5)
