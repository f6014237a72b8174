"""The "quantized" layout: the paged pool with K/V stored as int8 / fp8 / int4 / 2-bit codes plus float16 scales.

The schemes are in quantization.py. Per layer, one QuantizedPool holds the codes and scales of every block.
Quantization happens when K/V are stored; attention dequantizes in registers as it reads (the Triton kernel)
— no dequantized copy of the cache is made on that path. The "torch" backend is the reference: it gathers a
sequence's blocks and dequantizes them, plainly, to check the kernel against.

What a query sees is what it would see at decode time: every earlier token quantized, and with kivi2 the
tokens of its own block (the newest, partly filled one) in full precision. kivi2 keeps that newest block of
each sequence in a full-precision *recent* slot (one per sequence, at most `max_seqs` sequences) and
quantizes a block when its last token arrives — keys per channel over the block's tokens, values per token.

A step of kivi2 *stages* each sequence's recent tokens followed by its new tokens ([S, Hkv, D], full
precision, at most block_size − 1 old rows per sequence): the step's full blocks are quantized from there,
the leftover tail goes back to the recent slot, and attention reads its full-precision tokens from there.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from .base import KVCache, Step
from .paged import PagedCache
from .quantization import SCALE_DTYPE, QuantScheme, make_scheme


@dataclass
class QuantizedPool:
    """One layer's quantized K/V. Codes [num_blocks, block_size, Hkv, code_bytes]; per-token scales (and
    kivi2 minimums) [num_blocks, block_size, Hkv, groups] fp16; kivi2 key scales and minimums per channel
    [num_blocks, Hkv, D]; kivi2 recent slots [max_seqs, block_size, Hkv, D] in the model's dtype."""
    k_codes: torch.Tensor
    k_scale: torch.Tensor
    k_min: torch.Tensor | None
    v_codes: torch.Tensor
    v_scale: torch.Tensor
    v_min: torch.Tensor | None
    recent_k: torch.Tensor | None
    recent_v: torch.Tensor | None

    @classmethod
    def zeros(cls, scheme: QuantScheme, num_blocks: int, block_size: int, num_kv_heads: int, device,
              recent_slots: int = 0, recent_dtype: torch.dtype = torch.float32) -> QuantizedPool:
        """An empty pool for `scheme`; kivi2 also gets `recent_slots` full-precision recent blocks."""
        codes = (num_blocks, block_size, num_kv_heads, scheme.code_bytes)
        per_token = (num_blocks, block_size, num_kv_heads, scheme.num_groups)
        key_scale = (num_blocks, num_kv_heads, scheme.head_dim) if scheme.keys_per_channel else per_token
        recent = (recent_slots, block_size, num_kv_heads, scheme.head_dim)

        def zeros(shape, dtype):
            return torch.zeros(shape, device=device, dtype=dtype)

        return cls(
            k_codes=zeros(codes, scheme.code_dtype), k_scale=zeros(key_scale, SCALE_DTYPE),
            k_min=None if scheme.symmetric else zeros(key_scale, SCALE_DTYPE),
            v_codes=zeros(codes, scheme.code_dtype), v_scale=zeros(per_token, SCALE_DTYPE),
            v_min=None if scheme.symmetric else zeros(per_token, SCALE_DTYPE),
            recent_k=zeros(recent, recent_dtype) if scheme.keeps_recent else None,
            recent_v=zeros(recent, recent_dtype) if scheme.keeps_recent else None,
        )

    def block_tensors(self) -> list[torch.Tensor]:
        """The tensors indexed by physical block id first."""
        return [getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None and not f.name.startswith("recent")]


@dataclass
class StepPlan:
    """Where each piece of a step goes, computed once on the host and read by every layer."""
    rows_seq: torch.Tensor  # [R] int32: the sequence (row of the block table) of each attention row
    rows_ctx: torch.Tensor  # [R] int32: tokens the row's query attends over (its position + 1)
    rows_full: torch.Tensor  # [R] int32: of those, how many are read quantized (the rest from staging)
    rows_recent: torch.Tensor  # [R] int32: staging row of the first full-precision token
    stage_index: torch.Tensor | None = None  # kivi2 [S] int64: rows of cat(recent slots, new tokens) to stage
    stage_slots: torch.Tensor | None = None  # kivi2 [S] int64: pool slot of each staged row in a full block, else -1
    seal_blocks: torch.Tensor | None = None  # kivi2 [M] int32: physical blocks that fill up in this step
    seal_rows: torch.Tensor | None = None  # kivi2 [M] int32: their first staging row
    tail_rows: torch.Tensor | None = None  # kivi2 [K] int64: staging rows that go back to a recent slot
    tail_targets: torch.Tensor | None = None  # kivi2 [K] int64: flat recent row (slot · block_size + offset)


class QuantizedPagedCache(PagedCache):
    name = "quantized"
    backends = ("torch", "triton")  # the C++ CPU kernel reads float pools, not codes and scales

    def __init__(self, config, device, dtype, num_blocks: int, block_size: int = 16, scheme: str | QuantScheme = "int8",
                 group_size: int | None = None, backend: str | None = None, max_seqs: int = 16):
        if isinstance(scheme, QuantScheme):
            if scheme.head_dim != config.head_dim:
                raise ValueError(f"scheme head_dim {scheme.head_dim} differs from the model's {config.head_dim}")
        else:
            scheme = make_scheme(scheme, config.head_dim, group_size, device=device)
        if isinstance(max_seqs, bool) or not isinstance(max_seqs, int) or max_seqs < 1:
            raise ValueError(f"max_seqs must be a positive integer, got {max_seqs!r}")
        self.scheme = scheme
        self.max_seqs = max_seqs
        super().__init__(config, device, dtype, num_blocks, block_size, backend)
        self.recent_slots: dict[int, int] = {}  # kivi2: seq_id -> its full-precision recent slot
        self._free_recent = list(range(max_seqs))[::-1]
        self._plan: StepPlan | None = None
        self._staged: tuple[torch.Tensor, torch.Tensor] | None = None  # kivi2: this layer's staging K, V [S, Hkv, D]

    def _allocate_pools(self, num_blocks: int, block_size: int) -> None:
        cfg = self.config
        self.pools = [QuantizedPool.zeros(self.scheme, num_blocks, block_size, cfg.num_kv_heads, self.device,
                                          recent_slots=self.max_seqs, recent_dtype=self.dtype)
                      for _ in range(cfg.num_layers)]
        self.k_pools = self.v_pools = None  # no full-precision pool here

    # --- sequences ---------------------------------------------------------------------------------
    def _take_recent_slot(self, seq_id: int) -> None:
        if not self.scheme.keeps_recent:
            return
        if not self._free_recent:
            raise ValueError(f"sequence {seq_id}: all {self.max_seqs} full-precision recent slots are in use "
                             f"(max_seqs={self.max_seqs})")
        self.recent_slots[seq_id] = self._free_recent.pop()

    can_swap = False  # its blocks live in code and scale pools and a recent-rows buffer: not swapped (yet)
    can_rollback = False  # sealed blocks are quantized once: drafts cannot be taken back out of them

    def can_add_sequence(self) -> bool:
        return not self.scheme.keeps_recent or bool(self._free_recent)

    def _reserve(self, seq_id: int, max_tokens: int) -> None:
        super()._reserve(seq_id, max_tokens)  # may raise: nothing taken yet
        try:
            self._take_recent_slot(seq_id)
        except ValueError:
            del self.block_tables[seq_id]
            raise

    def _release(self, seq_id: int) -> None:
        super()._release(seq_id)
        if seq_id in self.recent_slots:
            self._free_recent.append(self.recent_slots.pop(seq_id))

    def fork(self, parent: int, child: int) -> None:
        if child in self.lengths:
            raise ValueError(f"sequence {child} is already in the cache")
        self._take_recent_slot(child)
        try:
            super().fork(parent, child)
        except Exception:  # PoolExhausted: give the recent slot back, nothing else was taken
            if child in self.recent_slots:
                self._free_recent.append(self.recent_slots.pop(child))
            raise
        if self.scheme.keeps_recent:
            for pool in self.pools:
                for recent in (pool.recent_k, pool.recent_v):
                    recent[self.recent_slots[child]] = recent[self.recent_slots[parent]]

    def _copy_block(self, source: int, target: int) -> None:
        for pool in self.pools:
            for tensor in pool.block_tensors():
                tensor[target] = tensor[source]

    # --- one step ------------------------------------------------------------------------------------
    def _prepare(self, step: Step) -> None:
        super()._prepare(step)
        self._plan = self._plan_step(step)

    def _plan_step(self, step: Step) -> StepPlan:
        bs, kivi = self.block_size, self.scheme.keeps_recent
        cached = (step.kv_lens - step.q_lens).tolist()
        q_lens = step.q_lens.tolist()
        new_len = step.new_len
        rows_seq, rows_ctx, rows_full, rows_recent = [], [], [], []
        stage_index, stage_slots, seal_blocks, seal_rows, tail_rows, tail_targets = [], [], [], [], [], []
        recent_rows = self.max_seqs * bs
        for b, (seq_id, c, q) in enumerate(zip(step.seq_ids, cached, q_lens)):
            n = c + q
            span_start = (c // bs) * bs if kivi else 0
            offset = len(stage_index)
            for p in range(c, n):
                rows_seq.append(b)
                rows_ctx.append(p + 1)
                full = (p // bs) * bs if kivi else p + 1
                rows_full.append(full)
                rows_recent.append(offset + full - span_start if kivi else 0)
            if not kivi:
                continue
            table, slot = self.block_tables[seq_id], self.recent_slots[seq_id]
            sealed_end = (n // bs) * bs
            for pos in range(span_start, n):
                row = len(stage_index)
                old = pos < c
                stage_index.append(slot * bs + pos % bs if old else recent_rows + b * new_len + pos - c)
                in_full_block = pos < sealed_end
                stage_slots.append(table[pos // bs] * bs + pos % bs if in_full_block else -1)
                if in_full_block and pos % bs == 0:
                    seal_blocks.append(table[pos // bs])
                    seal_rows.append(row)
                if not in_full_block:
                    tail_rows.append(row)
                    tail_targets.append(slot * bs + pos % bs)

        def as_tensor(values, dtype):
            return torch.tensor(values, dtype=dtype, device=self.device)

        plan = StepPlan(as_tensor(rows_seq, torch.int32), as_tensor(rows_ctx, torch.int32),
                        as_tensor(rows_full, torch.int32), as_tensor(rows_recent, torch.int32))
        if kivi:
            plan.stage_index = as_tensor(stage_index, torch.int64)
            plan.stage_slots = as_tensor(stage_slots, torch.int64)
            plan.seal_blocks = as_tensor(seal_blocks, torch.int32)
            plan.seal_rows = as_tensor(seal_rows, torch.int32)
            plan.tail_rows = as_tensor(tail_rows, torch.int64)
            plan.tail_targets = as_tensor(tail_targets, torch.int64)
        return plan

    def abort_step(self) -> None:
        self._plan, self._staged = None, None
        super().abort_step()

    def _commit(self, step: Step) -> None:
        super()._commit(step)
        self._plan, self._staged = None, None

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        from kvlab.kernels import quant_store

        heads, dim = k.shape[-2:]
        pool, plan = self.pools[layer], self._plan
        kernel = self.backend == "triton"
        store = quant_store.quantize_store if kernel else quant_store.quantize_store_reference
        if not self.scheme.keeps_recent:
            slots = self._slots.reshape(-1)
            store(self.scheme, k.reshape(-1, heads, dim), pool.k_codes, pool.k_scale, pool.k_min, slots)
            store(self.scheme, v.reshape(-1, heads, dim), pool.v_codes, pool.v_scale, pool.v_min, slots)
            return
        stage_k = torch.cat([pool.recent_k.reshape(-1, heads, dim), k.reshape(-1, heads, dim)])[plan.stage_index]
        stage_v = torch.cat([pool.recent_v.reshape(-1, heads, dim), v.reshape(-1, heads, dim)])[plan.stage_index]
        seal = quant_store.quantize_key_blocks if kernel else quant_store.quantize_key_blocks_reference
        seal(self.scheme, stage_k, pool.k_codes, pool.k_scale, pool.k_min, plan.seal_blocks, plan.seal_rows)
        store(self.scheme, stage_v, pool.v_codes, pool.v_scale, pool.v_min, plan.stage_slots)  # full blocks' values
        pool.recent_k.view(-1, heads, dim)[plan.tail_targets] = stage_k[plan.tail_rows]
        pool.recent_v.view(-1, heads, dim)[plan.tail_targets] = stage_v[plan.tail_rows]
        self._staged = (stage_k, stage_v)  # [S, Hkv, D] each

    def attend(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        from kvlab.kernels import quant_decode

        step, plan = self.current_step, self._plan
        stage_k, stage_v = self._staged if self._staged is not None else (None, None)
        rows_q = q[step.valid]  # [R, Hq, D], rows in (sequence, position) order like the plan's
        attend = quant_decode.quant_decode_attention if self.backend == "triton" else quant_decode.quant_decode_reference
        out_rows = attend(self.scheme, rows_q, self.pools[layer], self._table, plan.rows_seq, plan.rows_ctx,
                          plan.rows_full, plan.rows_recent, stage_k, stage_v)
        out = torch.zeros_like(q)
        out[step.valid] = out_rows
        return out  # [B, T, Hq, D]

    def gather(self, layer: int):
        raise NotImplementedError("the quantized layout never makes a dequantized copy of its cache; "
                                  "kvlab.kernels.quant_decode.dequantize_sequence shows one sequence for figures")

    # --- public state for figures and benchmarks ----------------------------------------------------------
    def bytes_per_token(self) -> int:
        """Quantized K + V of one token over all layers (codes, scales and the kivi2 per-block key scales)."""
        cfg = self.config
        return round(cfg.num_layers * cfg.num_kv_heads * self.scheme.bytes_per_token_head(self.block_size))

    def kv_bytes_read(self, step: Step) -> int:
        """Bytes the attention of `step` reads for its last token per sequence: codes and scales of the quantized
        tokens, and (kivi2) the newest block's tokens in full precision."""
        if not self.scheme.keeps_recent:
            return super().kv_bytes_read(step)
        lens = step.kv_lens.tolist()
        quantized = sum((n - 1) // self.block_size * self.block_size for n in lens)
        return quantized * self.bytes_per_token() + (sum(lens) - quantized) * KVCache.bytes_per_token(self)

    def recent_bytes(self) -> int:
        """kivi2: the full-precision recent slots of all layers (0 for the other schemes)."""
        if not self.scheme.keeps_recent:
            return 0
        return sum(p.recent_k.numel() * p.recent_k.element_size() * 2 for p in self.pools)

    def pool_bytes(self) -> int:
        return self.allocator.num_blocks * self.block_bytes() + self.recent_bytes()
