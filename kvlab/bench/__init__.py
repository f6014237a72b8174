"""Measurements: timers, the device's measured copy bandwidth, and the lab's benchmarks."""
from .fragmentation import ReplayResult, block_size_sweep, block_table_cost, compare_layouts, replay
from .prefix import print_prefix_report, run_prefix_benchmark
from .recompute import CacheVsRecompute, measure_cache_vs_recompute
from .roofs import (CopyBandwidth, MatmulThroughput, Roofs, device_label, device_roofs, measure_copy_bandwidth,
                    measure_matmul_flops)
from .timers import device_timer, median_seconds

__all__ = ["median_seconds", "device_timer", "CopyBandwidth", "measure_copy_bandwidth", "device_label",
           "MatmulThroughput", "measure_matmul_flops", "Roofs", "device_roofs",
           "CacheVsRecompute", "measure_cache_vs_recompute",
           "replay", "compare_layouts", "ReplayResult", "block_table_cost", "block_size_sweep",
           "run_prefix_benchmark", "print_prefix_report"]
