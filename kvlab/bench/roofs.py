"""The device's own ceilings, measured here and now: copy bandwidth (bytes/s) and matmul throughput (FLOP/s).

Every GB/s figure in the lab stands beside the first, every FLOP/s figure beside the second; together they are
the roofline: a kernel doing I FLOP per byte moved can reach at most min(matmul FLOP/s, I × bandwidth), and the
ridge point (FLOP/s ÷ bytes/s) is the intensity where it stops being bandwidth-bound. `device_roofs` measures
both once per process and device (a few hundred ms on a CPU) and hands back the same numbers afterwards.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .timers import device_timer, median_seconds


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


@dataclass(frozen=True)
class MatmulThroughput:
    device: str
    dtype: str
    size: int  # n of an n × n × n product
    seconds: float  # median

    @property
    def flops(self) -> int:
        return 2 * self.size ** 3  # a multiply and an add per term

    @property
    def flops_per_s(self) -> float:
        return self.flops / self.seconds


def measure_matmul_flops(device: torch.device | str = "cpu", dtype: torch.dtype | None = None, size: int | None = None
                         ) -> MatmulThroughput:
    """Median time of an n × n @ n × n product in the working dtype (default: float32 on a CPU, bfloat16 on a
    GPU — what the lab's model runs in); FLOP = 2n³. Default n: 1024 on a CPU, 8192 on a GPU (large enough to
    fill the device and amortise the launch)."""
    device = torch.device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    size = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(size, size, device=device).to(dtype)  # random: no shortcut on zeros
    b = torch.randn(size, size, device=device).to(dtype)
    seconds = device_timer(device)(lambda: a @ b)
    return MatmulThroughput(str(device), str(dtype).replace("torch.", ""), size, seconds)


@dataclass(frozen=True)
class Roofs:
    copy: CopyBandwidth
    matmul: MatmulThroughput

    @property
    def ridge_flop_per_byte(self) -> float:
        """Arithmetic intensity where the bandwidth roof meets the compute roof."""
        return self.matmul.flops_per_s / (self.copy.gb_per_s * 1e9)

    def attainable_flops_per_s(self, flop_per_byte: float) -> float:
        """The roofline: min(compute roof, intensity × bandwidth)."""
        return min(self.matmul.flops_per_s, flop_per_byte * self.copy.gb_per_s * 1e9)


_measured: dict[tuple[str, str], Roofs] = {}


def device_roofs(device: torch.device | str = "cpu", dtype: torch.dtype | None = None, refresh: bool = False) -> Roofs:
    """Copy bandwidth and matmul FLOP/s of `device`, measured on the first call in this process (or with
    refresh=True) and remembered: every later figure compares against the same roofs."""
    device = torch.device(device)
    key = (str(device), str(dtype))
    if refresh or key not in _measured:
        _measured[key] = Roofs(measure_copy_bandwidth(device), measure_matmul_flops(device, dtype))
    return _measured[key]
