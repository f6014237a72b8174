"""The device's own ceiling: copy bandwidth measured here, now, so every GB/s figure has a peak beside it."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .timers import median_seconds


@dataclass(frozen=True)
class CopyBandwidth:
    device: str
    bytes_moved: int  # read + write of one copy
    seconds: float  # median

    @property
    def gb_per_s(self) -> float:
        return self.bytes_moved / self.seconds / 1e9


def measure_copy_bandwidth(device: torch.device | str = "cpu", megabytes: int | None = None, repeats: int = 5) -> CopyBandwidth:
    """Median time of dst.copy_(src) on a buffer far larger than the caches; bytes = 2 × size (read + write).
    Default size: 256 MB on a CPU, 1 GB on a GPU (a smaller copy there is short enough for the host clock's
    synchronisation to show)."""
    device = torch.device(device)
    megabytes = megabytes or (1024 if device.type == "cuda" else 256)
    numel = megabytes * 2**20 // 4
    src = torch.randn(numel, device=device)  # not zeros: some paths shortcut constant pages
    dst = torch.empty_like(src)
    seconds = median_seconds(lambda: dst.copy_(src), device, warmup=2, repeats=repeats)
    return CopyBandwidth(str(device), 2 * numel * 4, seconds)


def device_label(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
