"""The "none" layout: no cache at all. Every step recomputes K/V for the whole sequence.

This is the baseline the lab argues against: step t does attention and projections for all t tokens,
so generating n tokens costs O(n²) work instead of O(n).
"""
from __future__ import annotations

import torch

from .attention import attend_masked
from .base import KVCache, Step


class NoCache(KVCache):
    name = "none"
    keeps_kv = False

    def __init__(self, config, device, dtype):
        super().__init__(config, device, dtype)
        self._step_kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> this step's K, V only

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        self._step_kv[layer] = (k, v)  # [B, T, Hkv, D] each, dropped at end_step

    def attend(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        step = self.current_step
        k, v = self._step_kv[layer]
        return attend_masked(q, k, v, step.attention_mask(k.shape[1]))

    def _prepare(self, step: Step) -> None:
        assert all(self.lengths[s] == 0 for s in step.seq_ids)

    def _commit(self, step: Step) -> None:
        self._step_kv.clear()  # nothing is kept: the next step starts from token 0 again
