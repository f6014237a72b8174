"""The contract every KV cache layout honours, so that the model never changes when a layout is added.

One forward step of a batch goes:

    step = cache.begin_step(seq_ids, num_new_tokens)   # positions, lengths; a layout may allocate here
    for each layer:
        cache.write(layer, k, v)        # store the new tokens' K/V wherever the layout keeps them
        out = cache.attend(layer, q)    # attention of the new queries over everything cached for their sequence
    cache.end_step()                    # the new tokens now count as cached

Tensors in a step are right-padded: [B, T, heads, head_dim] with T = the most new tokens of any sequence
and `q_lens[b]` of them real. A layout that cannot do something raises a clear error.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..model.config import LlamaConfig
from .attention import causal_mask


@dataclass
class Step:
    seq_ids: list[int]
    q_lens: torch.Tensor  # [B] int64, new tokens per sequence (≥ 1)
    positions: torch.Tensor  # [B, T] int64, absolute position of each new token (padding continues the count)
    kv_lens: torch.Tensor  # [B] int64, tokens each sequence attends over once this step is written
    valid: torch.Tensor  # [B, T] bool, True for real (not padding) tokens
    new_token_ids: list[list[int]] | None = None  # the new tokens' ids per sequence, when the engine gives them
    tentative: list[int] | None = None  # per sequence, how many of its last new tokens are drafts (speculation)
    _masks: dict = field(default_factory=dict, repr=False)  # span → causal_mask, built once per step, not per layer

    def attention_mask(self, span: int) -> torch.Tensor | None:
        """causal_mask for `span` gathered key positions (None when every query sees them all)."""
        if span not in self._masks:
            self._masks[span] = causal_mask(self.positions, self.kv_lens, span)
        return self._masks[span]

    @property
    def batch(self) -> int:
        return len(self.seq_ids)

    @property
    def new_len(self) -> int:
        return self.positions.shape[1]


@dataclass
class DecodeView:
    """A decode step's K/V as pools that a kernel reads through block tables and writes through slots, for every
    layer at once (kernels/cpu_decode_layer: the fused CPU decode)."""
    k_pools: list[torch.Tensor]  # per layer [num_blocks, block_size, Hkv, D] float32
    v_pools: list[torch.Tensor]
    block_tables: torch.Tensor  # [B, max_blocks] int32
    context_lens: torch.Tensor  # [B] int32, tokens each sequence attends over, its new one included
    slots: torch.Tensor  # [B] int64, block id · block_size + offset of each sequence's new token


class KVCache:
    """Base class: sequence bookkeeping shared by all layouts. Subclasses store and read K/V."""

    name = "base"

    def __init__(self, config: LlamaConfig, device: torch.device, dtype: torch.dtype):
        self.config = config
        self.device = torch.device(device)
        self.dtype = dtype
        self.lengths: dict[int, int] = {}  # seq_id -> tokens cached
        self.current_step: Step | None = None

    # --- sequences -------------------------------------------------------------------------------
    def add_sequence(self, seq_id: int, max_tokens: int, prompt_ids: list[int] | None = None) -> int:
        """Start tracking a sequence that will hold at most `max_tokens` tokens; returns how many tokens of it
        are already cached (0 here; a prefix cache may find the start of `prompt_ids` among its blocks)."""
        if seq_id in self.lengths:
            raise ValueError(f"sequence {seq_id} is already in the cache")
        self._reserve(seq_id, max_tokens)
        self.lengths[seq_id] = 0
        return 0

    def free_sequence(self, seq_id: int) -> None:
        if seq_id not in self.lengths:
            raise KeyError(f"sequence {seq_id} is not in the cache")
        self._release(seq_id)
        del self.lengths[seq_id]

    def num_cached(self, seq_id: int) -> int:
        """Tokens of this sequence whose K/V the cache holds (the engine feeds only the rest)."""
        return self.lengths[seq_id]

    # --- one step --------------------------------------------------------------------------------
    def begin_step(self, seq_ids: list[int], num_new: list[int], new_token_ids: list[list[int]] | None = None,
                   tentative: list[int] | None = None) -> Step:
        """new_token_ids: the ids of the new tokens per sequence (a prefix cache hashes full blocks by them).
        tentative: per sequence, how many of its last new tokens are drafts that rollback() may take back (a prefix
        cache hashes no block holding one until rollback() confirms it)."""
        assert self.current_step is None, "end_step() was not called after the previous step"
        if len(seq_ids) != len(num_new) or not seq_ids:
            raise ValueError(f"need one new-token count per sequence, got {len(seq_ids)} ids and {len(num_new)} counts")
        if len(set(seq_ids)) != len(seq_ids):
            twice = sorted({s for s in seq_ids if seq_ids.count(s) > 1})
            raise ValueError(f"sequences {twice} appear more than once in one step")
        for seq_id, count in zip(seq_ids, num_new):
            if seq_id not in self.lengths:
                raise KeyError(f"sequence {seq_id} is not in the cache")
            if count < 1:
                raise ValueError(f"sequence {seq_id}: each step needs at least one new token, got {count}")
        if new_token_ids is not None and [len(ids) for ids in new_token_ids] != list(num_new):
            raise ValueError(f"new_token_ids has {[len(ids) for ids in new_token_ids]} ids per sequence, "
                             f"num_new says {list(num_new)}")
        if tentative is not None and (len(tentative) != len(seq_ids)
                                      or any(not 0 <= t < n for t, n in zip(tentative, num_new))):
            raise ValueError(f"tentative must give 0 ≤ drafts < new tokens per sequence, got {tentative} for {num_new}")
        cached = torch.tensor([self.lengths[s] for s in seq_ids], dtype=torch.int64)
        q_lens = torch.tensor(num_new, dtype=torch.int64)
        offsets = torch.arange(max(num_new), dtype=torch.int64)
        step = Step(
            seq_ids=list(seq_ids),
            q_lens=q_lens.to(self.device),
            positions=(cached[:, None] + offsets[None, :]).to(self.device),
            kv_lens=(cached + q_lens).to(self.device),
            valid=(offsets[None, :] < q_lens[:, None]).to(self.device),
            new_token_ids=[list(ids) for ids in new_token_ids] if new_token_ids is not None else None,
            tentative=list(tentative) if tentative is not None else None,
        )
        self._prepare(step)  # may raise (e.g. out of memory) before anything changes
        self.current_step = step
        return step

    def end_step(self) -> None:
        step = self.current_step
        assert step is not None, "end_step() without begin_step()"
        self._commit(step)
        self.current_step = None

    def abort_step(self) -> None:
        """Forget a step that failed part-way (nothing counted as cached)."""
        self.current_step = None

    # --- what a layout implements ------------------------------------------------------------------
    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: [B, T, kv_heads, head_dim] of the current step's new tokens."""
        raise NotImplementedError

    def attend(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        """q: [B, T, heads, head_dim] → attention output [B, T, heads, head_dim]."""
        raise NotImplementedError

    def decode_view(self) -> DecodeView | None:
        """The current step's pools for a kernel that stores and attends by itself, or None: this layout's own
        write() and attend() must run (the default; a layout offers a view only for decode steps — one new token
        a sequence — over float32 CPU pools, where storing and reading are all its write() and attend() do)."""
        return None

    def _stores_plainly(self, layout: type) -> bool:
        """write() and attend() are `layout`'s own: no subclass and no instance replaced them (a recording cache,
        a notebook's spy), so a kernel that stores and attends by itself does all they would."""
        return (type(self).write is layout.write and type(self).attend is layout.attend
                and "write" not in vars(self) and "attend" not in vars(self))

    def _reserve(self, seq_id: int, max_tokens: int) -> None:
        pass

    def _release(self, seq_id: int) -> None:
        pass

    def _prepare(self, step: Step) -> None:
        pass

    def _commit(self, step: Step) -> None:
        for seq_id, count in zip(step.seq_ids, step.q_lens.tolist()):
            self.lengths[seq_id] += count

    # --- what a scheduler asks before it acts (it owns no allocator: it asks the cache) ------------
    keeps_kv = True  # False for "none": every step recomputes the whole sequence, so a prefill cannot be chunked
    can_fork = False  # True where fork(parent, child) works (parallel sampling)

    def fork(self, parent: int, child: int) -> None:
        raise ValueError(f"the {self.name!r} layout cannot fork a sequence; use cache='paged' or cache='prefix'")

    can_rollback = False  # True where rollback(seq_id, length) works (speculative decoding)

    def rollback(self, seq_id: int, length: int) -> int:
        """Keep the first `length` cached tokens of `seq_id` and forget the rest (drafts the target rejected);
        returns how many blocks went back to the pool."""
        raise ValueError(f"the {self.name!r} layout cannot roll back a sequence's cached tokens; use cache='contiguous', "
                         f"'paged' or 'prefix'")

    def _check_rollback(self, seq_id: int, length: int) -> None:
        if seq_id not in self.lengths:
            raise KeyError(f"sequence {seq_id} is not in the cache")
        if not 0 <= length <= self.lengths[seq_id]:
            raise ValueError(f"sequence {seq_id} holds {self.lengths[seq_id]} tokens: cannot roll back to {length}")
        assert self.current_step is None, "rollback() inside a step"

    def check_fits(self, seq_id: int, max_tokens: int) -> None:
        """ValueError unless a sequence holding `max_tokens` tokens could ever fit (in an otherwise empty cache)."""

    def can_add_sequence(self) -> bool:
        """Whether add_sequence has room for one more sequence now (a free row or slot; blocks are asked apart)."""
        return True

    def blocks_free(self) -> int | None:
        """Blocks a new allocation could get now; None for a layout without a block pool."""
        return None

    def blocks_to_grow(self, seq_id: int, num_new: int) -> int:
        """Fresh blocks `seq_id` needs to take `num_new` more tokens."""
        return 0

    def blocks_to_add(self, prompt_ids: list[int], num_new: int) -> tuple[int, int]:
        """(tokens of `prompt_ids` a prefix cache would serve, blocks add_sequence + a first step of `num_new` more
        tokens would take from blocks_free()) — asked without changing anything."""
        return 0, 0

    def usage(self) -> float:
        """Fraction of the KV capacity in use (vLLM's kv_cache_usage_perc / 100)."""
        return 0.0

    # --- what a figure or a benchmark may read -----------------------------------------------------
    def bytes_per_token(self) -> int:
        """K and V of one token over all layers, in this cache's dtype."""
        cfg = self.config
        return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * torch.finfo(self.dtype).bits // 8

    def reserved_bytes(self) -> int:
        """Memory the layout holds for K/V right now."""
        return 0

    def used_bytes(self) -> int:
        """Memory actually holding cached tokens."""
        return sum(self.lengths.values()) * self.bytes_per_token()

    def kv_bytes_read(self, step: Step) -> int:
        """K/V bytes the attention of `step` reads, over all layers."""
        return 0
