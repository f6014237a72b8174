"""The line at the top of every notebook that says which mode is running."""
from __future__ import annotations

import html

import torch


class ModeBanner:
    def __init__(self, device: torch.device | str, dtype: torch.dtype, detail: str = ""):
        self.device = torch.device(device)
        self.dtype = dtype
        self.detail = detail

    @property
    def is_gpu(self) -> bool:
        return self.device.type == "cuda"

    def text(self) -> str:
        dtype = str(self.dtype).replace("torch.", "")
        if self.is_gpu:
            head = f"GPU mode — {torch.cuda.get_device_name(self.device)}, {dtype}, compiled kernels, large sizes."
        else:
            head = (f"CPU mode — {dtype}, torch reference paths, small sizes. Triton kernels, where a notebook "
                    "uses them, run in the interpreter: their timings say nothing about speed.")
        return f"{head} {self.detail}".strip()

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        colour = "#0b6e4f" if self.is_gpu else "#8a5a00"
        return (f'<div style="padding:8px 12px;border-left:6px solid {colour};background:#f6f6f2;'
                f'font-family:sans-serif"><b>{html.escape(self.text())}</b></div>')


def mode_banner(device: torch.device | str, dtype: torch.dtype, detail: str = "") -> ModeBanner:
    return ModeBanner(device, dtype, detail)
