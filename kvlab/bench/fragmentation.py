"""Where KV memory goes under a real request stream: a trace replayed through the real allocators.

Three layouts share one pool of `pool_tokens` token slots and one scheduler:
* "contiguous-max" — each request reserves one region of `trace.max_len` slots at admission (RegionAllocator):
  what a cache with one row per sequence does, because nobody knows in advance how long an answer gets.
* "contiguous-exact" — each request reserves exactly prompt + output slots: an oracle (no real server knows
  the output length), the best a contiguous layout can do. Its regions differ in size, so holes appear.
* "paged" — fixed blocks of `block_size` slots from a BlockAllocator (pool_tokens // block_size of them),
  taken one at a time as a request crosses a block boundary and all returned when it finishes.

The scheduler, the same for all three: a step is one forward pass of the batch. At each step, arrived requests
join the waiting queue; every running request that is past its prefill stores one new token (paged: taking
a new block when it needs one); then waiting requests are admitted first come, first served while the
allocator can hold them — an admitted request's prefill stores its prompt that step. A request finishes,
and frees its memory, at the end of the step that stores its output_len-th token (it lives output_len + 1 steps).
When a paged request needs a block and none is free, the newest running request is preempted (vLLM's policy):
its blocks go back, it returns to the head of the queue, and on readmission its prompt and the tokens it had
generated are prefilled again (recompute). Contiguous layouts reserve everything up front and never preempt;
no request is admitted in a step that preempted.

Each step splits the pool, in token slots, the way the PagedAttention paper does (Kwon et al. 2023, Fig. 2):
* used — slots holding a cached token;
* reserved, unused — slots held for tokens the request will still produce (contiguous layouts);
* internal fragmentation — slots held that will never hold a token of this request: the region beyond its
  final length (contiguous-max), the unfilled tail of its last block (paged);
* external fragmentation — free slots that cannot serve the head of the queue although there are enough of
  them: the request needs more than the largest hole (regions only; any free block serves any request);
* free — the rest.
`reserved` comes from the allocator (regions: slots in live regions; paged: blocks in use × block size), the
split from the running requests; the replay asserts they agree at every step.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from statistics import fmean
from typing import Callable

from ..cache.block_allocator import BlockAllocator, PoolExhausted, blocks_for, check_block_size
from ..cache.region_allocator import RegionAllocator
from ..checks import positive_int
from ..workload import Request, Trace

LAYOUTS = ("contiguous-max", "contiguous-exact", "paged")
BLOCK_SIZES = tuple(2**k for k in range(9))  # 1 … 256
DEFAULT_POOL_TOKENS = 65536  # 32 reservations of 2,048 tokens
SPLIT = ("used", "reserved, unused", "internal", "external", "free")


@dataclass
class _Sequence:
    index: int  # position in the trace
    request: Request
    generated: int = 0  # output tokens produced (kept across a preemption: they are text, recomputed)
    tokens: int = 0  # K/V entries cached now
    start: int = -1  # contiguous: first slot of its region
    region: int = 0  # contiguous: slots in its region
    blocks: list[int] = field(default_factory=list)  # paged: physical block ids, in logical order


@dataclass
class ReplayResult:
    layout: str
    block_size: int | None  # None for contiguous layouts
    pool_tokens: int
    trace_name: str
    # one entry per step, in token slots:
    used: list[int] = field(default_factory=list)
    reserved: list[int] = field(default_factory=list)
    reserved_unused: list[int] = field(default_factory=list)
    internal: list[int] = field(default_factory=list)
    external: list[int] = field(default_factory=list)
    running: list[int] = field(default_factory=list)  # requests holding memory
    waiting: list[int] = field(default_factory=list)  # requests arrived and not running
    finished_step: list[int] = field(default_factory=list)  # per request of the trace
    preemptions: int = 0

    @property
    def steps(self) -> int:
        """Steps until the last request finished: the throughput proxy (fewer is better)."""
        return len(self.used)

    def _window(self, loaded: bool = False) -> list[int]:
        """Steps where something runs; with loaded=True only those where a request also waits (memory, not
        demand, limits the batch: the regime the PagedAttention paper measures)."""
        return [t for t, n in enumerate(self.running) if n and (self.waiting[t] or not loaded)]

    def share_of_reserved(self, series: str = "used", loaded: bool = False) -> float:
        """Time-mean of series / reserved over the window ("used" gives the usage); nan if the window is empty."""
        values, window = getattr(self, series), self._window(loaded)
        return fmean(values[t] / self.reserved[t] for t in window) if window else float("nan")

    @property
    def usage(self) -> float:
        """Mean fraction of reserved memory holding tokens, over the steps where something runs."""
        return self.share_of_reserved("used")

    @property
    def usage_loaded(self) -> float:
        """The same over the steps where a request waits; nan if none ever did."""
        return self.share_of_reserved("used", loaded=True)

    def pool_split(self, loaded: bool = False) -> dict[str, float]:
        """Time-mean share of the pool in each of SPLIT (sums to 1) over the window; zeros if it is empty."""
        window = self._window(loaded)
        shares = {name: fmean(getattr(self, attr)[t] / self.pool_tokens for t in window) if window else 0.0
                  for name, attr in zip(SPLIT[:4], ("used", "reserved_unused", "internal", "external"))}
        shares["free"] = 1 - sum(shares.values())
        return shares

    @property
    def mean_concurrency(self) -> float:
        return fmean(self.running[t] for t in self._window())

    @property
    def peak_concurrency(self) -> int:
        return max(self.running)

    def summary(self) -> dict[str, float]:
        return {"usage": self.usage, "usage_loaded": self.usage_loaded,
                "unused_of_reserved": self.share_of_reserved("reserved_unused"),
                "internal_of_reserved": self.share_of_reserved("internal"), **self.pool_split(),
                "mean_concurrency": self.mean_concurrency, "peak_concurrency": self.peak_concurrency,
                "steps": self.steps, "preemptions": self.preemptions}


def _check_fits(trace: Trace, layout: str, pool_tokens: int, block_size: int) -> None:
    """ValueError, with the numbers, when the pool cannot hold even the largest request alone."""
    positive_int("pool_tokens", pool_tokens)
    if layout == "contiguous-max":
        if trace.max_len > pool_tokens:
            raise ValueError(f"a pool of {pool_tokens:,} token slots cannot hold even one contiguous-max "
                             f"reservation of max_len {trace.max_len:,} tokens")
        return
    index, longest = max(enumerate(trace), key=lambda item: item[1].total_len)
    what = (f"request {index} (prompt {longest.prompt_len:,} + output {longest.output_len:,} = "
            f"{longest.total_len:,} tokens")
    if layout == "contiguous-exact" and longest.total_len > pool_tokens:
        raise ValueError(f"a pool of {pool_tokens:,} token slots cannot hold {what})")
    if layout == "paged" and blocks_for(longest.total_len, block_size) > pool_tokens // block_size:
        raise ValueError(f"a pool of {pool_tokens:,} token slots = {pool_tokens // block_size:,} blocks of "
                         f"{block_size} cannot hold {what}, {blocks_for(longest.total_len, block_size):,} blocks)")


def replay(trace: Trace, layout: str = "paged", pool_tokens: int = DEFAULT_POOL_TOKENS, block_size: int = 16,
           on_step: Callable[[int, object], None] | None = None) -> ReplayResult:
    """Replay `trace` through the real allocator of `layout` (see the module docstring); on_step(step, allocator)
    is called at the end of every step's bookkeeping, before that step's finished requests release memory."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    check_block_size(block_size)
    _check_fits(trace, layout, pool_tokens, block_size)
    paged = layout == "paged"
    bs = block_size if paged else 1
    allocator = BlockAllocator(pool_tokens // bs, bs) if paged else RegionAllocator(pool_tokens)
    result = ReplayResult(layout, block_size if paged else None, pool_tokens, trace.name,
                          finished_step=[-1] * len(trace))

    def need(seq: _Sequence) -> int:
        """What admitting `seq` takes from the allocator: blocks (paged) or slots (contiguous)."""
        if paged:
            return blocks_for(seq.request.prompt_len + seq.generated, bs)
        return trace.max_len if layout == "contiguous-max" else seq.request.total_len

    def release(seq: _Sequence) -> None:
        if paged:
            for block in seq.blocks:
                allocator.release(block)
            seq.blocks = []
        else:
            allocator.free(seq.start)
        seq.tokens = 0

    arrivals = deque(_Sequence(i, r) for i, r in enumerate(trace))
    waiting: deque[_Sequence] = deque()
    running: list[_Sequence] = []  # in admission order: newest last
    step, step_limit = 0, trace[-1].arrival_step + 2 * sum(r.output_len + 1 for r in trace) + 1
    while arrivals or waiting or running:
        assert step < step_limit, f"the replay made no progress by step {step}"
        while arrivals and arrivals[0].request.arrival_step <= step:
            waiting.append(arrivals.popleft())

        preempted = False  # 1. every running request stores one token
        i = 0
        while i < len(running):
            seq = running[i]
            missing = blocks_for(seq.tokens + 1, bs) - len(seq.blocks) if paged else 0
            while missing and not allocator.can_allocate(missing):
                victim = running.pop()  # the newest; it has not grown this step
                release(victim)
                waiting.appendleft(victim)
                result.preemptions += 1
                preempted = True
                if victim is seq:
                    break
            else:
                seq.blocks += allocator.allocate(missing) if missing else []
                seq.tokens += 1
                seq.generated += 1
                i += 1

        while waiting and not preempted:  # 2. admit first come, first served; prefill the prompt
            seq = waiting[0]
            try:
                if paged:
                    seq.blocks = allocator.allocate(need(seq))
                else:
                    seq.start, seq.region = allocator.allocate(need(seq)), need(seq)
            except PoolExhausted:
                break
            waiting.popleft()
            seq.tokens = seq.request.prompt_len + seq.generated
            running.append(seq)

        used = sum(s.tokens for s in running)  # 3. record
        if paged:
            reserved = allocator.num_used * bs
            unused, internal = 0, sum(len(s.blocks) * bs - s.tokens for s in running)
        else:
            reserved = allocator.num_used
            unused = sum(s.request.total_len - s.tokens for s in running)
            internal = sum(s.region - s.request.total_len for s in running)
        assert 0 <= used and unused >= 0 and internal >= 0
        assert used + unused + internal == reserved <= pool_tokens, "the allocator and the requests disagree"
        head = need(waiting[0]) if waiting else 0
        blocked_by_holes = 0 < head <= allocator.num_free and not allocator.can_allocate(head)
        result.used.append(used)
        result.reserved.append(reserved)
        result.reserved_unused.append(unused)
        result.internal.append(internal)
        result.external.append(allocator.num_free * bs if blocked_by_holes else 0)
        result.running.append(len(running))
        result.waiting.append(len(waiting))
        if on_step is not None:
            on_step(step, allocator)

        for seq in [s for s in running if s.generated == s.request.output_len]:  # 4. finish
            release(seq)
            running.remove(seq)
            result.finished_step[seq.index] = step
        step += 1
    assert allocator.num_free == (allocator.num_blocks if paged else pool_tokens), "memory leaked"
    return result


def compare_layouts(trace: Trace, pool_tokens: int = DEFAULT_POOL_TOKENS,
                    block_size: int = 16) -> dict[str, ReplayResult]:
    """The same trace and pool under every layout."""
    return {layout: replay(trace, layout, pool_tokens, block_size) for layout in LAYOUTS}


@dataclass(frozen=True)
class BlockTableCost:
    block_size: int
    entries_per_seq: float  # mean block-table length of a finished request: mean ceil(len / bs)
    gathers_per_step: float  # mean blocks one sequence's decode step reads (one gather each)


def _sum_blocks(n: int, bs: int) -> int:
    """Σ_{L=1..n} ceil(L / bs): q full groups of bs lengths needing 1 … q blocks, then r lengths needing q + 1."""
    q, r = divmod(n, bs)
    return bs * q * (q + 1) // 2 + r * (q + 1)


def block_table_cost(block_size: int, trace: Trace) -> BlockTableCost:
    """The other side of the trade-off: smaller blocks waste less but need longer block tables and more,
    smaller gathers. A decode step of a request at length L reads ceil(L / bs) blocks, for L = prompt + 1 …
    prompt + output."""
    bs = check_block_size(block_size)
    entries = fmean(blocks_for(r.total_len, bs) for r in trace)
    reads = sum(_sum_blocks(r.total_len, bs) - _sum_blocks(r.prompt_len, bs) for r in trace)
    return BlockTableCost(bs, entries, reads / sum(r.output_len for r in trace))


@dataclass(frozen=True)
class SweepPoint:
    block_size: int
    usage: float  # mean fraction of reserved memory holding tokens
    internal_of_reserved: float  # mean unfilled-tail share of reserved memory
    mean_concurrency: float
    steps: int
    cost: BlockTableCost


def block_size_sweep(trace: Trace, pool_tokens: int = DEFAULT_POOL_TOKENS,
                     block_sizes: tuple[int, ...] = BLOCK_SIZES) -> list[SweepPoint]:
    """The paged layout at each block size: waste (replayed) against block-table cost."""
    points = []
    for bs in block_sizes:
        result = replay(trace, "paged", pool_tokens, bs)
        points.append(SweepPoint(bs, result.usage, result.share_of_reserved("internal"), result.mean_concurrency,
                                 result.steps, block_table_cost(bs, trace)))
    return points
