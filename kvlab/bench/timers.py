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


def alternating_medians(fns: dict[str, Callable[[], object]], warmup: int = 2, rounds: int = 9,
                        calls_per_round: int = 1) -> dict[str, float]:
    """Median wall time of each fn (host clock, CPU), the contenders taking turns: every round runs each of them
    `calls_per_round` times in a row, so a neighbour that slows the machine for a while slows them all alike."""
    if rounds < 1 or calls_per_round < 1:
        raise ValueError(f"rounds and calls_per_round must be ≥ 1, got {rounds} and {calls_per_round}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls_per_round):
                fn()
            times[name].append((time.perf_counter() - start) / calls_per_round)
    return {name: statistics.median(seconds) for name, seconds in times.items()}
