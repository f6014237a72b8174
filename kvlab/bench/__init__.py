"""Measurements: timers, the device's measured copy bandwidth, and the lab's benchmarks."""
from .fragmentation import ReplayResult, block_size_sweep, block_table_cost, compare_layouts, replay
from .prefix import print_prefix_report, run_prefix_benchmark
from .recompute import CacheVsRecompute, measure_cache_vs_recompute
from .roofs import CopyBandwidth, device_label, measure_copy_bandwidth
from .timers import median_seconds

__all__ = ["median_seconds", "CopyBandwidth", "measure_copy_bandwidth", "device_label",
           "CacheVsRecompute", "measure_cache_vs_recompute",
           "replay", "compare_layouts", "ReplayResult", "block_table_cost", "block_size_sweep",
           "run_prefix_benchmark", "print_prefix_report"]
