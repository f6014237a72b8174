"""The visual layer: figures and widgets that read public state and measured results. Nothing in the
mechanism (model, caches, engine) imports this package."""
from .banner import mode_banner
from .figures import kv_memory_figure, presets_figure, speedup_figure, step_time_figure
from .paged_figures import (block_tables_figure, decode_bandwidth_figure, occupancy_figure, pool_figure,
                            reservation_figure, snapshot)

__all__ = ["mode_banner", "kv_memory_figure", "presets_figure", "speedup_figure", "step_time_figure",
           "pool_figure", "block_tables_figure", "occupancy_figure", "reservation_figure", "snapshot",
           "decode_bandwidth_figure"]
