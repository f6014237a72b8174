"""The "contiguous" layout: per layer, one slab [max_batch, max_len, kv_heads, head_dim] for K and for V,
reserved up front. A sequence owns one row of max_len slots, used or not: simple, fast to index,
and wasteful — the waste the paged layout removes.
"""
from __future__ import annotations

from collections import deque

import torch

from .attention import attend_masked
from .base import DecodeView, KVCache, Step


class ContiguousCache(KVCache):
    name = "contiguous"

    def __init__(self, config, device, dtype, max_batch: int, max_len: int):
        super().__init__(config, device, dtype)
        if max_batch < 1:
            raise ValueError(f"max_batch must be ≥ 1, got {max_batch}")
        if not 1 <= max_len <= config.context_len:
            raise ValueError(f"max_len must be in 1..{config.context_len}, got {max_len}")
        self.max_batch, self.max_len = max_batch, max_len
        shape = (max_batch, max_len, config.num_kv_heads, config.head_dim)
        self.k = [torch.zeros(shape, device=self.device, dtype=dtype) for _ in range(config.num_layers)]
        self.v = [torch.zeros(shape, device=self.device, dtype=dtype) for _ in range(config.num_layers)]
        self.row_of: dict[int, int] = {}  # seq_id -> slab row
        self.free_rows: deque[int] = deque(range(max_batch))
        # the current step's indices, computed once in _prepare and read by every layer:
        self._rows: torch.Tensor | None = None  # [B] slab rows
        self._write_rows: torch.Tensor | None = None  # [N] slab row of each real (not padding) new token
        self._write_cols: torch.Tensor | None = None  # [N] its position
        self._span = 0  # positions attention reads: the longest sequence after this step
        self._single: tuple[int, int, int] | None = None  # a one-sequence step: (row, first new position, count)

    can_rollback = True

    def rollback(self, seq_id: int, length: int) -> int:
        """The row keeps its memory; positions past `length` are written over by the next tokens."""
        self._check_rollback(seq_id, length)
        self.lengths[seq_id] = length
        return 0

    def check_fits(self, seq_id: int, max_tokens: int) -> None:
        if max_tokens > self.max_len:
            raise ValueError(f"sequence {seq_id} needs {max_tokens} tokens, more than max_len={self.max_len}")

    def can_add_sequence(self) -> bool:
        return bool(self.free_rows)

    def usage(self) -> float:
        """Rows reserved (whole rows, used or not: the waste this layout is about)."""
        return len(self.row_of) / self.max_batch

    def _reserve(self, seq_id: int, max_tokens: int) -> None:
        self.check_fits(seq_id, max_tokens)
        if not self.free_rows:
            raise ValueError(f"all {self.max_batch} rows of the contiguous cache are in use")
        self.row_of[seq_id] = self.free_rows.popleft()

    def _release(self, seq_id: int) -> None:
        self.free_rows.append(self.row_of.pop(seq_id))

    def _prepare(self, step: Step) -> None:
        too_long = [(s, int(n)) for s, n in zip(step.seq_ids, step.kv_lens.tolist()) if n > self.max_len]
        if too_long:
            raise ValueError(f"sequence {too_long[0][0]} would hold {too_long[0][1]} tokens, over max_len={self.max_len}")
        rows = [self.row_of[s] for s in step.seq_ids]
        self._span = int(step.kv_lens.max())
        if len(rows) == 1:  # one sequence: plain slices, no index tensors (batch-1 decode is this path)
            self._single = (rows[0], self.lengths[step.seq_ids[0]], step.new_len)  # row, first new position, count
            return
        self._single = None
        self._rows = torch.tensor(rows, device=self.device)
        self._write_rows = self._rows[:, None].expand_as(step.positions)[step.valid]
        self._write_cols = step.positions[step.valid]

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        if self._single is not None:
            row, start, count = self._single
            self.k[layer][row, start: start + count] = k[0]
            self.v[layer][row, start: start + count] = v[0]
            return
        valid = self.current_step.valid
        self.k[layer][self._write_rows, self._write_cols] = k[valid]
        self.v[layer][self._write_rows, self._write_cols] = v[valid]

    def attend(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        if self._single is not None:
            row = self._single[0]
            k = self.k[layer][row: row + 1, : self._span]  # [1, span, Hkv, D], a view
            v = self.v[layer][row: row + 1, : self._span]
        else:
            k = self.k[layer][self._rows, : self._span]  # [B, span, Hkv, D]
            v = self.v[layer][self._rows, : self._span]
        return attend_masked(q, k, v, self.current_step.attention_mask(self._span))

    def decode_view(self) -> DecodeView | None:
        """Each row is a block of max_len tokens: a sequence's table is its row, its slot row · max_len + position."""
        step = self.current_step
        if (step.new_len != 1 or self.dtype != torch.float32 or self.device.type != "cpu"
                or not self._stores_plainly(ContiguousCache)):
            return None
        rows = torch.tensor([self.row_of[s] for s in step.seq_ids], dtype=torch.int64)  # [B]
        return DecodeView(self.k, self.v, rows[:, None].to(torch.int32), step.kv_lens.to(torch.int32),
                          rows * self.max_len + step.positions[:, 0])

    def reserved_bytes(self) -> int:
        return 2 * sum(t.numel() * t.element_size() for t in self.k)

    def kv_bytes_read(self, step: Step) -> int:
        return len(step.seq_ids) * int(step.kv_lens.max()) * self.bytes_per_token()
