"""The "paged" layout (PagedAttention, Kwon et al. 2023): K/V live in fixed-size physical blocks.

Per layer one pool for K and one for V, `[num_blocks, block_size, kv_heads, head_dim]`. Each sequence has a
block table: logical block j (its tokens j·bs … j·bs+bs-1) → physical block id. A sequence gets a new block
only when it crosses a block boundary and returns all of them when it finishes, so the only waste is the
unfilled tail of each sequence's last block.

Three attention paths, named by `backend`:
* "triton" — the kernels of kvlab.kernels: store through a slot mapping, GQA-native paged decode (split-K
  when the batch cannot fill the device), causal paged prefill. Compiled on CUDA; under Triton's
  interpreter on a CPU (slow: for small runs, tests and demos, and for reading the kernels). The default on CUDA.
* "cpu" — decode steps through kvlab's C++ kernel (kvlab.kernels.cpu_paged_attention), which reads each block
  where it lies; prefill and the store as "torch". The default on a CPU where the C++ extension loads.
* "torch" — a plain-torch reference: scatter by slot, gather each sequence's blocks into a contiguous copy,
  attend. The CPU default where the C++ extension is switched off or cannot be built.
"""
from __future__ import annotations

import torch

from .attention import attend_masked
from .base import DecodeView, KVCache, Step
from .block_allocator import BlockAllocator, blocks_for

BACKENDS = ("torch", "triton", "cpu")


class PagedCache(KVCache):
    name = "paged"
    backends = BACKENDS  # a layout whose pool the C++ kernel cannot read leaves "cpu" out

    def __init__(self, config, device, dtype, num_blocks: int, block_size: int = 16, backend: str | None = None):
        super().__init__(config, device, dtype)
        self.allocator = BlockAllocator(num_blocks, block_size)  # validates both numbers
        self.block_size = block_size
        backend = backend or self.default_backend(self.device)
        if backend not in self.backends:
            raise ValueError(f"unknown paged backend {backend!r}; choose one of {', '.join(self.backends)}")
        if backend == "cpu":
            from kvlab.kernels import cpu_paged_attention

            if self.device.type != "cpu":
                raise ValueError(f"backend 'cpu' runs on CPU tensors, but this cache is on {self.device}")
            if not cpu_paged_attention.available():
                raise ValueError("backend 'cpu' needs kvlab's C++ CPU kernel, which is not available here "
                                 "(see the warning above); backend 'torch' runs anywhere")
        self.backend = backend
        self._allocate_pools(num_blocks, block_size)
        self.block_tables: dict[int, list[int]] = {}  # seq_id -> physical block ids, in logical order
        # the current step's indices, computed once in _prepare and read by every layer:
        self._slots: torch.Tensor | None = None  # [B, T] int64 slot of each new token, -1 for padding
        self._valid_slots: torch.Tensor | None = None  # [N] int64 slots of the real (not padding) tokens
        self._table: torch.Tensor | None = None  # [B, max_blocks] int32 block tables (the kernels' layout)
        self._table_ids: torch.Tensor | None = None  # [B, max_blocks] int64, the same, for torch indexing
        self._kv_lens: torch.Tensor | None = None  # [B] int32
        self._q_lens: torch.Tensor | None = None  # [B] int32

    @classmethod
    def default_backend(cls, device: torch.device) -> str:
        """"triton" on CUDA; on a CPU "cpu" where the C++ kernel loads (and this layout takes it), else "torch"."""
        if torch.device(device).type == "cuda":
            return "triton"
        if "cpu" in cls.backends:
            from kvlab.kernels import cpu_paged_attention

            if cpu_paged_attention.available():
                return "cpu"
        return "torch"

    def _allocate_pools(self, num_blocks: int, block_size: int) -> None:
        shape = (num_blocks, block_size, self.config.num_kv_heads, self.config.head_dim)
        self.k_pools = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(self.config.num_layers)]
        self.v_pools = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(self.config.num_layers)]

    # --- sequences ---------------------------------------------------------------------------------
    can_fork = True

    def _reserve(self, seq_id: int, max_tokens: int) -> None:
        self.check_fits(seq_id, max_tokens)
        self.block_tables[seq_id] = []  # blocks come on demand, in _prepare

    def check_fits(self, seq_id: int, max_tokens: int) -> None:
        needed = blocks_for(max_tokens, self.block_size)
        if needed > self.allocator.num_blocks:
            raise ValueError(f"sequence {seq_id} may need {needed} blocks for {max_tokens} tokens; "
                             f"the pool has only {self.allocator.num_blocks}")

    def blocks_free(self) -> int:
        return self.allocator.num_available

    def blocks_to_grow(self, seq_id: int, num_new: int) -> int:
        return max(0, blocks_for(self.lengths[seq_id] + num_new, self.block_size) - len(self.block_tables[seq_id]))

    def blocks_to_add(self, prompt_ids: list[int], num_new: int) -> tuple[int, int]:
        return 0, blocks_for(num_new, self.block_size)

    def usage(self) -> float:
        return self.allocator.num_used / self.allocator.num_blocks

    def _release(self, seq_id: int) -> None:
        for block in self.block_tables.pop(seq_id):
            self.allocator.release(block)

    def fork(self, parent: int, child: int) -> None:
        """`child` starts as a copy of `parent`: full blocks are shared (reference count + 1), the partly
        filled last block is copied at once, since both sequences will write into it."""
        if child in self.lengths:
            raise ValueError(f"sequence {child} is already in the cache")
        table, length = self.block_tables[parent], self.lengths[parent]
        partial = length % self.block_size != 0
        fresh = self.allocator.allocate(1) if partial else []  # may raise PoolExhausted: nothing changed yet
        shared = table[:-1] if partial else list(table)
        for block in shared:
            self.allocator.share(block)
        if partial:
            self._copy_block(table[-1], fresh[0])
        self.block_tables[child] = shared + fresh
        self.lengths[child] = length

    can_rollback = True

    def rollback(self, seq_id: int, length: int) -> int:
        """Blocks past the first `length` tokens go back to the pool (a partly kept block keeps its stale tail,
        written over by the next tokens)."""
        self._check_rollback(seq_id, length)
        table, keep = self.block_tables[seq_id], blocks_for(length, self.block_size)
        released = table[keep:]
        for block in reversed(released):
            self.allocator.release(block)
        del table[keep:]
        self.lengths[seq_id] = length
        return len(released)

    def _copy_block(self, source: int, target: int) -> None:
        """K and V of physical block `source` into block `target`, in every layer."""
        for pools in (self.k_pools, self.v_pools):
            for pool in pools:
                pool[target] = pool[source]

    # --- blocks as bytes, for the tier below the pool (kvlab.cache.swap) -----------------------------------
    can_swap = True

    def export_blocks(self, blocks: list[int]) -> torch.Tensor:
        """K and V of `blocks` in every layer, one row of block_bytes() per block: [n, block_bytes] uint8."""
        ids = torch.tensor(blocks, dtype=torch.int64, device=self.device)
        layers = [torch.stack((k[ids], v[ids]), dim=1) for k, v in zip(self.k_pools, self.v_pools)]  # [n, 2, bs, H, D]
        data = torch.stack(layers, dim=1)  # [n, layers, 2, block_size, kv_heads, head_dim]
        return data.view(torch.uint8).reshape(len(blocks), -1)

    def import_blocks(self, blocks: list[int], data: torch.Tensor) -> None:
        """Write rows of export_blocks' layout back into `blocks` (the pool's own dtype, bit for bit)."""
        cfg = self.config
        assert data.shape == (len(blocks), self.block_bytes()) and data.dtype == torch.uint8, data.shape
        kv = data.to(self.device).view(self.dtype).view(len(blocks), cfg.num_layers, 2, self.block_size,
                                                        cfg.num_kv_heads, cfg.head_dim)
        ids = torch.tensor(blocks, dtype=torch.int64, device=self.device)
        for layer, (k, v) in enumerate(zip(self.k_pools, self.v_pools)):
            k[ids] = kv[:, layer, 0]
            v[ids] = kv[:, layer, 1]

    def swap_token_ids(self, seq_id: int) -> tuple[int, ...] | None:
        """What a swapped-out sequence must remember besides its K/V (the prefix layout: its token ids)."""
        return None

    def restore_swapped(self, seq_id: int, swapped) -> None:
        """After swap_in has put the sequence's blocks back (the prefix layout hashes them again)."""

    # --- one step ------------------------------------------------------------------------------------
    def _prepare(self, step: Step) -> None:
        self._grow_tables(step)
        self._index_step(step)

    def _missing_blocks(self, step: Step) -> list[int]:
        """Blocks each sequence of `step` lacks for the tokens it will hold after the step."""
        return [max(0, blocks_for(n, self.block_size) - len(self.block_tables[s]))
                for s, n in zip(step.seq_ids, step.kv_lens.tolist())]

    def _grow_tables(self, step: Step) -> None:
        missing = self._missing_blocks(step)
        fresh = iter(self.allocator.allocate(sum(missing)))  # all or nothing (PoolExhausted)
        for seq_id, count in zip(step.seq_ids, missing):
            self.block_tables[seq_id] += [next(fresh) for _ in range(count)]

    def _index_step(self, step: Step) -> None:
        """The step's slot mapping and block tables as tensors, once for all layers."""
        width = max(len(self.block_tables[s]) for s in step.seq_ids)
        rows = [self.block_tables[s] + [0] * (width - len(self.block_tables[s])) for s in step.seq_ids]
        self._table = torch.tensor(rows, dtype=torch.int32, device=self.device)  # [B, max_blocks]
        self._table_ids = self._table.long()
        logical = torch.div(step.positions, self.block_size, rounding_mode="floor")  # [B, T]
        physical = self._table_ids.gather(1, logical.clamp(max=width - 1))  # [B, T]
        slots = physical * self.block_size + step.positions % self.block_size
        self._slots = torch.where(step.valid, slots, torch.full_like(slots, -1))
        self._valid_slots = self._slots[step.valid]
        self._kv_lens = step.kv_lens.to(torch.int32)
        self._q_lens = step.q_lens.to(torch.int32)

    def abort_step(self) -> None:
        """Forget a failed step and give back the blocks it added past each sequence's cached tokens: a table's
        last block must stay the one the next token lands in (fork and copy-on-write rely on it)."""
        step = self.current_step
        super().abort_step()
        for seq_id in step.seq_ids if step is not None else []:
            table = self.block_tables[seq_id]
            keep = blocks_for(self.lengths[seq_id], self.block_size)
            for block in reversed(table[keep:]):
                self.allocator.release(block)  # fresh, never registered: back to the free list
            del table[keep:]

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        kv_heads, head_dim = k.shape[-2:]
        if self.backend == "triton":
            from kvlab.kernels import store_kv

            store_kv(k.reshape(-1, kv_heads, head_dim), v.reshape(-1, kv_heads, head_dim),
                     self.k_pools[layer], self.v_pools[layer], self._slots.reshape(-1), check=False)
            return
        valid = self.current_step.valid
        self.k_pools[layer].view(-1, kv_heads, head_dim)[self._valid_slots] = k[valid]
        self.v_pools[layer].view(-1, kv_heads, head_dim)[self._valid_slots] = v[valid]

    def attend(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        step = self.current_step
        if self.backend == "triton":
            from kvlab.kernels import paged_decode_attention, paged_prefill_attention

            if step.new_len == 1:
                out = paged_decode_attention(q[:, 0], self.k_pools[layer], self.v_pools[layer], self._table,
                                             self._kv_lens, check=False)  # [B, Hq, D]
                return out.unsqueeze(1)
            return paged_prefill_attention(q, self.k_pools[layer], self.v_pools[layer], self._table, self._kv_lens,
                                           self._q_lens, check=False)  # [B, T, Hq, D]
        if self.backend == "cpu" and step.new_len == 1:
            from kvlab.kernels.cpu_paged_attention import cpu_paged_decode_attention

            out = cpu_paged_decode_attention(q[:, 0], self.k_pools[layer], self.v_pools[layer], self._table,
                                             self._kv_lens, check=False)  # [B, Hq, D]
            return out.unsqueeze(1)
        k, v = self.gather(layer)
        return attend_masked(q, k, v, step.attention_mask(k.shape[1]))

    def decode_view(self) -> DecodeView | None:
        """The pools, tables and slots as they are, where the C++ kernel reads them in place (backend "cpu")."""
        step = self.current_step
        if (self.backend != "cpu" or step.new_len != 1 or self.dtype != torch.float32
                or not self._stores_plainly(PagedCache)):
            return None
        return DecodeView(self.k_pools, self.v_pools, self._table, self._kv_lens, self._slots[:, 0])

    def gather(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sequence's K and V in logical order: two [B, max_blocks · block_size, kv_heads, head_dim]."""
        batch, width = self._table.shape
        k = self.k_pools[layer][self._table_ids]  # [B, max_blocks, block_size, Hkv, D]
        v = self.v_pools[layer][self._table_ids]
        return k.reshape(batch, width * self.block_size, *k.shape[3:]), v.reshape(batch, width * self.block_size, *v.shape[3:])

    # --- public state for figures and benchmarks ----------------------------------------------------------
    def block_bytes(self) -> int:
        """K and V of one block over all layers."""
        return self.block_size * self.bytes_per_token()

    def pool_bytes(self) -> int:
        return self.allocator.num_blocks * self.block_bytes()

    def reserved_bytes(self) -> int:
        """Blocks held by sequences (a block's unfilled tail included)."""
        return self.allocator.num_used * self.block_bytes()

    def kv_bytes_read(self, step: Step) -> int:
        return int(step.kv_lens.sum()) * self.bytes_per_token()
