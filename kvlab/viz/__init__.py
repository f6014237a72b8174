"""The visual layer: figures and widgets that read public state and measured results. Nothing in the
mechanism (model, caches, engine) imports this package."""
from .banner import mode_banner
from .block_table_widget import BlockTableLab, block_table_lab
from .figures import kv_memory_figure, presets_figure, speedup_figure, step_time_figure
from .first_view import show_with_first_view
from .fragmentation_figures import (block_size_sweep_figure, concurrency_figure, memory_over_time_figure,
                                    waste_breakdown_figure)
from .fragmentation_widget import fragmentation_lab, fragmentation_lab_figure
from .paged_figures import (block_tables_figure, decode_bandwidth_figure, occupancy_figure, paging_cost_figure,
                            pool_figure, reservation_figure, snapshot)
from .prefix_cache_widget import PrefixCacheLab
from .prefix_figures import prompt_tokens_figure, ttft_figure
from .radix_figures import radix_figure, radix_tree
from .quant_figures import accuracy_figure, channel_absmax_figure, error_heatmaps, memory_figure
from .quant_widget import QuantizationLab, quantization_lab
from .serving_figures import (batch_composition_figure, gantt_figure, latency_throughput_figure, pool_snapshot,
                              running_metrics, running_metrics_figure, slot_occupancy_figure, step_composition_figure,
                              step_cost_figure)
from .serving_widget import ServingLab

__all__ = ["mode_banner", "kv_memory_figure", "presets_figure", "speedup_figure", "step_time_figure",
           "pool_figure", "block_tables_figure", "occupancy_figure", "reservation_figure", "snapshot",
           "decode_bandwidth_figure", "paging_cost_figure", "BlockTableLab", "PrefixCacheLab", "block_table_lab",
           "radix_figure",
           "radix_tree", "ttft_figure", "prompt_tokens_figure",
           "memory_over_time_figure", "waste_breakdown_figure", "concurrency_figure", "block_size_sweep_figure",
           "fragmentation_lab", "fragmentation_lab_figure",
           "error_heatmaps", "memory_figure", "accuracy_figure", "channel_absmax_figure", "QuantizationLab",
           "quantization_lab", "gantt_figure", "batch_composition_figure", "step_composition_figure",
           "slot_occupancy_figure", "running_metrics", "running_metrics_figure", "latency_throughput_figure",
           "step_cost_figure", "pool_snapshot", "ServingLab", "show_with_first_view"]
